"""Shared checks of the Triton tests: a kernel against the float64 reference by the DESIGN.md rule."""
from typing import Callable, Sequence

import pytest
import torch

from reformer_kernels import backends
from tests.tolerance import assert_within_rule

# atol of the tolerance rule per dtype, for outputs and gradients of order one.
ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def skip_if_interpreter_lacks(dtype: torch.dtype) -> None:
    # The interpreter's bf16 tl.dot returns garbage and its fp32 -> bf16 casts truncate.
    if dtype == torch.bfloat16 and backends.triton_interpreted():
        pytest.skip("bf16 needs compiled kernels (a GPU without TRITON_INTERPRET): the interpreter's bf16 dot and casts are wrong")


def _forward_backward(run: Callable, backend: str, tensors: Sequence[torch.Tensor], dtype: torch.dtype, weights: list):
    leaves = [t.detach().to(dtype).requires_grad_(True) for t in tensors]
    outputs = run(backend, *leaves)
    if not weights:
        # Quarter-integers are exact in every float dtype, so each run sees the same upstream gradient.
        weights.extend(torch.randint(-4, 5, o.shape, device=o.device).double() / 4 for o in outputs)
    loss = sum((o * w.to(o.dtype)).sum() for o, w in zip(outputs, weights))
    return outputs, torch.autograd.grad(loss, leaves)


def assert_matches_reference(run: Callable, tensors: Sequence[torch.Tensor], dtype: torch.dtype, what: str) -> None:
    """``run(backend, *tensors)`` returns a tuple of float outputs. The triton run in ``dtype`` is
    compared with the reference in float64, outputs and the gradients of every tensor, each within
    twice the reference's own error in ``dtype`` plus ATOL."""
    weights: list = []
    outputs64, grads64 = _forward_backward(run, "reference", tensors, torch.float64, weights)
    baseline_outputs, baseline_grads = _forward_backward(run, "reference", tensors, dtype, weights)
    outputs, grads = _forward_backward(run, "triton", tensors, dtype, weights)
    for i, (actual, ref64, baseline) in enumerate(zip(outputs, outputs64, baseline_outputs)):
        assert actual.dtype == dtype, f"{what}: output {i} is {actual.dtype}, expected {dtype}"
        assert_within_rule(actual, ref64, baseline, ATOL[dtype], f"{what} output {i}")
    for i, (actual, ref64, baseline) in enumerate(zip(grads, grads64, baseline_grads)):
        assert_within_rule(actual, ref64, baseline, ATOL[dtype], f"{what} gradient of input {i}")
