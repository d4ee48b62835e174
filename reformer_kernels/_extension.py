"""Loads the compiled extension reformer_kernels._C, or says once, loudly, why it is missing."""
import contextlib
import functools
import warnings
from typing import Any, Callable, Iterator

import torch  # (also loads libtorch and libc10, which _C links against)

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
    """Within this context, this thread's CPU tensors of 128 KiB or more come from reformer_kernels' pool.

    The pool keeps the pages of every block it handed out when its tensor is freed (whenever and on
    whichever thread that happens), merged with free neighbours, and carves later tensors of any size
    out of them (the smallest free range that fits), also outside the context. Only inside it does the
    pool grow (a fresh mapping when no free range fits); outside, such a tensor comes from torch's
    allocator. Each entry into the context unmaps the free pages that the last two entries did not
    use; the others stay until ``empty_cpu_memory_pool()``. So a computation that allocates the same
    shapes over and over (a training step, layer after layer) reuses resident pages instead of
    faulting fresh zeroed ones in, and its resident memory follows the most bytes alive at once, not
    the repetitions nor the number of distinct shapes. Each entry also ends a recorded segment (the
    sizes requested, and when each block was allocated and freed); once the segments repeat (period
    one: an inference call; two: a training step's forward and backward), the pool places one
    period's blocks offline in one range of about the most bytes alive at once and serves each
    request of the next periods at its planned place while the sizes keep repeating, which best fit
    (fragmented by blocks of many sizes and lifetimes: ~1.4x that at the crime-and-punishment
    configuration) cannot; a period that differs drops the plan. Reused blocks are not cleared, like malloc's:
    results do not change. The models (``reformer_kernels.models``) run their forward inside it and
    the reversible layers (``reformer_kernels.nn.ReversibleSequence``) their forward and backward.
    Without the compiled extension this does nothing."""
    if _C is None:
        yield
        return
    _C.memory_pool_enter()
    try:
        yield
    finally:
        _C.memory_pool_exit()


def in_cpu_memory_pool(function: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: each call of ``function`` runs inside ``cpu_memory_pool()`` (looked up at the call,
    so that tests can replace it); traced by torch.compile, it runs as it is (a graph cannot call the pool)."""
    @functools.wraps(function)
    def pooled(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            return function(*args, **kwargs)
        with cpu_memory_pool():
            return function(*args, **kwargs)

    return pooled


def empty_cpu_memory_pool() -> int:
    """Hand the CPU memory pool's free pages back to the system; returns how many bytes. Blocks still
    in use stay, and return to the pool when freed."""
    return 0 if _C is None else int(_C.memory_pool_empty())


def cpu_memory_pool_stats() -> dict[str, int]:
    """The CPU memory pool's counters: ``in_use_bytes`` and ``cached_bytes`` (free, kept for reuse) now,
    ``peak_in_use_bytes`` since the last emptying, ``cached_blocks`` (free ranges), ``plan_bytes``
    (the size of the plan's range, 0 without a plan), and since the start the counts ``reused``
    (blocks carved out of free ranges), ``planned`` (of those, the ones at their planned place),
    ``plans`` (periods placed, adopted or not),
    ``mapped`` (fresh from the system) and ``unmapped`` (ranges handed back); empty without the
    compiled extension."""
    return {} if _C is None else dict(_C.memory_pool_stats())
