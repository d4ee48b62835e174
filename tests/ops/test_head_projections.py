"""head_projections: every backend against the float64 reference, each (B, H, L, d) projection and
the gradients of x and of every weight under random upstream gradients, by the tolerance rule.

Then the C++ op (x W^T straight into dense heads) and its two backward ops on fixed shapes:
float64 and float32 against the reference, gradients (gradcheck and against the reference's),
opcheck, strided inputs, the same bits on any thread count, and clear errors."""
import pytest
import torch
from hypothesis import strategies as st
from torch.library import opcheck

from reformer_kernels import functional, reference
from tests.marks import requires_extension
from tests.tolerance import assert_within_rule

from .fuzz import DTYPES, HEAD_DIMS, TRITON_HEAD_DIMS, compare_with_reference, fuzz_tests
from .inputs import assert_same_bits_on_thread_counts, outputs_and_grads


@st.composite
def cases(draw, backend):
    tiny = backend == "triton"
    return dict(
        seed=draw(st.integers(0, 2**31 - 1)),
        dtype=draw(st.sampled_from(DTYPES[backend])),
        batch=draw(st.sampled_from([1, 2, 3])),
        seq_len=draw(st.integers(1, 24 if tiny else 70)),
        hidden=draw(st.integers(1, 48 if tiny else 130)),
        heads=draw(st.integers(1, 4)),
        head_dim=draw(st.sampled_from(TRITON_HEAD_DIMS if tiny else HEAD_DIMS)),
        n_weights=draw(st.integers(1, 3)),  # LSH layers project qk and v, local ones q, k and v
    )


def check(backend, device, case):
    torch.manual_seed(case["seed"])
    batch, seq_len, hidden, heads, head_dim, n = (case[k] for k in ("batch", "seq_len", "hidden", "heads", "head_dim", "n_weights"))
    x = torch.randn(batch, seq_len, hidden, dtype=torch.float64)
    # nn.Linear's init scale, so that the projections are of order one whatever the hidden size
    weights = [torch.randn(heads * head_dim, hidden, dtype=torch.float64) / hidden**0.5 for _ in range(n)]
    upstream = [torch.randn(batch, heads, seq_len, head_dim) for _ in range(n)]

    def run(name, x, *weights):
        return tuple(functional.head_projections(x, list(weights), heads, backend=name))

    names = [f"projection {i}" for i in range(n)] + ["x"] + [f"weight {i}" for i in range(n)]
    compare_with_reference(run, backend, (x, *weights), case["dtype"], device, upstream, names, f"head_projections {case}")


test_fuzz, test_fuzz_slow = fuzz_tests(check, cases)


OPS = torch.ops.reformer_kernels

# (batch, seq_len, hidden, heads, head_dim, n_weights): whole register strips and ragged ones in
# every dimension (hidden and head_dim not multiples of 16, seq_len not of 8 or 64), one head, one
# position, three weights (local attention's q, k, v).
SHAPES = [
    (1, 100, 256, 4, 64, 2),
    (2, 37, 20, 3, 20, 2),
    (3, 129, 33, 2, 7, 3),
    (1, 1, 8, 1, 16, 1),
    (2, 200, 64, 2, 128, 3),
]


def fixed_inputs(batch, seq_len, hidden, heads, head_dim, n_weights, dtype=torch.float64):
    x = torch.randn(batch, seq_len, hidden, dtype=dtype)
    weights = [torch.randn(heads * head_dim, hidden, dtype=dtype) / hidden**0.5 for _ in range(n_weights)]
    upstream = [torch.randn(batch, heads, seq_len, head_dim, dtype=dtype) for _ in range(n_weights)]
    return x, weights, upstream


def projections(backend, heads):
    return lambda x, *weights: tuple(functional.head_projections(x, list(weights), heads, backend=backend))


@requires_extension
@pytest.mark.parametrize("shape", SHAPES)
def test_cpu_float64_matches_reference(shape):
    heads = shape[3]
    x, weights, upstream = fixed_inputs(*shape)
    ours = outputs_and_grads(projections("cpu", heads), [x, *weights], upstream)
    expected = outputs_and_grads(projections("reference", heads), [x, *weights], upstream)
    for got, want in zip(ours, expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for y in ours[: len(weights)]:
        assert y.is_contiguous()  # each head's rows dense: what the attention kernels want


@requires_extension
@pytest.mark.parametrize("shape", SHAPES[:3])
def test_cpu_float32_within_tolerance_rule(shape):
    heads = shape[3]
    x, weights, upstream = fixed_inputs(*shape)
    expected = outputs_and_grads(projections("reference", heads), [x, *weights], upstream)
    inputs32 = [x.float(), *(w.float() for w in weights)]
    upstream32 = [u.float() for u in upstream]
    ours = outputs_and_grads(projections("cpu", heads), inputs32, upstream32)
    baseline = outputs_and_grads(projections("reference", heads), inputs32, upstream32)
    for i, (got, want, torch32) in enumerate(zip(ours, expected, baseline)):
        assert got.dtype == torch.float32
        assert_within_rule(got, want, torch32, atol=1e-5, what=f"output/gradient {i}")


@requires_extension
def test_cpu_gradcheck():
    x, weights, _ = fixed_inputs(2, 19, 12, 2, 5, 2)
    leaves = [t.requires_grad_() for t in (x, *weights)]
    assert torch.autograd.gradcheck(projections("cpu", 2), leaves)


@requires_extension
def test_cpu_only_the_gradients_asked_for():
    x, weights, upstream = fixed_inputs(1, 30, 16, 2, 8, 2)
    weights = [w.requires_grad_() for w in weights]
    outputs = functional.head_projections(x, weights, 2, backend="cpu")
    grads = torch.autograd.grad(sum((y * u).sum() for y, u in zip(outputs, upstream)), weights)
    expected = [u.transpose(1, 2).reshape(30, 16).t() @ x[0] for u in upstream]
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@requires_extension
def test_cpu_strided_inputs_read_in_place():
    """x as a transposed view, gradients as head-split views (rows contiguous, other strides not)."""
    x, weights, _ = fixed_inputs(2, 40, 24, 3, 8, 2)
    x_view = x.transpose(0, 1).contiguous().transpose(0, 1)
    assert not x_view.is_contiguous()
    for got, want in zip(OPS.head_projections(x_view, weights, 3), reference.head_projections(x, weights, 3)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    split = [torch.randn(2, 40, 24, dtype=torch.float64).unflatten(-1, (3, 8)).transpose(1, 2) for _ in weights]
    dense = [g.contiguous() for g in split]
    assert torch.equal(OPS.head_projections_grad_input(split, weights), OPS.head_projections_grad_input(dense, weights))
    for a, b in zip(OPS.head_projections_grad_weights(split, x), OPS.head_projections_grad_weights(dense, x)):
        assert torch.equal(a, b)


@requires_extension
def test_cpu_same_bits_on_any_thread_count():
    x, weights, upstream = fixed_inputs(2, 300, 48, 2, 24, 2, dtype=torch.float32)
    assert_same_bits_on_thread_counts(lambda: outputs_and_grads(projections("cpu", 2), [x, *weights], upstream), counts=(1, 2, 3))


@requires_extension
@pytest.mark.parametrize("seq_len", [0, 5])
def test_cpu_opcheck(seq_len):
    x, weights, upstream = fixed_inputs(2, seq_len, 12, 3, 4, 2)
    opcheck(OPS.head_projections.default, (x, weights, 3))
    opcheck(OPS.head_projections.default, (x.requires_grad_(), [w.requires_grad_() for w in weights], 3))
    opcheck(OPS.head_projections_grad_input.default, (upstream, [w.detach() for w in weights]))
    opcheck(OPS.head_projections_grad_weights.default, (upstream, x.detach()))


@requires_extension
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_low_precision_takes_torch_matmul(dtype):
    x, weights, _ = fixed_inputs(1, 16, 8, 2, 4, 2)
    x, weights = x.to(dtype), [w.to(dtype) for w in weights]
    for got, want in zip(functional.head_projections(x, weights, 2, backend="cpu"), reference.head_projections(x, weights, 2)):
        assert torch.equal(got, want)


@requires_extension
def test_cpu_autocast_projects_in_the_autocast_dtype():
    """Under torch.autocast float32 inputs are projected as nn.Linear projects them: in bf16, the
    same bits as the reference (torch's matmul under autocast), while x and the weights keep
    float32 gradients; float64 is left to the C++ kernels, as autocast leaves it."""
    x, weights, upstream = fixed_inputs(2, 40, 32, 2, 16, 2, dtype=torch.float32)
    results = {}
    for backend in ("cpu", "reference"):
        leaves = [t.detach().requires_grad_() for t in (x, *weights)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = functional.head_projections(leaves[0], leaves[1:], 2, backend=backend)
        torch.autograd.backward(outputs, [u.bfloat16() for u in upstream])
        results[backend] = outputs, [t.grad for t in leaves]
    (outputs, grads), (want_outputs, want_grads) = results["cpu"], results["reference"]
    assert all(out.dtype == torch.bfloat16 for out in outputs)
    assert all(torch.equal(got, want) for got, want in zip(outputs, want_outputs))
    assert all(g.dtype == torch.float32 and torch.equal(g, w) for g, w in zip(grads, want_grads))
    x64, weights64 = x.double(), [w.double() for w in weights]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = functional.head_projections(x64, weights64, 2, backend="cpu")
    want = OPS.head_projections(x64, weights64, 2)
    assert all(torch.equal(got, w) for got, w in zip(outputs, want))


@requires_extension
def test_functional_errors_name_the_argument():
    x, weights, _ = fixed_inputs(1, 8, 12, 2, 3, 2)
    with pytest.raises(ValueError, match=r"x must be \(batch, seq_len, hidden\)"):
        functional.head_projections(x[0], weights, 2)
    with pytest.raises(TypeError, match="weights must be a non-empty list"):
        functional.head_projections(x, [], 2)
    with pytest.raises(ValueError, match=r"weights\[1\] must be \(heads \* head_dim, 12\)"):
        functional.head_projections(x, [weights[0], weights[1][:, :5]], 2)
    with pytest.raises(TypeError, match=r"weights\[0\] is torch.float32 but x is torch.float64"):
        functional.head_projections(x, [weights[0].float()], 2)
    with pytest.raises(ValueError, match="do not split into heads = 4"):
        functional.head_projections(x, weights, 4)
    with pytest.raises(TypeError, match="heads must be an int"):
        functional.head_projections(x, weights, 2.0)


@requires_extension
def test_cpu_op_errors_name_the_argument():
    x, weights, upstream = fixed_inputs(1, 8, 12, 2, 3, 2)
    with pytest.raises(TypeError, match="x must be float32 or float64, got Half"):
        OPS.head_projections(x.half(), [w.half() for w in weights], 2)
    with pytest.raises(TypeError, match=r"weights\[1\] is Float but the others are Double"):
        OPS.head_projections(x, [weights[0], weights[1].float()], 2)
    with pytest.raises(ValueError, match="do not split into 4 heads"):
        OPS.head_projections(x, weights, 4)
    with pytest.raises(ValueError, match=r"x must be \(batch, seq_len, 12\)"):
        OPS.head_projections(x[..., :5], weights, 2)
    with pytest.raises(ValueError, match="2 grads for 1 weights"):
        OPS.head_projections_grad_input(upstream, weights[:1])
    with pytest.raises(ValueError, match="grads have head_dim 3 but the weights split into 2 heads of 6"):
        OPS.head_projections_grad_input(upstream, [torch.randn(12, 12, dtype=torch.float64)] * 2)
    with pytest.raises(ValueError, match=r"grads\[1\] must be \(batch, heads, seq_len, head_dim\)"):
        OPS.head_projections_grad_weights([upstream[0], upstream[1][:, :1]], x)
    with pytest.raises(ValueError, match=r"x must be \(batch, seq_len, hidden\) = \(1, 8, hidden\)"):
        OPS.head_projections_grad_weights(upstream, x[:, :4])
