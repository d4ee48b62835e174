"""Compiled and Triton kernels, one module per op family; importing a module registers its kernels."""
from . import sorting

__all__ = ["sorting"]
