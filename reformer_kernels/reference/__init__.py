"""Pure-PyTorch reference implementations: readable, float64-capable, the oracle for every test.

Randomness (rotations, dropout masks) is always an explicit argument here.
"""
from .sorting import sort_buckets

__all__ = ["sort_buckets"]
