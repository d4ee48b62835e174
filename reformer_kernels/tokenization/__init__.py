"""Tokenizers for Reformer checkpoints: ``ReformerTokenizer`` (sentencepiece, as transformers'
ReformerTokenizer) and ``ByteTokenizer`` (the enwik8 byte scheme).

One concern per module, each importing only those listed before it: ``files`` (the saved folder's
layout), ``base`` (padding, truncation, tensors and decoding that both share), ``trainer``
(training a sentencepiece model), ``reformer`` and ``byte`` (the two tokenizers).
"""
from .base import BatchEncoding
from .byte import ByteTokenizer
from .reformer import SPIECE_UNDERLINE, ReformerTokenizer

__all__ = ["BatchEncoding", "ByteTokenizer", "ReformerTokenizer", "SPIECE_UNDERLINE"]
