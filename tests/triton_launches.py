"""Triton launches recorded instead of run, for the tests that check what a launch would compile
(tests/ops/test_triton_compile.py) or that the launchers' host code reads no tensor value
(tests/test_no_host_sync.py), on a machine without a GPU."""
import contextlib
from unittest import mock

import pytest
from triton.runtime.autotuner import Autotuner
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

from reformer_kernels import backends


@contextlib.contextmanager
def recorded_launches():
    """Inside the block every Triton launch appends (kernel, args, kwargs) to the list it yields
    and runs nothing, compiled or interpreted (TRITON_INTERPRET=1); the launchers pick their GPU
    tiles and autotune configs, not the interpreter's."""
    launches = []

    def record(kernel, *args, grid, warmup=False, **kwargs):
        launches.append((kernel, args, kwargs))

    with mock.patch.object(JITFunction, "run", record), mock.patch.object(Autotuner, "run", record), \
            mock.patch.object(InterpretedFunction, "run", record), pytest.MonkeyPatch.context() as patch:
        patch.setattr(backends, "triton_interpreted", lambda: False)
        yield launches
