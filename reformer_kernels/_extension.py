"""Loads the compiled extension reformer_kernels._C, or says once, loudly, why it is missing."""
import warnings

import torch  # noqa: F401  (loads libtorch and libc10, which _C links against)

try:
    from . import _C
except ImportError as error:
    _C = None
    LOAD_ERROR = f"{type(error).__name__}: {error}"
    warnings.warn(
        "reformer_kernels._C could not be loaded, so the compiled CPU and CUDA kernels are unavailable and "
        f"ops fall back to the reference implementation ({LOAD_ERROR}). "
        "Build it with `pip install --no-build-isolation -e .` from the repository root.",
        RuntimeWarning,
        stacklevel=2,
    )
else:
    LOAD_ERROR = None


def loaded() -> bool:
    return _C is not None


def with_cuda() -> bool:
    return _C is not None and bool(_C.with_cuda())


def release_free_heap() -> bool:
    """Hand malloc's free heap pages back to the system (glibc's malloc_trim); False where it cannot
    (no _C, or a C library without it). The reversible layers call it on the CPU between sub-layers,
    so that what one layer freed does not stay resident while the next allocates fresh pages."""
    return _C is not None and bool(_C.release_free_heap())
