"""Pure-PyTorch reference implementations: readable, float64-capable, the oracle for every test.

Randomness (rotations, dropout masks) is always an explicit argument here.
"""
from .chunked import dropout_mask_shape, pad_sequence
from .hashing import default_num_buckets, hash_vectors
from .lsh_attention import lsh_attention
from .sorting import sort_buckets

__all__ = ["default_num_buckets", "dropout_mask_shape", "hash_vectors", "lsh_attention", "pad_sequence", "sort_buckets"]
