"""Compiled and Triton kernels, one module per op family; importing a module registers its kernels.

Importing this package registers the compiled (C++/CUDA) kernels only. The Triton kernels load
with ``load_triton()``, which the backend selection calls the first time a Triton kernel could run
(a CUDA tensor, or an explicit ``backend="triton"``): importing triton maps its ~90 MB compiler
library, which a process that only runs CPU tensors would otherwise pay for on its first op call.
"""
import importlib
import importlib.util

from . import cross_entropy, hashing, local_attention, lsh_attention, projections, sorting

__all__ = ["cross_entropy", "hashing", "local_attention", "lsh_attention", "projections", "sorting", "load_triton"]

TRITON_MODULES = ("triton_cross_entropy", "triton_hashing", "triton_local_attention", "triton_lsh_attention", "triton_reversible")


def load_triton() -> None:
    """Import (and so register) the Triton kernels, where triton is installed (a CUDA build of torch ships it)."""
    if importlib.util.find_spec("triton") is not None:
        for name in TRITON_MODULES:
            importlib.import_module(f"{__name__}.{name}")
