"""Pure-PyTorch reference implementations: readable, float64-capable, the oracle for every test.

Randomness (rotations, the dropout's Philox seed and offset) is always an explicit argument here.
"""
from .axial import axial_position_encodings
from .chunked import dropout_mask_shape, pad_sequence
from .dropout import dropout_keep, keep_threshold, philox4x32_10, philox_words
from .hashing import bucket_factors, default_num_buckets, hash_vectors
from .local_attention import local_attention, local_chunking
from .lsh_attention import lsh_attention
from .projections import head_projections
from .reversible import dropout_add, reversible_forward, reversible_inverse
from .sorting import argsort_buckets, invert_permutation, sort_buckets

__all__ = [
    "argsort_buckets",
    "axial_position_encodings",
    "bucket_factors",
    "default_num_buckets",
    "dropout_add",
    "dropout_keep",
    "dropout_mask_shape",
    "hash_vectors",
    "head_projections",
    "invert_permutation",
    "keep_threshold",
    "local_attention",
    "local_chunking",
    "lsh_attention",
    "pad_sequence",
    "philox4x32_10",
    "philox_words",
    "reversible_forward",
    "reversible_inverse",
    "sort_buckets",
]
