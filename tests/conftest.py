import contextlib
import os
import tempfile
import traceback
import warnings
from pathlib import Path

import pytest
import torch

import reformer_kernels
from reformer_kernels import functional

# torch.compile's on-disk caches (inductor's compiled graphs, keyed by the traced graph and torch's
# version, not by our ops' schemas) can hold code compiled against another build of this package
# and call its ops with arguments they no longer take; each test session compiles into a folder of
# its own, removed at exit (the processes the tests start inherit it).
_COMPILE_CACHE = tempfile.TemporaryDirectory(prefix="reformer-kernels-inductor-")
os.environ["TORCHINDUCTOR_CACHE_DIR"] = _COMPILE_CACHE.name

SYNC_CHECK_ENV_VAR = "REFORMER_KERNELS_SYNC_CHECK"
PACKAGE = Path(reformer_kernels.__file__).parent
AUTOTUNER = ("triton", "runtime", "autotuner.py")  # by path: importing triton here would load it for every test


def may_sync(path: Path) -> bool:
    """Package code that syncs a GPU by design: the float64 reference (the oracle, never a GPU
    path) and generate's loop (its input checks once per call, and the end-of-sequence stop, which
    needs the tokens' values after each step)."""
    return path.is_relative_to(PACKAGE / "reference") or path == PACKAGE / "models" / "generation.py"


@pytest.fixture(autouse=True)
def _fixed_seed():
    """Every test starts from the same global RNG state, so failures reproduce."""
    torch.manual_seed(0)
    yield


@pytest.fixture
def with_debug_checks():
    """The value checks on GPU tensors too (``reformer_kernels.set_debug_checks``) for one test."""
    functional.set_debug_checks(True)
    yield
    functional.set_debug_checks(None)


@contextlib.contextmanager
def package_syncs():
    """Collects, as the stack from the innermost package frame down, every sync warning
    (torch.cuda.set_sync_debug_mode("warn")) raised inside the block that counts against package
    code: its innermost package frame is not in code that ``may_sync``, it is not Triton's autotuner
    timing the configs (once per shape), and debug checks are off. A test's own reads (.cpu() to
    compare) have no package frame on the stack."""
    syncs = []
    show = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        if "called a synchronizing CUDA operation" not in str(message):
            show(message, category, filename, lineno, file, line)
            return
        stack = traceback.extract_stack()[:-1]
        ours = [frame for frame in stack if Path(frame.filename).is_relative_to(PACKAGE)]
        autotuning = any(Path(frame.filename).parts[-3:] == AUTOTUNER for frame in stack)
        if ours and not autotuning and not functional.debug_checks() and not may_sync(Path(ours[-1].filename)):
            syncs.append("".join(traceback.format_list(stack[stack.index(ours[-1]):])))

    with warnings.catch_warnings():
        warnings.filterwarnings("always", message="called a synchronizing CUDA operation")
        warnings.showwarning = record
        yield syncs


@pytest.fixture(autouse=True)
def _package_never_syncs_the_gpu():
    """With REFORMER_KERNELS_SYNC_CHECK=1 (.ci/gpu-check sets it) on a GPU, a test fails when
    package code synchronizes the host with the GPU: an .item(), a bool() of a tensor, a blocking
    copy to the host (``package_syncs``)."""
    if os.environ.get(SYNC_CHECK_ENV_VAR) != "1" or not torch.cuda.is_available():
        yield
        return
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with package_syncs() as syncs:
            yield
    finally:
        torch.cuda.set_sync_debug_mode("default")
    if syncs:
        pytest.fail(f"the package synchronized the GPU {len(syncs)} time(s); the first at:\n{syncs[0]}")
