"""Which backend runs an op: "auto" | "triton" | "cuda" | "cpu" | "reference".

The choice comes, in order of precedence, from the op's ``backend=`` argument, the innermost
``use_backend(...)`` context, the ``REFORMER_KERNELS_BACKEND`` environment variable, and "auto".
"auto" picks Triton (then CUDA) kernels for CUDA tensors and the C++ kernels for CPU tensors, and
falls back to the reference implementation only where no compiled kernel exists, with one warning
per op and device. Asking for a backend explicitly never falls back: it runs or raises.

Ops register their implementations here (``register``), each from its own module under
``reformer_kernels.ops``; every implementation of an op takes the same arguments. This module is a
leaf: it imports nothing of the package but the extension loader, and the ops register into it
when ``reformer_kernels`` is imported (the Triton kernels through ``set_triton_loader``, lazily).
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import os
import warnings
from typing import Callable, Iterator

import torch

from . import _extension

BACKENDS = ("auto", "triton", "cuda", "cpu", "reference")
ENV_VAR = "REFORMER_KERNELS_BACKEND"

_registry: dict[str, dict[str, Callable]] = {}
_context: contextvars.ContextVar[str | None] = contextvars.ContextVar("reformer_kernels_backend", default=None)
_warned: set[tuple[str, str]] = set()


def _check_name(name: object, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{source} {name!r} is not a backend: choose one of {', '.join(BACKENDS)}")
    return name  # type: ignore[return-value]


def register(op: str, backend: str, impl: Callable) -> None:
    """Register ``impl`` as ``backend``'s implementation of ``op``."""
    _check_name(backend, "backend")
    if backend == "auto":
        raise ValueError("register: 'auto' is a choice among backends, not a backend to register")
    _registry.setdefault(op, {})[backend] = impl


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the ops called inside the ``with`` block on backend ``name`` (unless a call passes ``backend=``)."""
    token = _context.set(_check_name(name, "use_backend:"))
    try:
        yield
    finally:
        _context.reset(token)


def current_backend() -> str:
    """The backend that a call without ``backend=`` would ask for (before "auto" is resolved)."""
    name = _context.get()
    if name is not None:
        return name
    env = os.environ.get(ENV_VAR)
    if env:
        return _check_name(env.strip().lower(), f"environment variable {ENV_VAR}=")
    return "auto"


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# What the installation provides, fixed for the process: (extension loaded, CUDA compiled into it,
# triton importable). Found once and kept in a global, so that select() (on every op call) neither
# calls into _C nor searches the import path again, which would also break torch.compile's graphs.
_installed: tuple[bool, bool, bool] | None = None


def _installation() -> tuple[bool, bool, bool]:
    global _installed
    if _installed is None:
        _installed = (_extension.loaded(), _extension.with_cuda(), importlib.util.find_spec("triton") is not None)
    return _installed


def status() -> dict[str, tuple[bool, str]]:
    """For each backend: (available, reason it is not, or what it runs on)."""
    has_gpu = torch.cuda.is_available()
    loaded, with_cuda, has_triton = _installation()
    result = {"reference": (True, "pure PyTorch, any device")}
    if loaded:
        result["cpu"] = (True, "C++/OpenMP kernels in reformer_kernels._C")
    else:
        result["cpu"] = (False, f"reformer_kernels._C did not load ({_extension.LOAD_ERROR})")
    if not loaded:
        result["cuda"] = (False, f"reformer_kernels._C did not load ({_extension.LOAD_ERROR})")
    elif not with_cuda:
        result["cuda"] = (False, "reformer_kernels._C was built without CUDA (CPU-only torch, no nvcc, or REFORMER_KERNELS_CUDA=0)")
    elif not has_gpu:
        result["cuda"] = (False, "no CUDA device is visible (torch.cuda.is_available() is False)")
    else:
        result["cuda"] = (True, "CUDA kernels in reformer_kernels._C")
    if not has_triton:
        result["triton"] = (False, "triton is not installed")
    elif has_gpu:
        result["triton"] = (True, "Triton kernels on CUDA tensors")
    elif triton_interpreted():
        result["triton"] = (True, "Triton interpreter (TRITON_INTERPRET=1) on CPU tensors")
    else:
        result["triton"] = (False, "no CUDA device is visible and TRITON_INTERPRET is not 1")
    return result


def implemented_ops() -> dict[str, list[str]]:
    """For each backend, the ops it implements."""
    _load_triton()
    table: dict[str, list[str]] = {name: [] for name in BACKENDS if name != "auto"}
    for op, impls in sorted(_registry.items()):
        for backend in impls:
            table[backend].append(op)
    return table


_triton_loader: Callable[[], None] | None = None
_triton_loaded = False


def set_triton_loader(load: Callable[[], None]) -> None:
    """``load`` imports (and so registers) the Triton kernels; it runs the first time one could run.
    Deferred because importing triton maps its compiler library, which a process that only runs CPU
    tensors never needs."""
    global _triton_loader
    _triton_loader = load


def _load_triton() -> None:
    global _triton_loaded
    if not _triton_loaded and _triton_loader is not None:
        _triton_loader()
        _triton_loaded = True


def _runs_on(backend: str, device: torch.device) -> bool:
    if backend == "reference":
        return True
    if backend == "cpu":
        return device.type == "cpu"
    if backend == "cuda":
        return device.type == "cuda"
    return device.type == "cuda" or (device.type == "cpu" and triton_interpreted())


def select(op: str, device: torch.device, backend: str | None = None) -> tuple[str, Callable]:
    """The (backend name, implementation) that runs ``op`` on tensors on ``device``."""
    name = current_backend() if backend is None else _check_name(backend, "backend")
    if device.type == "cuda" or name == "triton":
        _load_triton()
    impls = _registry.get(op)
    if not impls:
        raise ValueError(f"unknown op {op!r}: known ops are {', '.join(sorted(_registry))}")
    available = status()
    if name != "auto":
        ok, reason = available[name]
        if not ok:
            raise ValueError(f"backend {name!r} is unavailable for {op}: {reason}; use backend='auto' or 'reference'")
        if name not in impls:
            raise ValueError(
                f"backend {name!r} has no kernel for {op} yet (it has: {', '.join(sorted(impls))}); "
                "use backend='auto' to pick one that does"
            )
        if not _runs_on(name, device):
            raise ValueError(f"backend {name!r} cannot run {op} on {device.type} tensors; move the inputs or pick another backend")
        return name, impls[name]
    candidates = ("triton", "cuda") if device.type == "cuda" else ("cpu",)
    for candidate in candidates:
        if candidate in impls and available[candidate][0] and _runs_on(candidate, device):
            return candidate, impls[candidate]
    key = (op, device.type)
    if key not in _warned:
        _warned.add(key)
        why = "; ".join(
            f"{c}: {'no kernel for this op' if c not in impls else available[c][1]}" for c in candidates
        )
        warnings.warn(
            f"reformer_kernels: {op} on {device.type} runs on the slow reference implementation ({why})",
            RuntimeWarning,
            stacklevel=3,
        )
    return "reference", impls["reference"]
