"""Loads the compiled extension reformer_kernels._C, or says once, loudly, why it is missing."""
import contextlib
import warnings
from typing import Iterator

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


@contextlib.contextmanager
def cpu_memory_pool() -> Iterator[None]:
    """Within this context, this thread's CPU tensors of 1 MiB or more come from reformer_kernels' pool.

    The pool keeps every block it handed out when its tensor is freed (whenever and on whichever
    thread that happens) and gives it to the next tensor of the same size class, also outside the
    context. Only inside it does the pool grow: outside, a large tensor with no cached block of its
    class takes the place of the cached blocks that sat idle longest (unmapped, at least its size),
    or comes from torch's allocator where fewer bytes are cached. Each entry into the context
    unmaps the blocks that the last two entries did not reuse; the others stay cached until
    ``empty_cpu_memory_pool()``. So a computation that allocates the same shapes over and over (a
    training step, layer after layer) reuses resident pages instead of faulting fresh zeroed ones
    in, and its resident memory does not grow with the repetitions. Reused blocks are not cleared,
    like malloc's: results do not change. The reversible layers (``reformer_kernels.nn.ReversibleSequence``)
    run their forward and backward inside it.
    Without the compiled extension this does nothing."""
    if _C is None:
        yield
        return
    _C.memory_pool_enter()
    try:
        yield
    finally:
        _C.memory_pool_exit()


def empty_cpu_memory_pool() -> int:
    """Hand the CPU memory pool's free blocks back to the system; returns how many bytes. Blocks still
    in use stay, and return to the pool when freed."""
    return 0 if _C is None else int(_C.memory_pool_empty())


def cpu_memory_pool_stats() -> dict[str, int]:
    """The CPU memory pool's counters: ``in_use_bytes`` and ``cached_bytes`` (free, kept for reuse) now,
    ``peak_in_use_bytes`` since the last emptying, ``cached_blocks``, and since the start the block
    counts ``reused`` (taken from the cache), ``mapped`` (fresh from the system) and ``unmapped``; empty
    without the compiled extension."""
    return {} if _C is None else dict(_C.memory_pool_stats())
