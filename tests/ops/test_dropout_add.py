"""dropout_add (residual ± dropout(x, p)): every backend against the float64 reference
``reference.dropout_add`` with the mask that backend drew, output and the gradients of residual
and x, by the tolerance rule; mixed dtypes give the promoted dtype.

The mask is the backend's own (the triton kernel draws Philox bits, not torch's bernoulli): it is
recovered by running the backend on (0, 1) from a generator in the same state, which must give
the same mask (the op's contract: a generator state reproduces the mask)."""
import pytest
import torch
from hypothesis import strategies as st

from reformer_kernels import functional, reference
from tests.tolerance import assert_within_rule

from .fuzz import ATOL, DTYPES, fuzz


@st.composite
def cases(draw, backend):
    tiny = backend == "triton"
    dtypes = DTYPES[backend]
    return dict(
        seed=draw(st.integers(0, 2**31 - 1)),
        residual_dtype=draw(st.sampled_from(dtypes)),
        x_dtype=draw(st.sampled_from(dtypes)),
        shape=tuple(draw(st.lists(st.integers(0 if not tiny else 1, 40 if tiny else 50), min_size=1, max_size=3))),
        p=draw(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0, exclude_max=True))),
        training=draw(st.booleans()),
        subtract=draw(st.booleans()),
    )


def check(backend, device, case):
    torch.manual_seed(case["seed"])
    shape, p, training, subtract = case["shape"], case["p"], case["training"], case["subtract"]
    residual_dtype, x_dtype = case["residual_dtype"], case["x_dtype"]
    dtype = torch.promote_types(residual_dtype, x_dtype)
    residual, x = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    upstream = (torch.randn(shape),)
    generator_seed = case["seed"] + 1

    def generator():
        return torch.Generator(device).manual_seed(generator_seed)

    kept = functional.dropout_add(
        torch.zeros(shape, device=device, dtype=residual_dtype), torch.ones(shape, device=device, dtype=x_dtype), p,
        training=training, generator=generator(), backend=backend,
    ).cpu() != 0
    if not training or p == 0.0:
        assert kept.all(), "no dropout must keep every element"
    if training and p == 1.0:
        assert not kept.any(), "p = 1 must drop every element"
    if not training or p == 0.0:
        scale = None
    elif p == 1.0:
        scale = torch.zeros(shape, dtype=torch.float64)
    else:
        scale = kept.double() / (1.0 - p)

    def reference_run(residual_dtype, x_dtype):
        leaves = [t.to(device=device).requires_grad_(True) for t in (residual.to(residual_dtype), x.to(x_dtype))]
        out = reference.dropout_add(*leaves, None if scale is None else scale.to(device, x_dtype), subtract=subtract)
        grads = torch.autograd.grad((out * upstream[0].to(device, out.dtype)).sum(), leaves, allow_unused=True, materialize_grads=True)
        return out.detach(), grads

    out64, grads64 = reference_run(torch.float64, torch.float64)
    baseline, baseline_grads = reference_run(residual_dtype, x_dtype)
    leaves = [t.to(device=device).requires_grad_(True) for t in (residual.to(residual_dtype), x.to(x_dtype))]
    out = functional.dropout_add(*leaves, p, training=training, subtract=subtract, generator=generator(), backend=backend)
    grads = torch.autograd.grad((out * upstream[0].to(device, out.dtype)).sum(), leaves, allow_unused=True, materialize_grads=True)
    what = f"dropout_add {case}"
    assert out.dtype == dtype, f"{what}: output is {out.dtype}, expected {dtype}"
    assert_within_rule(out.detach().cpu(), out64.cpu(), baseline.cpu(), ATOL[dtype], f"{what}: out")
    for name, leaf, a, e, b in zip(("residual", "x"), leaves, grads, grads64, baseline_grads):
        assert a.dtype == leaf.dtype, f"{what}: grad {name} is {a.dtype}, expected {leaf.dtype}"
        assert_within_rule(a.cpu(), e.cpu(), b.cpu(), ATOL[leaf.dtype], f"{what}: grad {name}")


def test_fuzz(backend, device):
    fuzz(check, cases, backend, device, "default")


@pytest.mark.slow
def test_fuzz_slow(backend, device):
    fuzz(check, cases, backend, device, "slow")
