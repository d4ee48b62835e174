"""`reformer-kernels info`: versions, devices, backends and the ops each implements."""
from __future__ import annotations

import importlib.metadata
import platform

import torch

from . import _extension, backends


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def info() -> str:
    """A human-readable report of versions, devices, backends and ops."""
    from . import __version__

    try:
        from . import _build_info

        arch = _build_info.CUDA_ARCH_LIST or f"none ({_build_info.CUDA_SKIPPED_BECAUSE})"
    except ImportError:
        arch = "unknown (no _build_info.py: the package was not built by setup.py)"
    lines = [
        f"reformer_kernels {__version__}",
        f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"triton {_version('triton')}",
        f"cpu: {_cpu_name()}, {torch.get_num_threads()} threads",
    ]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            lines.append(f"cuda:{index}: {props.name}, sm_{props.major}{props.minor}, {props.total_memory / 2**30:.1f} GiB")
    else:
        lines.append("cuda: no device visible")
    lines.append(f"extension _C: {'loaded' if _extension.loaded() else 'NOT loaded: ' + str(_extension.LOAD_ERROR)}")
    lines.append(f"CUDA kernels compiled in: {_extension.with_cuda()}; arch list: {arch}")
    lines.append(f"selected backend: {backends.current_backend()}")
    lines.append("backends:")
    ops = backends.implemented_ops()
    for name, (ok, reason) in backends.status().items():
        lines.append(f"  {name:<9} {'yes' if ok else 'no ':<3}  {reason}")
        lines.append(f"  {'':<9} ops: {', '.join(ops[name]) or '-'}")
    return "\n".join(lines)
