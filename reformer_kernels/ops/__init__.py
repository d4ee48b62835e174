"""The ops, one place each, named after the op: its schema's fake impls and autograd, the glue
to the C++/CUDA kernels of ``reformer_kernels._C`` (schemas in csrc/reformer.cpp) and, in the op's
``triton_kernels`` module, its Triton kernels with the same arguments. Each op registers its
implementations into ``reformer_kernels.backends``, the reference one included.

Importing this package registers the reference and compiled (C++/CUDA) implementations. The Triton
kernels register through ``load_triton``, which ``backends`` calls the first time a Triton kernel
could run (a CUDA tensor, or an explicit ``backend="triton"``): importing triton maps its ~90 MB
compiler library, which a process that only runs CPU tensors would otherwise pay for on its first
op call. Shared Triton code lives in ``triton_utils`` and ``chunk_attention_triton``.
"""
import importlib
import importlib.util

from .. import backends
from . import (
    bucket_sort,
    dropout_add,
    dropout_relu,
    head_projections,
    linear_cross_entropy,
    local_attention,
    lsh_attention,
    lsh_decode_step,
    lsh_hash,
    seeded_randn,
)

__all__ = [
    "bucket_sort",
    "dropout_add",
    "dropout_relu",
    "head_projections",
    "linear_cross_entropy",
    "load_triton",
    "local_attention",
    "lsh_attention",
    "lsh_decode_step",
    "lsh_hash",
    "seeded_randn",
]

TRITON_OPS = ("dropout_add", "dropout_relu", "linear_cross_entropy", "local_attention", "lsh_attention", "lsh_decode_step", "lsh_hash")


def load_triton() -> None:
    """Import (and so register) the Triton kernels, where triton is installed (a CUDA build of torch ships it)."""
    if importlib.util.find_spec("triton") is not None:
        for op in TRITON_OPS:
            importlib.import_module(f"{__name__}.{op}.triton_kernels")


backends.set_triton_loader(load_triton)
