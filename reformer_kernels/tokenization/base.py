"""What both tokenizers share: the call that encodes one text or a batch, alone or in pairs (padding,
lists or tensors, attention masks), decoding and id checks, and ``BatchEncoding``. Separate from
the tokenizers so that each of them holds only how its text becomes ids and back.
"""
from itertools import chain

import torch

# transformers' VERY_LARGE_INTEGER: a model_max_length that stands for "no limit".
_NO_LIMIT = int(1e30)
_SIDES = ("left", "right")
_PADDING = {True: "longest", "longest": "longest", "max_length": "max_length", False: None, "do_not_pad": None}
_TRUNCATION = {
    True: "longest_first", "longest_first": "longest_first", "only_first": "only_first", "only_second": "only_second",
    False: None, "do_not_truncate": None,
}
_MAX_PADDED_IDS = 2**31 - 1


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



class TokenizerBase:
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
        text_pair=None,
        *,
        padding=False,
        truncation=None,
        max_length=None,
        pad_to_multiple_of=None,
        padding_side=None,
        return_tensors=None,
        return_attention_mask=None,
        return_token_type_ids=None,
    ):
        """Tokenize one text or a batch, each alone or with a second text (a pair).

        text: a str (ids are a flat list; a (1, L) tensor with ``return_tensors="pt"``) or a list
        of str. text_pair: a second text for ``text`` (a str for a str, a list as long for a
        list); a batch may also hold ``(text, text_pair)`` tuples. A pair's ids are the first
        text's ids followed by the second's, nothing between them (these tokenizers add no
        special tokens, as transformers' ReformerTokenizer). ``padding``: False |
        True/"longest" | "max_length" (to ``max_length``, else ``model_max_length``), rounded up
        to ``pad_to_multiple_of``; needs ``pad_token``. ``truncation``: True/"longest_first"
        keeps ``max_length`` (else ``model_max_length``) ids from the ``truncation_side``; of a
        pair, the shorter text stays whole if it fits in half of that and the longer gets the
        rest, else each gets half (the longer, or the second when they are as long, gets the odd
        id), as transformers cuts pairs; "only_first" / "only_second" cut that text alone and
        raise if it would have to go entirely. Left unset, truncation is on when ``max_length``
        is given without padding, as in transformers. ``return_tensors``: None (lists) or "pt"
        (int64 tensors, (B, L)). Returns a BatchEncoding with ``input_ids``, ``token_type_ids``
        when ``return_token_type_ids=True`` (0 for the first text and padding, 1 for the second)
        and (unless ``return_attention_mask=False``) ``attention_mask`` (1 = token, 0 = padding).
        """
        firsts, seconds, is_batch = self._as_pairs(text, text_pair)
        strategy, truncation, truncate_to, pad_to = self._resolve_lengths(padding, truncation, max_length, pad_to_multiple_of)
        side = self.padding_side if padding_side is None else padding_side
        self._check_side("padding_side", side)
        self._check_side("truncation_side", self.truncation_side)
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors={return_tensors!r}: pass 'pt' for torch tensors or None for lists")

        first_rows = self._encode_batch(firsts)
        present = [t for t in seconds if t is not None]
        try:
            second_rows = iter(self._encode_batch(present) if present else [])
        except ValueError as error:
            # The tokenizer named the text by its place among the second texts alone.
            raise_if_not_unicode(seconds, error, "text_pair")
            raise
        pairs = [(row, None if t is None else next(second_rows)) for row, t in zip(first_rows, seconds)]
        if truncate_to is not None:
            pairs = [self._truncate(first, second, truncate_to, truncation, i) for i, (first, second) in enumerate(pairs)]
        rows = [first if second is None else first + second for first, second in pairs]
        second_lengths = [len(second or ()) for _, second in pairs] if return_token_type_ids else None
        target = 0
        if strategy == "longest":
            target = max(map(len, rows), default=0)
        elif strategy == "max_length":
            target = pad_to
        if strategy is not None and pad_to_multiple_of is not None:
            target = -(-target // pad_to_multiple_of) * pad_to_multiple_of
        lengths = [len(r) for r in rows]
        padded = [max(n, target) for n in lengths]
        if sum(padded) > _MAX_PADDED_IDS:
            # Padding is built in memory: a typo such as max_length=10**12 would exhaust it (a
            # MemoryError after minutes of swapping) instead of saying what was asked.
            raise ValueError(
                f"padding to {target} ids per row for {len(rows)} rows asks for {sum(padded)} ids, more than "
                f"{_MAX_PADDED_IDS} (16 GiB of int64): pass a smaller max_length (or pad_to_multiple_of), or padding=True"
            )

        try:
            if return_tensors == "pt":
                input_ids, token_type_ids, attention_mask = self._to_tensors(rows, padded, side, second_lengths)
            else:
                input_ids, token_type_ids, attention_mask = self._to_lists(rows, padded, side, second_lengths)
        except MemoryError:
            raise ValueError(
                f"padding to {target} ids per row for {len(rows)} rows does not fit in memory: pass a smaller "
                "max_length (or pad_to_multiple_of), or padding=True"
            ) from None
        if return_tensors != "pt" and not is_batch:
            input_ids, attention_mask = input_ids[0], attention_mask[0]
            token_type_ids = None if token_type_ids is None else token_type_ids[0]
        encoding = BatchEncoding(input_ids=input_ids)
        if return_token_type_ids:
            encoding["token_type_ids"] = token_type_ids
        if return_attention_mask is None or return_attention_mask:
            encoding["attention_mask"] = attention_mask
        return encoding

    def encode(self, text, text_pair=None, **kwargs):
        """The ``input_ids`` of one text, or of a pair (keyword arguments as in ``__call__``)."""
        for name, value in (("text", text), ("text_pair", text_pair)):
            if not isinstance(value, self._text_types) and not (name == "text_pair" and value is None):
                raise TypeError(
                    f"{name} must be a {self._allowed()}, got {type(value).__name__}: "
                    "call the tokenizer itself on a list of texts (and a list of text pairs)"
                )
        return self(text, text_pair, **kwargs)["input_ids"]

    def tokenize(self, text):
        """The tokens of one text."""
        return self.convert_ids_to_tokens(self.encode(text))

    def _allowed(self):
        return " or ".join(t.__name__ for t in self._text_types)

    def _as_pairs(self, text, text_pair):
        """(first texts, second text or None for each, whether the call is a batch)."""
        allowed = self._allowed()
        if isinstance(text, self._text_types):
            if text_pair is not None and not isinstance(text_pair, self._text_types):
                raise TypeError(
                    f"text_pair must be a {allowed} when text is one, got {type(text_pair).__name__}: "
                    "for a batch of pairs pass lists as text and text_pair"
                )
            return [text], [text_pair], False
        if not isinstance(text, (list, tuple)):
            raise TypeError(f"text must be a {allowed} or a list of them, got {type(text).__name__}")
        if text_pair is None:
            firsts, seconds = [], []
            for i, t in enumerate(text):
                if isinstance(t, self._text_types):
                    firsts.append(t)
                    seconds.append(None)
                elif isinstance(t, (list, tuple)) and len(t) == 2 and all(isinstance(p, self._text_types) for p in t):
                    firsts.append(t[0])
                    seconds.append(t[1])
                else:
                    raise TypeError(f"text[{i}] must be a {allowed} or a (text, text_pair) pair of them, got {type(t).__name__}")
            return firsts, seconds, True
        if not isinstance(text_pair, (list, tuple)):
            raise TypeError(
                f"text is a batch of {len(text)}, so text_pair must be a list of as many {allowed}, "
                f"got {type(text_pair).__name__}"
            )
        if len(text_pair) != len(text):
            raise ValueError(f"text has {len(text)} texts but text_pair has {len(text_pair)}: pass one pair text per text")
        for name, texts in (("text", text), ("text_pair", text_pair)):
            for i, t in enumerate(texts):
                if not isinstance(t, self._text_types):
                    raise TypeError(f"{name}[{i}] must be a {allowed}, got {type(t).__name__}")
        return list(text), list(text_pair), True

    def _truncate(self, first, second, limit, truncation, index):
        """(first, second) cut to ``limit`` ids together by the ``truncation`` strategy (see __call__)."""
        n_first, n_second = len(first), len(second or ())
        excess = n_first + n_second - limit
        if excess <= 0:
            return first, second
        if limit == 0:
            return [], None if second is None else []
        if second is None:
            if truncation == "only_second":
                raise ValueError(
                    f"truncation='only_second' but text {index} has no text_pair and {n_first} ids > max_length {limit}: "
                    "pass truncation='longest_first' (or True), or give it a text_pair"
                )
            return self._cut(first, limit), None
        if truncation == "longest_first":
            if 2 * min(n_first, n_second) <= limit:
                keep = (n_first, limit - n_first) if n_first <= n_second else (limit - n_second, n_second)
            else:
                half = limit // 2
                keep = (half, limit - half) if n_first <= n_second else (limit - half, half)
            return self._cut(first, keep[0]), self._cut(second, keep[1])
        target, other = ("first", "second") if truncation == "only_first" else ("second", "first")
        length = n_first if target == "first" else n_second
        if length <= excess:
            raise ValueError(
                f"truncation={truncation!r} with max_length {limit}: pair {index}'s {other} text alone has "
                f"{n_first + n_second - length} ids, so cutting its {target} text ({length} ids) cannot fit it: "
                "pass truncation='longest_first' (or True), or a larger max_length"
            )
        if target == "first":
            return self._cut(first, n_first - excess), second
        return first, self._cut(second, n_second - excess)

    def _cut(self, row, n):
        """The ``n`` ids of ``row`` that truncation keeps, from the side opposite ``truncation_side``."""
        return row[len(row) - n :] if self.truncation_side == "left" else row[:n]

    def _resolve_lengths(self, padding, truncation, max_length, pad_to_multiple_of):
        """(padding strategy, truncation strategy, length to truncate to or None, length for padding="max_length")."""
        if not isinstance(padding, (bool, str)) or padding not in _PADDING:
            raise ValueError(f"padding={padding!r}: pass False, True, 'longest', 'max_length' or 'do_not_pad'")
        if truncation is not None and (not isinstance(truncation, (bool, str)) or truncation not in _TRUNCATION):
            raise ValueError(
                f"truncation={truncation!r}: pass True, False, 'longest_first', 'only_first', 'only_second' or 'do_not_truncate'"
            )
        for name, value in (("max_length", max_length), ("pad_to_multiple_of", pad_to_multiple_of)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"{name}={value!r}: pass a non-negative int or None")
        if pad_to_multiple_of == 0:
            raise ValueError("pad_to_multiple_of=0: pass a positive int or None")
        strategy = _PADDING[padding]
        # transformers turns truncation on for a bare max_length only when padding is literally False.
        if truncation is None:
            truncation = "longest_first" if max_length is not None and padding is False else False
        truncation = _TRUNCATION[truncation]
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
        if truncation and strategy is not None and pad_to_multiple_of is not None and limit is not None:
            if limit % pad_to_multiple_of:
                raise ValueError(
                    f"truncation to max_length={limit} and padding to pad_to_multiple_of={pad_to_multiple_of} disagree: "
                    "pass a max_length that is a multiple of pad_to_multiple_of"
                )
        return strategy, truncation, limit if truncation else None, limit

    def _to_lists(self, rows, padded, side, second_lengths):
        """input_ids, token_type_ids (None without ``second_lengths``) and attention_mask, as lists of rows."""
        pad_id = self.pad_token_id
        input_ids, attention_mask = [], []
        for row, width in zip(rows, padded):
            n = len(row)
            pad, ones, zeros = [pad_id] * (width - n), [1] * n, [0] * (width - n)
            input_ids.append(pad + row if side == "left" else row + pad)
            attention_mask.append(zeros + ones if side == "left" else ones + zeros)
        if second_lengths is None:
            return input_ids, None, attention_mask
        token_type_ids = []
        for row, n_second, width in zip(rows, second_lengths, padded):
            types, zeros = [0] * (len(row) - n_second) + [1] * n_second, [0] * (width - len(row))
            token_type_ids.append(zeros + types if side == "left" else types + zeros)
        return input_ids, token_type_ids, attention_mask

    def _to_tensors(self, rows, padded, side, second_lengths):
        """As ``_to_lists``, as (B, L) int64 tensors."""
        width = padded[0] if padded else 0
        if any(w != width for w in padded):
            raise ValueError(
                f"return_tensors='pt' needs rows of one length, got lengths from {min(padded)} to {max(padded)}: "
                "pass padding=True (and truncation=True with max_length to cap the length)"
            )
        n = torch.tensor([len(r) for r in rows], dtype=torch.long)
        positions = torch.arange(width)
        start = width - n if side == "left" else torch.zeros_like(n)
        end = start + n
        # Filling a boolean mask writes in row-major order, which is the order of the flat ids.
        mask = (positions >= start[:, None]) & (positions < end[:, None])
        fill = 0 if self.pad_token_id is None else self.pad_token_id
        input_ids = torch.full((len(rows), width), fill, dtype=torch.long)
        input_ids[mask] = torch.tensor(list(chain.from_iterable(rows)), dtype=torch.long)
        token_type_ids = None
        if second_lengths is not None:
            second_start = end - torch.tensor(second_lengths, dtype=torch.long)
            token_type_ids = (mask & (positions >= second_start[:, None])).long()
        return input_ids, token_type_ids, mask.long()

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



def raise_if_not_unicode(texts, cause, name="text"):
    """Name the first of ``texts`` (called ``name``) that cannot be UTF-8 encoded (a lone surrogate), if there is one."""
    for i, text in enumerate(texts):
        if isinstance(text, str):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(
                    f"{name}[{i}] has a lone surrogate {text[e.start]!r} at position {e.start}, which is not Unicode: "
                    "clean the text (e.g. text.encode('utf-8', 'replace').decode())"
                ) from cause

