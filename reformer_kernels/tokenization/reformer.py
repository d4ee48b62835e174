"""``ReformerTokenizer``: sentencepiece as transformers runs it for Reformer checkpoints. Its own
module because matching transformers on special tokens and whitespace is most of the package's
tokenizer code; the shared padding/decoding lives in base.py, the files in files.py.

``ReformerTokenizer`` runs the ``sentencepiece`` library on a ``spiece.model`` and reproduces
transformers' ``ReformerTokenizer`` on the same file: no BOS and no EOS are added; the special
tokens (``eos_token``, ``unk_token``, ``pad_token``, ``additional_special_tokens``, which by
default are the model's control pieces, as transformers makes them) are cut out of the raw text
before sentencepiece sees it (leftmost-longest match, as transformers does); each piece of text
between them is encoded by sentencepiece on its own (so it gets its own leading '▁'), and a
piece whose normalized text ends in whitespace (at the end of the string or before a special
token) gets one more '▁' token, as transformers' Metaspace pre-tokenizer makes it ("a </s> b" ->
['▁a', '▁', '</s>', '▁b'], which decodes back to "a </s> b"); a special
token that is not a piece of the model gets the next id after the vocabulary (in the order eos,
unk, pad, additional, as transformers assigns them). Decoding joins the tokens (special ones and
``<unk>`` as their text, as transformers does, not as sentencepiece's ' ⁇ '), turns '▁' into a
space and drops the space that the first token's leading '▁' stands for.

Where transformers' tokenizers-backed conversion departs from sentencepiece, we follow
sentencepiece (each case is a test in tests/test_tokenization.py):

- a letter with two or more combining marks: sentencepiece composes the longest prefix it has
  a rule for ("e" + U+0301 + U+0301 -> "é" + U+0301); transformers' normalizer leaves the whole
  grapheme decomposed.
- transformers treats every model as BPE; on a unigram model it segments differently.
- a model trained with ``split_by_whitespace=False`` has pieces that span words ('▁of▁the');
  transformers splits the text at spaces first and never produces them, and its decoder drops
  every '▁' of the first token ('▁of▁the' -> "ofthe", where sentencepiece gives "of the").
- user-defined symbols of the model: sentencepiece keeps them whole inside the text; transformers
  cuts them out like special tokens (the text after one gets its own '▁'), or, when
  ``additional_special_tokens`` is passed, cannot produce them at all.

Where transformers' behaviour is a trap, ours is stricter (also tests):

- setting ``pad_token`` to a token that is not in the vocabulary gives it a new id (as
  transformers' ``add_special_tokens({"pad_token": ...})`` does), not the id of ``<unk>``.
- ``padding="max_length"`` with no length to pad to raises (transformers warns and skips
  padding); decoding an id outside the vocabulary raises (transformers returns "").
"""
import os
import re

import sentencepiece

from .._atomic import all_or_nothing, atomic_write
from .base import TokenizerBase, raise_if_not_unicode
from .files import (
    CONFIG_FILE, MODEL_FILE, MODEL_FILES, SETTINGS, SPECIAL_TOKENS_MAP_FILE, check_folder, read_json, settings_config,
    token_content, write_json,
)
from .trainer import train_model

SPIECE_UNDERLINE = "▁"


class ReformerTokenizer(TokenizerBase):
    """A sentencepiece tokenizer that behaves like transformers' ReformerTokenizer (see the module doc).

    vocab_file: path of a ``spiece.model``, or its bytes. ``pad_token`` is unset by default, as
    in transformers: padding raises until one is set. ``additional_special_tokens=None`` makes
    the model's control pieces special, as transformers does when it reads a spiece.model.
    ``added_tokens_decoder`` ({id: token or serialized AddedToken}) adds saved special tokens
    with their ids (``from_pretrained`` fills it from the folder); a non-special entry must be a
    user-defined piece of the model, which sentencepiece keeps whole by itself.
    """

    def __init__(
        self,
        vocab_file,
        *,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token=None,
        additional_special_tokens=None,
        added_tokens_decoder=None,
        model_max_length=None,
        padding_side="right",
        truncation_side="right",
    ):
        super().__init__(model_max_length, padding_side, truncation_side)
        self._model_proto = self._read_model(vocab_file)
        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(self._model_proto)
        except RuntimeError as e:
            raise ValueError(
                f"vocab_file {self._describe(vocab_file)} is not a sentencepiece model ({e}): "
                "pass a spiece.model written by sentencepiece or by save_pretrained"
            ) from e
        self._tokens = [self._sp.id_to_piece(i) for i in range(self._sp.get_piece_size())]
        self._space_id = self._sp.piece_to_id(SPIECE_UNDERLINE)
        unk_piece = self._tokens[self._sp.unk_id()]
        if unk_token != unk_piece:
            raise ValueError(f"unk_token={unk_token!r} is not the model's unknown piece {unk_piece!r}: pass unk_token={unk_piece!r}")
        if additional_special_tokens is not None and not isinstance(additional_special_tokens, (list, tuple)):
            raise TypeError(
                f"additional_special_tokens must be a list of str, got {type(additional_special_tokens).__name__}"
            )
        self._eos_token, self._unk_token = eos_token, unk_token
        self._fixed_ids, saved = {}, []
        for i, token in sorted((int(i), t) for i, t in (added_tokens_decoder or {}).items()):
            content = token_content(token)
            if isinstance(token, dict) and not token.get("special", True):
                if self._piece_id(content) == i:
                    continue
                raise ValueError(
                    f"added_tokens_decoder has the non-special token {content!r} (id {i}), which is not a piece of "
                    "the model: ReformerTokenizer adds special tokens only; mark it special or remove it"
                )
            self._fixed_ids[content] = i
            saved.append(content)
        if additional_special_tokens is None:
            additional_special_tokens = [p for i, p in enumerate(self._tokens) if self._sp.is_control(i)]
        self._special_ids = {}
        self._pad_token = None
        for token in (eos_token, unk_token, pad_token, *additional_special_tokens, *saved):
            self._add_special(token)
        self._pad_token = pad_token
        named = (eos_token, unk_token, pad_token)
        extra = dict.fromkeys([*additional_special_tokens, *saved])
        self._additional_special_tokens = [t for t in extra if t not in named]

    def _piece_id(self, token):
        """The id of the model's piece spelled ``token``, or None."""
        piece_id = self._sp.piece_to_id(token)
        return piece_id if self._tokens[piece_id] == token else None

    @staticmethod
    def _describe(vocab_file):
        return f"<{len(vocab_file)} bytes>" if isinstance(vocab_file, bytes) else repr(os.fspath(vocab_file))

    @staticmethod
    def _read_model(vocab_file):
        if isinstance(vocab_file, bytes):
            return vocab_file
        if not isinstance(vocab_file, (str, os.PathLike)):
            raise TypeError(
                f"vocab_file must be a path or the bytes of a spiece.model, got {type(vocab_file).__name__}"
            )
        path = os.fspath(vocab_file)
        if not os.path.isfile(path):
            raise ValueError(
                f"vocab_file {path!r} does not exist: pass the path of a sentencepiece model (spiece.model), "
                "or train one with ReformerTokenizer.train"
            )
        with open(path, "rb") as f:
            return f.read()

    def _add_special(self, token):
        """Register a special token: the id of its piece, a saved id, or the next free id."""
        if token is None or token in self._special_ids:
            return
        if not isinstance(token, str):
            raise TypeError(f"special token {token!r} is a {type(token).__name__}: pass a str")
        if not token:
            raise ValueError("special token '': pass a non-empty str")
        piece_id = self._piece_id(token)
        if piece_id is not None:
            token_id = piece_id
        elif token in self._fixed_ids:
            token_id = self._fixed_ids[token]
            if token_id < self._sp.get_piece_size():
                raise ValueError(
                    f"added_tokens_decoder gives {token!r} the id {token_id} of the piece {self._tokens[token_id]!r}: "
                    f"give it an id >= vocab_size ({self._sp.get_piece_size()})"
                )
        else:
            used = set(self._fixed_ids.values()) | set(self._special_ids.values())
            token_id = len(self._tokens)
            while token_id in used:
                token_id += 1
        if token_id >= len(self._tokens):
            self._tokens.extend([None] * (token_id + 1 - len(self._tokens)))
        elif self._tokens[token_id] not in (None, token):
            raise ValueError(f"special token {token!r} and {self._tokens[token_id]!r} both have id {token_id}: fix added_tokens_decoder")
        self._tokens[token_id] = token
        self._special_ids[token] = token_id
        # Leftmost-longest match, as transformers cuts added tokens out of the text.
        alternatives = sorted(self._special_ids, key=len, reverse=True)
        self._special_pattern = re.compile("|".join(map(re.escape, alternatives)))
        self._special_id_set = frozenset(self._special_ids.values())

    # ---- special tokens -------------------------------------------------------------------

    @property
    def pad_token(self):
        """The padding token; setting one that is not in the vocabulary gives it the next free id."""
        return self._pad_token

    @pad_token.setter
    def pad_token(self, token):
        self._add_special(token)
        self._pad_token = token

    @property
    def pad_token_id(self):
        return None if self._pad_token is None else self._special_ids[self._pad_token]

    @property
    def eos_token(self):
        return self._eos_token

    @property
    def eos_token_id(self):
        return None if self._eos_token is None else self._special_ids[self._eos_token]

    @property
    def unk_token(self):
        return self._unk_token

    @property
    def unk_token_id(self):
        return self._special_ids[self._unk_token]

    @property
    def additional_special_tokens(self):
        return list(self._additional_special_tokens)

    @property
    def all_special_tokens(self):
        named = [t for t in (self._eos_token, self._unk_token, self._pad_token) if t is not None]
        return list(dict.fromkeys(named + self._additional_special_tokens))

    @property
    def all_special_ids(self):
        return self._special_id_set

    @property
    def vocab_size(self):
        """The number of pieces of the sentencepiece model (added special tokens not counted)."""
        return self._sp.get_piece_size()

    def convert_tokens_to_ids(self, tokens):
        """The id of a token (the unk id for an unknown token), or the ids of a list of tokens."""
        if isinstance(tokens, str):
            if tokens in self._special_ids:
                return self._special_ids[tokens]
            piece_id = self._piece_id(tokens)
            return self.unk_token_id if piece_id is None else piece_id
        if not isinstance(tokens, (list, tuple)):
            raise TypeError(f"tokens must be a str or a list of str, got {type(tokens).__name__}")
        return [self.convert_tokens_to_ids(t) for t in tokens]

    # ---- encode / decode ------------------------------------------------------------------

    def _encode_batch(self, texts):
        # Every piece of text between special tokens goes to sentencepiece in one batched call.
        chunks, layouts = [], []
        for text in texts:
            if self._special_pattern.search(text) is None:
                chunks.append(text)
                layouts.append(None)
                continue
            layout, start = [], 0
            for match in self._special_pattern.finditer(text):
                if match.start() > start:
                    chunks.append(text[start : match.start()])
                    layout.append(None)
                layout.append(self._special_ids[match.group()])
                start = match.end()
            if start < len(text):
                chunks.append(text[start:])
                layout.append(None)
            layouts.append(layout)
        try:
            encoded = self._sp.encode(chunks)
        except (RuntimeError, TypeError) as e:
            raise_if_not_unicode(texts, e)
            raise
        for i in self._ends_in_space(chunks):
            encoded[i].append(self._space_id)
        encoded = iter(encoded)
        rows = []
        for layout in layouts:
            if layout is None:
                rows.append(next(encoded))
                continue
            row = []
            for item in layout:
                if item is None:
                    row.extend(next(encoded))
                else:
                    row.append(item)
            rows.append(row)
        return rows

    def _ends_in_space(self, chunks):
        """The indices of the chunks whose normalized text ends in whitespace.

        transformers' Metaspace pre-tokenizer turns that whitespace into a '▁' token of its own
        ("a " -> ['▁a', '▁'], "a </s> b" -> ['▁a', '▁', '</s>', '▁b']), which sentencepiece drops;
        we add it back so that ids, tokens and decode match transformers. Normalization (NFKC,
        spaces folded into one, control characters removed) decides, seen between two sentinels
        that normalize to themselves (so that sentencepiece neither strips the trailing space nor
        adds its dummy-prefix '▁' to an empty result): the chunk ends in whitespace when
        normalize("x" + chunk + "x") ends in "▁x".
        """
        # A printable ASCII character other than space normalizes to itself: no lookup needed.
        candidates = [i for i, c in enumerate(chunks) if c and not "!" <= c[-1] <= "~"]
        if not candidates:
            return []
        normalized = self._sp.normalize(["x" + chunks[i] + "x" for i in candidates])
        return [i for i, n in zip(candidates, normalized) if n.endswith(SPIECE_UNDERLINE + "x")]

    def _decode_ids(self, ids, skip_special_tokens):
        tokens = [self._tokens[i] for i in ids if not (skip_special_tokens and i in self._special_id_set)]
        text = "".join(tokens).replace(SPIECE_UNDERLINE, " ")
        return text[1:] if tokens and tokens[0].startswith(SPIECE_UNDERLINE) else text

    # ---- files ----------------------------------------------------------------------------

    def save_pretrained(self, save_directory):
        """Write spiece.model, tokenizer_config.json and special_tokens_map.json, all three or none
        (a failed save leaves the previous files); return their paths."""
        path = os.fspath(save_directory)
        os.makedirs(path, exist_ok=True)
        named = {"eos_token": self.eos_token, "unk_token": self.unk_token, "pad_token": self._pad_token}
        named = {k: v for k, v in named.items() if v is not None}
        added = {
            str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
            for t, i in sorted(self._special_ids.items(), key=lambda item: item[1])
        }
        config = {
            "tokenizer_class": "ReformerTokenizer",
            **named,
            "extra_special_tokens": self.additional_special_tokens,
            "added_tokens_decoder": added,
            **settings_config(self),
        }
        model_path = os.path.join(path, MODEL_FILE)
        config_path = os.path.join(path, CONFIG_FILE)
        map_path = os.path.join(path, SPECIAL_TOKENS_MAP_FILE)
        with all_or_nothing():
            with atomic_write(model_path) as f:
                f.write(self._model_proto)
            write_json(config_path, config)
            write_json(map_path, {**named, "additional_special_tokens": self.additional_special_tokens})
        return model_path, config_path, map_path

    @classmethod
    def from_pretrained(cls, save_directory, **kwargs):
        """Load a folder written by ``save_pretrained`` or by transformers (see the module doc).

        Keyword arguments (e.g. ``pad_token="<pad>"``) override what the folder says.
        """
        path = check_folder(save_directory, "save_directory")
        # transformers v5's save_vocabulary names the sentencepiece model tokenizer.model.
        model_path = next((os.path.join(path, n) for n in MODEL_FILES if os.path.isfile(os.path.join(path, n))), None)
        if model_path is None:
            hint = (
                " transformers v5's save_pretrained writes no sentencepiece model: run tokenizer.save_vocabulary(folder) too"
                if os.path.isfile(os.path.join(path, "tokenizer.json"))
                else ""
            )
            raise ValueError(f"save_directory {path!r} has no {' or '.join(MODEL_FILES)}: pass a folder that holds one.{hint}")
        config_path = os.path.join(path, CONFIG_FILE)
        config = read_json(config_path) if os.path.isfile(config_path) else {}
        map_path = os.path.join(path, SPECIAL_TOKENS_MAP_FILE)
        for key, value in (read_json(map_path) if os.path.isfile(map_path) else {}).items():
            config.setdefault(key, value)

        decoder = config.get("added_tokens_decoder", {})
        if not isinstance(decoder, dict) or not all(isinstance(i, str) and i.isdigit() for i in decoder):
            raise ValueError(
                f"{config_path}: added_tokens_decoder must map token ids to tokens, got {decoder!r:.80}: "
                "write it again with save_pretrained"
            )
        fixed = {int(i): t for i, t in decoder.items()}
        json_path = os.path.join(path, "tokenizer.json")
        if os.path.isfile(json_path):
            added = read_json(json_path).get("added_tokens", [])
            if not isinstance(added, list) or not all(isinstance(t, dict) and isinstance(t.get("id"), int) for t in added):
                raise ValueError(f"{json_path}: added_tokens must be a list of tokens with an int id: write it again")
            fixed.update({t["id"]: t for t in added})
        options = {key: token_content(config[key]) for key in ("eos_token", "unk_token", "pad_token") if key in config}
        extra = config.get("extra_special_tokens", config.get("additional_special_tokens"))
        if extra is not None:
            if not isinstance(extra, (list, dict)):
                # A bare string would be taken letter by letter: every letter a special token.
                raise ValueError(
                    f"{config_path}: extra_special_tokens / additional_special_tokens must be a list of tokens, "
                    f"got {type(extra).__name__} {extra!r:.80}: write it again with save_pretrained"
                )
            extra = extra.values() if isinstance(extra, dict) else extra
            options["additional_special_tokens"] = [token_content(t) for t in extra]
        options["added_tokens_decoder"] = fixed
        options.update({k: config[k] for k in SETTINGS if k in config})
        options.update(kwargs)
        try:
            return cls(model_path, **options)
        except (TypeError, ValueError) as error:
            # Name the folder: the bad value may come from its files rather than from the caller.
            raise (TypeError if isinstance(error, TypeError) else ValueError)(f"loading {path!r}: {error}") from None

    # ---- training -------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        files_or_iterator,
        *,
        vocab_size,
        model_type="bpe",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token=None,
        additional_special_tokens=None,
        character_coverage=1.0,
        progress=True,
        **sentencepiece_options,
    ):
        """Train a new sentencepiece model on text and return its tokenizer.

        files_or_iterator: a path or a list/tuple of paths (UTF-8 text, one sentence a line), or
        any other iterable of str (each str is split into lines), e.g. ``iter(texts)``.
        The model gets unk id 0, eos id 1, then pad (if given) and the additional special tokens
        as control symbols; no BOS. ``sentencepiece_options`` go to
        ``sentencepiece.SentencePieceTrainer.train`` (e.g. ``input_sentence_size``).
        ``progress`` shows a tqdm bar over the text read; training itself follows.
        """
        model = train_model(
            files_or_iterator, vocab_size=vocab_size, model_type=model_type, eos_token=eos_token, unk_token=unk_token,
            pad_token=pad_token, additional_special_tokens=additional_special_tokens,
            character_coverage=character_coverage, progress=progress, **sentencepiece_options,
        )
        return cls(
            model,
            eos_token=eos_token,
            unk_token=unk_token,
            pad_token=pad_token,
            additional_special_tokens=additional_special_tokens,
        )

