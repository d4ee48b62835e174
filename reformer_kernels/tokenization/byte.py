
"""``ByteTokenizer``: the byte scheme of the published enwik8 Reformer checkpoint, id = UTF-8 byte
+ 2. Separate from the sentencepiece tokenizer: it needs no model file and shares only base.py.
"""
import os

from .base import TokenizerBase, raise_if_not_unicode
from .files import CONFIG_FILE, SETTINGS, check_folder, read_json, settings_config, write_json


class ByteTokenizer(TokenizerBase):
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
        if not isinstance(tokens, (list, tuple)):
            raise TypeError(f"tokens must be a str or a list of str, got {type(tokens).__name__}")
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def _encode_batch(self, texts):
        offset = self.offset
        try:
            return [[b + offset for b in (t if isinstance(t, bytes) else t.encode("utf-8"))] for t in texts]
        except UnicodeEncodeError as e:
            raise_if_not_unicode(texts, e)
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
        config = {"tokenizer_class": "ByteTokenizer", **settings_config(self)}
        config_path = os.path.join(path, CONFIG_FILE)
        write_json(config_path, config)
        return (config_path,)

    @classmethod
    def from_pretrained(cls, save_directory, **kwargs):
        """Load a folder written by ``save_pretrained``; keyword arguments override it."""
        path = check_folder(save_directory, "save_directory")
        config_path = os.path.join(path, CONFIG_FILE)
        if not os.path.isfile(config_path):
            raise ValueError(f"save_directory {path!r} has no {CONFIG_FILE}: pass a folder written by ByteTokenizer.save_pretrained")
        config = read_json(config_path)
        if config.get("tokenizer_class") != "ByteTokenizer":
            raise ValueError(
                f"{config_path} is for tokenizer_class={config.get('tokenizer_class')!r}, not ByteTokenizer: "
                "load it with that class (a spiece.model folder loads with ReformerTokenizer)"
            )
        options = {k: config[k] for k in SETTINGS if k in config}
        options.update(kwargs)
        return cls(**options)

