"""Reformer building blocks as ``torch.nn`` modules, running on the ops of ``reformer_kernels.functional``."""
from .attention import DecodingCache, LocalSelfAttention, LSHSelfAttention
from .cross_entropy import linear_cross_entropy
from .embeddings import AxialPositionEmbeddings
from .feed_forward import ChunkedFeedForward
from .reversible import ReversibleBlock, ReversibleSequence

__all__ = [
    "AxialPositionEmbeddings",
    "ChunkedFeedForward",
    "DecodingCache",
    "LSHSelfAttention",
    "LocalSelfAttention",
    "ReversibleBlock",
    "ReversibleSequence",
    "linear_cross_entropy",
]
