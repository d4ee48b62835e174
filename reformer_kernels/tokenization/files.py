"""The files of a saved tokenizer: the folder layout that transformers reads and writes (names,
JSON, special tokens as transformers serializes them) and the settings both tokenizers save.
Separate so that the layout is written down once and the tokenizers hold no file handling.

Folder layout (``save_pretrained`` / ``from_pretrained``), the transformers one:
``spiece.model`` (the sentencepiece model proto), ``tokenizer_config.json`` (tokenizer_class,
special tokens, ``extra_special_tokens``, ``added_tokens_decoder`` with every special token's
id, model_max_length, padding/truncation side) and ``special_tokens_map.json`` (the v4 file).
transformers loads such a folder. transformers v5's ``save_pretrained`` writes only
``tokenizer.json`` and ``tokenizer_config.json``; its ``save_vocabulary(folder)`` adds the
sentencepiece model as ``tokenizer.model``, and ``from_pretrained`` reads either name. The ids of
special tokens past the vocabulary come from ``added_tokens_decoder`` or ``tokenizer.json``.
"""
import json
import os

from .._atomic import atomic_write
from .._json import read_json_object

CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
MODEL_FILE = "spiece.model"
MODEL_FILES = (MODEL_FILE, "tokenizer.model")

# What both tokenizers save and load besides their vocabulary.
SETTINGS = ("model_max_length", "padding_side", "truncation_side")


def read_json(path):
    """The JSON object (a dict) in ``path``; a ValueError naming the file when it is anything else."""
    return read_json_object(path, str(path), "write it again with save_pretrained")


def write_json(path, obj):
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def token_content(value):
    """A special token as saved by transformers: a string or a serialized AddedToken."""
    return value["content"] if isinstance(value, dict) else value


def check_folder(save_directory, name):
    if not isinstance(save_directory, (str, os.PathLike)):
        raise TypeError(f"{name} must be a folder path (str or os.PathLike), got {type(save_directory).__name__}")
    path = os.fspath(save_directory)
    if not os.path.isdir(path):
        raise ValueError(f"{name} {path!r} is not a directory: pass the folder written by save_pretrained")
    return path



def settings_config(tokenizer):
    """The entries of ``SETTINGS`` that a tokenizer's tokenizer_config.json holds (no
    model_max_length when there is no limit)."""
    config = {"padding_side": tokenizer.padding_side, "truncation_side": tokenizer.truncation_side}
    if tokenizer.model_max_length is not None:
        config["model_max_length"] = tokenizer.model_max_length
    return config
