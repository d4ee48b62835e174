"""Compiled and Triton kernels, one module per op family; importing a module registers its kernels."""
import importlib.util

from . import cross_entropy, hashing, local_attention, lsh_attention, sorting

__all__ = ["cross_entropy", "hashing", "local_attention", "lsh_attention", "sorting"]

# The Triton kernels need triton (a CUDA build of torch ships it); the other backends do not.
if importlib.util.find_spec("triton") is not None:
    from . import triton_cross_entropy, triton_hashing, triton_local_attention, triton_lsh_attention, triton_reversible

    __all__ += ["triton_cross_entropy", "triton_hashing", "triton_local_attention", "triton_lsh_attention", "triton_reversible"]
