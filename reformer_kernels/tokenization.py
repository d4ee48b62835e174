"""Tokenizers for Reformer checkpoints.

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

Folder layout (``save_pretrained`` / ``from_pretrained``), the transformers one:
``spiece.model`` (the sentencepiece model proto), ``tokenizer_config.json`` (tokenizer_class,
special tokens, ``extra_special_tokens``, ``added_tokens_decoder`` with every special token's
id, model_max_length, padding/truncation side) and ``special_tokens_map.json`` (the v4 file).
transformers loads such a folder. transformers v5's ``save_pretrained`` writes only
``tokenizer.json`` and ``tokenizer_config.json``; its ``save_vocabulary(folder)`` adds the
sentencepiece model as ``tokenizer.model``, and ``from_pretrained`` reads either name. The ids of
special tokens past the vocabulary come from ``added_tokens_decoder`` or ``tokenizer.json``.

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

``ByteTokenizer`` is the scheme of the published enwik8 Reformer checkpoint: id = UTF-8 byte + 2,
0 = pad, 1 = tensor2tensor's EOS (never emitted), vocab_size 258.
"""

import io
import json
import os
import re
from itertools import chain

import sentencepiece
import torch
from tqdm import tqdm

SPIECE_UNDERLINE = "▁"
# transformers' VERY_LARGE_INTEGER: a model_max_length that stands for "no limit".
_NO_LIMIT = int(1e30)
_SIDES = ("left", "right")
_PADDING = {True: "longest", "longest": "longest", "max_length": "max_length", False: None, "do_not_pad": None}
_TRUNCATION = {True: True, "longest_first": True, "only_first": True, False: False, "do_not_truncate": False}
_CONFIG_FILE = "tokenizer_config.json"
_SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
_MODEL_FILE = "spiece.model"
_MODEL_FILES = (_MODEL_FILE, "tokenizer.model")


class BatchEncoding(dict):
    """What a tokenizer call returns: ``input_ids`` and ``attention_mask``, as keys or attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device):
        """Move the tensors (``return_tensors="pt"``) to ``device``."""
        return BatchEncoding({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.items()})


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}): write it again with save_pretrained") from e


def _write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _token_content(value):
    """A special token as saved by transformers: a string or a serialized AddedToken."""
    return value["content"] if isinstance(value, dict) else value


def _check_folder(save_directory, name):
    path = os.fspath(save_directory)
    if not os.path.isdir(path):
        raise ValueError(f"{name} {path!r} is not a directory: pass the folder written by save_pretrained")
    return path


class _TokenizerBase:
    """Padding, truncation, tensors and decoding shared by both tokenizers."""

    _text_types = (str,)

    def __init__(self, model_max_length, padding_side, truncation_side):
        if model_max_length is not None and (not isinstance(model_max_length, int) or model_max_length < 0):
            raise ValueError(f"model_max_length={model_max_length!r}: pass a non-negative int or None (no limit)")
        self.model_max_length = None if model_max_length is None or model_max_length >= _NO_LIMIT else model_max_length
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self._check_side("padding_side", padding_side)
        self._check_side("truncation_side", truncation_side)

    @staticmethod
    def _check_side(name, side):
        if side not in _SIDES:
            raise ValueError(f"{name}={side!r}: pass 'left' or 'right'")

    def __len__(self):
        return len(self._tokens)

    def get_vocab(self):
        """{token: id} for every id, the added special tokens included."""
        return {token: i for i, token in enumerate(self._tokens) if token is not None}

    # ---- encoding -------------------------------------------------------------------------

    def __call__(
        self,
        text,
        *,
        padding=False,
        truncation=None,
        max_length=None,
        pad_to_multiple_of=None,
        padding_side=None,
        return_tensors=None,
        return_attention_mask=None,
    ):
        """Tokenize one text or a batch.

        text: a str (ids are a flat list; a (1, L) tensor with ``return_tensors="pt"``) or a list
        of str. ``padding``: False | True/"longest" | "max_length" (to ``max_length``, else
        ``model_max_length``), rounded up to ``pad_to_multiple_of``; needs ``pad_token``.
        ``truncation``: True keeps ``max_length`` (else ``model_max_length``) tokens from the
        ``truncation_side``; left unset, it is on when ``max_length`` is given without padding,
        as in transformers. ``return_tensors``: None (lists) or "pt" (int64 tensors, (B, L)).
        Returns a BatchEncoding with ``input_ids`` and (unless ``return_attention_mask=False``)
        ``attention_mask`` (1 = token, 0 = padding).
        """
        texts, is_batch = self._as_batch(text)
        strategy, truncate_to, pad_to = self._resolve_lengths(padding, truncation, max_length, pad_to_multiple_of)
        side = self.padding_side if padding_side is None else padding_side
        self._check_side("padding_side", side)
        self._check_side("truncation_side", self.truncation_side)
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors={return_tensors!r}: pass 'pt' for torch tensors or None for lists")

        rows = self._encode_batch(texts)
        if truncate_to is not None:
            keep_end = self.truncation_side == "left"
            rows = [
                r if len(r) <= truncate_to else r[len(r) - truncate_to :] if keep_end else r[:truncate_to] for r in rows
            ]
        target = 0
        if strategy == "longest":
            target = max(map(len, rows), default=0)
        elif strategy == "max_length":
            target = pad_to
        if strategy is not None and pad_to_multiple_of is not None:
            target = -(-target // pad_to_multiple_of) * pad_to_multiple_of
        lengths = [len(r) for r in rows]
        padded = [max(n, target) for n in lengths]

        if return_tensors == "pt":
            input_ids, attention_mask = self._to_tensors(rows, lengths, padded, side)
        else:
            input_ids, attention_mask = self._to_lists(rows, lengths, padded, side)
            if not is_batch:
                input_ids, attention_mask = input_ids[0], attention_mask[0]
        encoding = BatchEncoding(input_ids=input_ids)
        if return_attention_mask is None or return_attention_mask:
            encoding["attention_mask"] = attention_mask
        return encoding

    def encode(self, text, **kwargs):
        """The ``input_ids`` of one text (keyword arguments as in ``__call__``)."""
        if not isinstance(text, self._text_types):
            raise TypeError(
                f"text must be a {' or '.join(t.__name__ for t in self._text_types)}, got {type(text).__name__}: "
                "call the tokenizer itself on a list of texts"
            )
        return self(text, **kwargs)["input_ids"]

    def tokenize(self, text):
        """The tokens of one text."""
        return self.convert_ids_to_tokens(self.encode(text))

    def _as_batch(self, text):
        allowed = " or ".join(t.__name__ for t in self._text_types)
        if isinstance(text, self._text_types):
            return [text], False
        if not isinstance(text, (list, tuple)):
            raise TypeError(f"text must be a {allowed} or a list of them, got {type(text).__name__}")
        for i, t in enumerate(text):
            if not isinstance(t, self._text_types):
                raise TypeError(f"text[{i}] must be a {allowed}, got {type(t).__name__}")
        return list(text), True

    def _resolve_lengths(self, padding, truncation, max_length, pad_to_multiple_of):
        """(padding strategy, length to truncate to or None, length for padding="max_length")."""
        if not isinstance(padding, (bool, str)) or padding not in _PADDING:
            raise ValueError(f"padding={padding!r}: pass False, True, 'longest', 'max_length' or 'do_not_pad'")
        if truncation is not None and (not isinstance(truncation, (bool, str)) or truncation not in _TRUNCATION):
            raise ValueError(f"truncation={truncation!r}: pass True, False, 'longest_first' or 'do_not_truncate'")
        for name, value in (("max_length", max_length), ("pad_to_multiple_of", pad_to_multiple_of)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"{name}={value!r}: pass a non-negative int or None")
        if pad_to_multiple_of == 0:
            raise ValueError("pad_to_multiple_of=0: pass a positive int or None")
        strategy = _PADDING[padding]
        # transformers turns truncation on for a bare max_length only when padding is literally False.
        truncate = (max_length is not None and padding is False) if truncation is None else _TRUNCATION[truncation]
        limit = self.model_max_length if max_length is None else max_length
        if strategy is not None and self.pad_token_id is None:
            raise ValueError(
                f"padding={padding!r} but this tokenizer has no pad_token: set one first, "
                "e.g. tokenizer.pad_token = tokenizer.eos_token, or pass pad_token='<pad>' when loading"
            )
        if strategy == "max_length" and limit is None:
            raise ValueError(
                "padding='max_length' needs a length: pass max_length=..., or set model_max_length, "
                "or use padding=True to pad to the longest text"
            )
        if truncate and strategy is not None and pad_to_multiple_of is not None and limit is not None:
            if limit % pad_to_multiple_of:
                raise ValueError(
                    f"truncation to max_length={limit} and padding to pad_to_multiple_of={pad_to_multiple_of} disagree: "
                    "pass a max_length that is a multiple of pad_to_multiple_of"
                )
        return strategy, limit if truncate else None, limit

    def _to_lists(self, rows, lengths, padded, side):
        pad_id = self.pad_token_id
        input_ids, attention_mask = [], []
        for row, n, width in zip(rows, lengths, padded):
            pad = [pad_id] * (width - n)
            ones, zeros = [1] * n, [0] * (width - n)
            input_ids.append(pad + row if side == "left" else row + pad)
            attention_mask.append(zeros + ones if side == "left" else ones + zeros)
        return input_ids, attention_mask

    def _to_tensors(self, rows, lengths, padded, side):
        width = padded[0] if padded else 0
        if any(w != width for w in padded):
            raise ValueError(
                f"return_tensors='pt' needs rows of one length, got lengths from {min(padded)} to {max(padded)}: "
                "pass padding=True (and truncation=True with max_length to cap the length)"
            )
        n = torch.tensor(lengths, dtype=torch.long)
        positions = torch.arange(width)
        # Filling a boolean mask writes in row-major order, which is the order of the flat ids.
        mask = positions >= (width - n)[:, None] if side == "left" else positions < n[:, None]
        fill = 0 if self.pad_token_id is None else self.pad_token_id
        input_ids = torch.full((len(rows), width), fill, dtype=torch.long)
        input_ids[mask] = torch.tensor(list(chain.from_iterable(rows)), dtype=torch.long)
        return input_ids, mask.long()

    # ---- decoding -------------------------------------------------------------------------

    def decode(self, token_ids, skip_special_tokens=False):
        """The text of a sequence of ids (an int, a list of ints, or a 0-D/1-D tensor)."""
        return self._decode_ids(self._as_id_list(token_ids), skip_special_tokens)

    def batch_decode(self, sequences, skip_special_tokens=False):
        """The texts of a list of id sequences or of a 2-D tensor."""
        if isinstance(sequences, torch.Tensor):
            if sequences.dim() != 2:
                raise ValueError(f"sequences has shape {tuple(sequences.shape)}: pass a 2-D tensor (batch, length)")
            sequences = sequences.tolist()
        if not isinstance(sequences, (list, tuple)):
            raise TypeError(f"sequences must be a list of id sequences or a 2-D tensor, got {type(sequences).__name__}")
        return [self.decode(ids, skip_special_tokens) for ids in sequences]

    def convert_ids_to_tokens(self, ids, skip_special_tokens=False):
        """The token of an id, or the list of tokens of a sequence of ids."""
        single = isinstance(ids, int) or (isinstance(ids, torch.Tensor) and ids.dim() == 0)
        valid = self._as_id_list(ids, "ids")
        special = self.all_special_ids if skip_special_tokens else ()
        tokens = [self._tokens[i] for i in valid if i not in special]
        return tokens[0] if single and tokens else tokens

    def _as_id_list(self, token_ids, name="token_ids"):
        if isinstance(token_ids, torch.Tensor):
            if token_ids.dim() > 1:
                raise ValueError(
                    f"{name} has shape {tuple(token_ids.shape)}: pass one sequence (use batch_decode for a batch)"
                )
            token_ids = token_ids.tolist()
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        if not isinstance(token_ids, (list, tuple)):
            raise TypeError(f"{name} must be an int, a list of ints or a tensor, got {type(token_ids).__name__}")
        size = len(self._tokens)
        for i in token_ids:
            if not isinstance(i, int):
                raise TypeError(f"{name} contains {i!r} of type {type(i).__name__}: pass integer ids")
            if not 0 <= i < size or self._tokens[i] is None:
                raise ValueError(
                    f"{name} contains id {i}, which is outside this tokenizer's vocabulary [0, {size}): "
                    "pass ids produced by this tokenizer (or one with the same spiece.model)"
                )
        return list(token_ids)


class ReformerTokenizer(_TokenizerBase):
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
            content = _token_content(token)
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
            _raise_if_not_unicode(texts, e)
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
        """Write spiece.model, tokenizer_config.json and special_tokens_map.json; return their paths."""
        path = os.fspath(save_directory)
        os.makedirs(path, exist_ok=True)
        model_path = os.path.join(path, _MODEL_FILE)
        with open(model_path, "wb") as f:
            f.write(self._model_proto)
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
            "padding_side": self.padding_side,
            "truncation_side": self.truncation_side,
        }
        if self.model_max_length is not None:
            config["model_max_length"] = self.model_max_length
        config_path = os.path.join(path, _CONFIG_FILE)
        _write_json(config_path, config)
        map_path = os.path.join(path, _SPECIAL_TOKENS_MAP_FILE)
        _write_json(map_path, {**named, "additional_special_tokens": self.additional_special_tokens})
        return model_path, config_path, map_path

    @classmethod
    def from_pretrained(cls, save_directory, **kwargs):
        """Load a folder written by ``save_pretrained`` or by transformers (see the module doc).

        Keyword arguments (e.g. ``pad_token="<pad>"``) override what the folder says.
        """
        path = _check_folder(save_directory, "save_directory")
        # transformers v5's save_vocabulary names the sentencepiece model tokenizer.model.
        model_path = next((os.path.join(path, n) for n in _MODEL_FILES if os.path.isfile(os.path.join(path, n))), None)
        if model_path is None:
            hint = (
                " transformers v5's save_pretrained writes no sentencepiece model: run tokenizer.save_vocabulary(folder) too"
                if os.path.isfile(os.path.join(path, "tokenizer.json"))
                else ""
            )
            raise ValueError(f"save_directory {path!r} has no {' or '.join(_MODEL_FILES)}: pass a folder that holds one.{hint}")
        config_path = os.path.join(path, _CONFIG_FILE)
        config = _read_json(config_path) if os.path.isfile(config_path) else {}
        map_path = os.path.join(path, _SPECIAL_TOKENS_MAP_FILE)
        for key, value in (_read_json(map_path) if os.path.isfile(map_path) else {}).items():
            config.setdefault(key, value)

        fixed = {int(i): t for i, t in config.get("added_tokens_decoder", {}).items()}
        json_path = os.path.join(path, "tokenizer.json")
        if os.path.isfile(json_path):
            fixed.update({t["id"]: t for t in _read_json(json_path).get("added_tokens", [])})
        options = {key: _token_content(config[key]) for key in ("eos_token", "unk_token", "pad_token") if key in config}
        extra = config.get("extra_special_tokens", config.get("additional_special_tokens"))
        if extra is not None:
            extra = extra.values() if isinstance(extra, dict) else extra
            options["additional_special_tokens"] = [_token_content(t) for t in extra]
        options["added_tokens_decoder"] = fixed
        for key in ("model_max_length", "padding_side", "truncation_side"):
            if key in config:
                options[key] = config[key]
        options.update(kwargs)
        return cls(model_path, **options)

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
        if model_type not in ("bpe", "unigram"):
            raise ValueError(f"model_type={model_type!r}: pass 'bpe' or 'unigram'")
        if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 1:
            raise ValueError(f"vocab_size={vocab_size!r}: pass a positive int")
        specials = [t for t in (pad_token, *(additional_special_tokens or ())) if t is not None]
        options = {
            "model_type": model_type,
            "vocab_size": vocab_size,
            "character_coverage": character_coverage,
            "unk_id": 0,
            "unk_piece": unk_token,
            "eos_id": -1,
            "bos_id": -1,
            "pad_id": -1,
            "control_symbols": [t for t in specials if t not in (eos_token, unk_token)],
            "num_threads": os.cpu_count() or 1,
            "minloglevel": 1,
        }
        if eos_token is not None:
            options.update(eos_id=1, eos_piece=eos_token)
        options.update(sentencepiece_options)
        lines, bar, failure = _training_lines(files_or_iterator, progress)
        model = io.BytesIO()
        try:
            sentencepiece.SentencePieceTrainer.train(sentence_iterator=lines, model_writer=model, **options)
        except RuntimeError as e:
            if failure:
                raise failure[0] from e
            raise ValueError(f"sentencepiece could not train with vocab_size={vocab_size}, model_type={model_type!r}: {e}") from e
        finally:
            bar.close()
        if failure:
            raise failure[0]
        return cls(
            model.getvalue(),
            eos_token=eos_token,
            unk_token=unk_token,
            pad_token=pad_token,
            additional_special_tokens=additional_special_tokens,
        )


def _raise_if_not_unicode(texts, cause):
    """Name the first text that cannot be UTF-8 encoded (a lone surrogate), if there is one."""
    for i, text in enumerate(texts):
        if isinstance(text, str):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(
                    f"text[{i}] has a lone surrogate {text[e.start]!r} at position {e.start}, which is not Unicode: "
                    "clean the text (e.g. text.encode('utf-8', 'replace').decode())"
                ) from cause


def _training_lines(files_or_iterator, progress):
    """(line iterator for sentencepiece, its progress bar, list that receives an input error).

    An error raised inside the iterator would reach us as sentencepiece's RuntimeError, so it is
    kept and re-raised by ``train`` instead.
    """
    failure = []
    if isinstance(files_or_iterator, (str, os.PathLike)):
        files_or_iterator = [files_or_iterator]
    if isinstance(files_or_iterator, (list, tuple)):
        paths = []
        for i, p in enumerate(files_or_iterator):
            if not isinstance(p, (str, os.PathLike)) or not os.path.isfile(p):
                raise ValueError(
                    f"files_or_iterator[{i}]={p!r} is not a file: pass text file paths, "
                    "or an iterator of texts (e.g. iter(texts)) to train on strings"
                )
            paths.append(os.fspath(p))
        bar = tqdm(total=sum(map(os.path.getsize, paths)), unit="B", unit_scale=True, desc="reading text", disable=not progress)

        def lines():
            for path in paths:
                with open(path, "rb") as f:
                    for number, raw in enumerate(f, 1):
                        bar.update(len(raw))
                        try:
                            yield raw.decode("utf-8")
                        except UnicodeDecodeError as e:
                            failure.append(ValueError(f"{path} line {number} is not UTF-8 ({e}): pass UTF-8 text files"))
                            return
            bar.set_description("training")

    else:
        try:
            texts = iter(files_or_iterator)
        except TypeError:
            raise TypeError(
                f"files_or_iterator must be a path, a list of paths or an iterable of str, got {type(files_or_iterator).__name__}"
            ) from None
        bar = tqdm(unit="char", unit_scale=True, desc="reading text", disable=not progress)

        def lines():
            for i, text in enumerate(texts):
                if not isinstance(text, str):
                    failure.append(TypeError(f"files_or_iterator item {i} is a {type(text).__name__}: yield str"))
                    return
                bar.update(len(text))
                yield from text.splitlines()
            bar.set_description("training")

    return lines(), bar, failure


class ByteTokenizer(_TokenizerBase):
    """The enwik8 byte scheme of the published Reformer checkpoint (google/reformer-enwik8).

    id = UTF-8 byte + 2; 0 is padding, 1 is tensor2tensor's EOS (never emitted); vocab_size 258.
    Text may be str or bytes. Tokens are the byte's character for printable ASCII, else
    ``<0xHH>``. Decoding replaces invalid UTF-8 with U+FFFD. The checkpoint's own decode equals
    ``decode(ids, skip_special_tokens=True)``.
    """

    _text_types = (str, bytes)
    offset = 2
    pad_token, pad_token_id = "<pad>", 0
    eos_token, eos_token_id = "</s>", 1
    all_special_ids = frozenset((0, 1))
    vocab_size = 256 + offset

    def __init__(self, *, model_max_length=None, padding_side="right", truncation_side="right"):
        super().__init__(model_max_length, padding_side, truncation_side)
        printable = range(0x20, 0x7F)
        self._tokens = [self.pad_token, self.eos_token] + [chr(b) if b in printable else f"<0x{b:02X}>" for b in range(256)]
        self._token_ids = {t: i for i, t in enumerate(self._tokens)}

    @property
    def all_special_tokens(self):
        return [self.pad_token, self.eos_token]

    def convert_tokens_to_ids(self, tokens):
        """The id of a token, or the ids of a list of tokens."""
        if isinstance(tokens, str):
            if tokens not in self._token_ids:
                raise ValueError(f"token {tokens!r} is not a byte token: pass a printable ASCII character or '<0xHH>'")
            return self._token_ids[tokens]
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def _encode_batch(self, texts):
        offset = self.offset
        try:
            return [[b + offset for b in (t if isinstance(t, bytes) else t.encode("utf-8"))] for t in texts]
        except UnicodeEncodeError as e:
            _raise_if_not_unicode(texts, e)
            raise

    def _decode_ids(self, ids, skip_special_tokens):
        parts, data = [], bytearray()
        for i in ids:
            if i >= self.offset:
                data.append(i - self.offset)
            elif not skip_special_tokens:
                parts.append(data.decode("utf-8", errors="replace"))
                parts.append(self._tokens[i])
                data = bytearray()
        parts.append(data.decode("utf-8", errors="replace"))
        return "".join(parts)

    def save_pretrained(self, save_directory):
        """Write tokenizer_config.json; return its path."""
        path = os.fspath(save_directory)
        os.makedirs(path, exist_ok=True)
        config = {"tokenizer_class": "ByteTokenizer", "padding_side": self.padding_side, "truncation_side": self.truncation_side}
        if self.model_max_length is not None:
            config["model_max_length"] = self.model_max_length
        config_path = os.path.join(path, _CONFIG_FILE)
        _write_json(config_path, config)
        return (config_path,)

    @classmethod
    def from_pretrained(cls, save_directory, **kwargs):
        """Load a folder written by ``save_pretrained``; keyword arguments override it."""
        path = _check_folder(save_directory, "save_directory")
        config_path = os.path.join(path, _CONFIG_FILE)
        if not os.path.isfile(config_path):
            raise ValueError(f"save_directory {path!r} has no {_CONFIG_FILE}: pass a folder written by ByteTokenizer.save_pretrained")
        config = _read_json(config_path)
        if config.get("tokenizer_class") != "ByteTokenizer":
            raise ValueError(
                f"{config_path} is for tokenizer_class={config.get('tokenizer_class')!r}, not ByteTokenizer: "
                "load it with that class (a spiece.model folder loads with ReformerTokenizer)"
            )
        options = {k: config[k] for k in ("model_max_length", "padding_side", "truncation_side") if k in config}
        options.update(kwargs)
        return cls(**options)
