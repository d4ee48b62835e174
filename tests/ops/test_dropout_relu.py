"""dropout_relu (relu(dropout(x + bias, p)), the feed-forward's bias, dropout and activation): every
backend against the float64 reference relu((x + bias) * mask) with the mask that the generator's
key gives (``reference.dropout_keep``), output and gradients by the tolerance rule; then
bit-for-bit equality with relu(functional.dropout(x + bias)) from the same generator state (the op
changes no mask and no value), non-finite inputs, biases across the kernel's blocks, the ops'
torch.library checks and schemas, what the backward saves, and functional's errors."""

import pytest
import torch
from hypothesis import strategies as st

from reformer_kernels import backends, functional, reference
from reformer_kernels.ops.dropout_add import philox_seed_offset
from reformer_kernels.ops.dropout_relu import triton_kernels as triton_dropout_relu_kernels
from tests.marks import requires_extension
from tests.tolerance import assert_within_rule

from .fuzz import ATOL, DTYPES, fuzz_tests
from .inputs import assert_same_schema, generator_at, rng_state, triton_only


@st.composite
def cases(draw, backend):
    tiny = backend == "triton"
    return dict(
        seed=draw(st.integers(0, 2**31 - 1)),
        dtype=draw(st.sampled_from(DTYPES[backend])),
        shape=tuple(draw(st.lists(st.integers(0 if not tiny else 1, 40 if tiny else 50), min_size=1, max_size=3))),
        p=draw(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0, exclude_max=True))),
        training=draw(st.booleans()),
        bias=draw(st.booleans()),
    )


def check(backend, device, case):
    torch.manual_seed(case["seed"])
    shape, p, training, dtype = case["shape"], case["p"], case["training"], case["dtype"]
    x = torch.randn(shape, dtype=torch.float64)
    bias = torch.randn(shape[-1:], dtype=torch.float64) if case["bias"] else None
    upstream = torch.randn(shape, dtype=torch.float64)

    def generator():
        return torch.Generator(device).manual_seed(case["seed"] + 1)

    if not training or p == 0.0:
        scale = torch.ones(shape, dtype=torch.float64)
    else:
        keep = reference.dropout_keep(shape, p, *philox_seed_offset(device, generator()), device).cpu()
        scale = keep.double() / (1.0 - p) if p < 1.0 else torch.zeros(shape, dtype=torch.float64)

    def leaves(dtype):
        return [t.to(device, dtype).requires_grad_(True) for t in (x, bias) if t is not None]

    def reference_run(dtype):
        inputs = leaves(dtype)
        biased = inputs[0] if bias is None else inputs[0] + inputs[1]
        out = torch.relu(biased * scale.to(device, dtype))
        grads = torch.autograd.grad((out * upstream.to(device, dtype)).sum(), inputs)
        return out.detach(), grads

    out64, grads64 = reference_run(torch.float64)
    baseline, baseline_grads = reference_run(dtype)
    inputs = leaves(dtype)
    out = functional.dropout_relu(inputs[0], p, bias=inputs[1] if bias is not None else None, training=training,
                                  generator=generator(), backend=backend)
    grads = torch.autograd.grad((out * upstream.to(device, dtype)).sum(), inputs)
    what = f"dropout_relu {case}"
    assert out.dtype == dtype, what
    assert_within_rule(out.detach().cpu(), out64.cpu(), baseline.cpu(), ATOL[dtype], f"{what}: out")
    for name, grad, grad64, baseline_grad in zip(("x", "bias"), grads, grads64, baseline_grads):
        assert grad.dtype == dtype, what
        # bias's gradient sums over every row: the rule's atol scales with their number
        atol = ATOL[dtype] * (1 if name == "x" else max(1, x.numel() // max(1, x.shape[-1])))
        assert_within_rule(grad.cpu(), grad64.cpu(), baseline_grad.cpu(), atol, f"{what}: grad {name}")


test_fuzz, test_fuzz_slow = fuzz_tests(check, cases)


SHAPE = (3, 37, 29)  # 3219 elements: four Triton blocks, the last one partial


# ----------------------------------------------------------------------------- every backend
@pytest.mark.parametrize("p", [0.3, 1.0])
@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
def test_is_relu_of_dropout_bit_for_bit_from_the_same_generator_state(backend, device, p, with_bias):
    """The fused op changes neither the mask nor a value: relu(functional.dropout(x + bias)) drawn
    from the same state, output and gradients bit for bit, and it advances the generator as dropout
    does."""
    x = torch.randn(SHAPE, device=device, requires_grad=True)
    bias = torch.randn(SHAPE[-1], device=device, requires_grad=True) if with_bias else None
    inputs = [x] if bias is None else [x, bias]
    upstream = torch.randn(SHAPE, device=device)
    state = rng_state(device)
    out = functional.dropout_relu(x, p, bias=bias, backend=backend)
    after = rng_state(device)
    grads = torch.autograd.grad(out, inputs, upstream)
    with generator_at(state, device):
        expected = torch.relu(functional.dropout(x if bias is None else x + bias, p, backend=backend))
        assert torch.equal(rng_state(device), after)
    expected_grads = torch.autograd.grad(expected, inputs, upstream)
    assert out.dtype == x.dtype and torch.equal(out, expected)
    assert torch.equal(grads[0], expected_grads[0])
    if bias is not None:  # summed over rows in another order than autograd's: to rounding
        torch.testing.assert_close(grads[1], expected_grads[1])


def test_no_dropout_is_relu_and_draws_nothing(backend, device):
    x = torch.randn(SHAPE, device=device, requires_grad=True)
    bias = torch.randn(SHAPE[-1], device=device, requires_grad=True)
    upstream = torch.randn(SHAPE, device=device)
    state = rng_state(device)
    for kwargs in (dict(p=0.0), dict(p=0.5, training=False)):
        assert torch.equal(functional.dropout_relu(x, backend=backend, **kwargs), torch.relu(x))
        out = functional.dropout_relu(x, bias=bias, backend=backend, **kwargs)
        expected = torch.relu(x + bias)
        assert torch.equal(out, expected)
        grads, expected_grads = (torch.autograd.grad(y, (x, bias), upstream) for y in (out, expected))
        assert torch.equal(grads[0], expected_grads[0])
        torch.testing.assert_close(grads[1], expected_grads[1])  # summed over rows in another order
    assert torch.equal(rng_state(device), state)


def test_has_an_implementation_on_every_backend_but_cuda():
    ops = backends.implemented_ops()
    assert all("dropout_relu" in ops[backend] for backend in ("cpu", "reference", "triton"))


# ----------------------------------------------------------------------------- the C++ ops
@requires_extension
@pytest.mark.parametrize("seed, philox_offset", [(7, 16), (-(2**62) - 3, 2**35 + 4)])
def test_cpu_op_is_the_reference_across_blocks_with_non_finite_values(seed, philox_offset):
    """The C++ kernel on a length that ends inside a 4096-element task and a Philox block, keys and
    offsets with high bits set, rows of bias that straddle the tasks, gives relu((x + bias) * mask)
    bit for bit; NaN stays NaN (kept or dropped), inf is kept or cut as relu and the mask say; the
    backward is grad * (1 / (1 - p)) where out > 0."""
    p, shape = 0.3, (3, 2777)
    x = torch.randn(shape, dtype=torch.float64)
    x[0, :5] = torch.tensor([float("inf"), float("-inf"), float("nan"), -0.0, 0.0])
    mask = reference.dropout_keep(shape, p, seed, philox_offset).double() / (1.0 - p)
    out = torch.ops.reformer_kernels.dropout_relu(x, None, p, seed, philox_offset)
    torch.testing.assert_close(out, torch.relu(x * mask), rtol=0, atol=0, equal_nan=True)
    bias = torch.randn(shape[-1], dtype=torch.float64)
    biased = torch.ops.reformer_kernels.dropout_relu(x, bias, p, seed, philox_offset)
    torch.testing.assert_close(biased, torch.relu((x + bias) * mask), rtol=0, atol=0, equal_nan=True)
    grad_out = torch.randn(shape, dtype=torch.float64)
    grad_x = torch.ops.reformer_kernels.dropout_relu_backward(grad_out, out, p)
    torch.testing.assert_close(grad_x, torch.where(out > 0, grad_out * (1.0 / (1.0 - p)), 0.0), rtol=0, atol=0)


@requires_extension
def test_cpu_opcheck():
    x = torch.randn(4, 33, requires_grad=True)
    bias = torch.randn(33, requires_grad=True)
    torch.library.opcheck(torch.ops.reformer_kernels.dropout_relu.default, (x, None, 0.25, 7, 16))
    torch.library.opcheck(torch.ops.reformer_kernels.dropout_relu.default, (x, bias, 0.25, 7, 16))
    torch.library.opcheck(torch.ops.reformer_kernels.dropout_relu.default,
                          (x.detach().bfloat16().requires_grad_(), bias.detach().bfloat16(), 0.25, -7, 2**33))
    out = torch.relu(torch.randn(4, 33, dtype=torch.float64))
    torch.library.opcheck(torch.ops.reformer_kernels.dropout_relu_backward.default, (torch.randn(4, 33, dtype=torch.float64), out, 0.25))


@requires_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cpu_in_place_backward_is_the_backward_written_over_its_gradient(dtype):
    out = torch.relu(torch.randn(3, 5000, dtype=torch.float64)).to(dtype)  # several parallel blocks
    grad = torch.randn(3, 5000, dtype=torch.float64).to(dtype)
    expected = torch.ops.reformer_kernels.dropout_relu_backward(grad, out, 0.25)
    torch.ops.reformer_kernels.dropout_relu_backward_(grad, out, 0.25)
    assert torch.equal(grad, expected)
    torch.library.opcheck(torch.ops.reformer_kernels.dropout_relu_backward_.default,
                          (torch.randn(4, 33).to(dtype), torch.relu(torch.randn(4, 33)).to(dtype), 0.25))


@requires_extension
@pytest.mark.parametrize(
    "grad, error, match",
    [
        (torch.randn(9, 4).t(), ValueError, "grad must be contiguous"),
        (torch.randn(4, 9, dtype=torch.float64), TypeError, r"grad must have the dtype of out \(Float\)"),
        (torch.randn(4, 8), ValueError, "grad must have the shape of out"),
    ],
)
def test_cpu_in_place_backward_rejects_a_gradient_it_cannot_write(grad, error, match):
    with pytest.raises(error, match=match):
        torch.ops.reformer_kernels.dropout_relu_backward_(grad, torch.randn(4, 9), 0.25)


@requires_extension
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_grad_in_place_gives_the_same_gradients_in_the_buffer_it_was_handed(p):
    """The feed-forward's case: the output consumed by one matrix product, whose backward hands
    dropout_relu a fresh gradient; with grad_in_place the input's gradient is that buffer."""
    x = torch.randn(64, 48, requires_grad=True)
    bias = torch.randn(48, requires_grad=True)
    weight = torch.randn(16, 48)
    upstream = torch.randn(64, 16)
    grads, handed = {}, []
    for in_place in (False, True):
        torch.manual_seed(5)
        out = functional.dropout_relu(x, p, bias=bias, grad_in_place=in_place, backend="cpu")
        if in_place:
            out.register_hook(lambda g: handed.append(g.data_ptr()))
        grads[in_place] = torch.autograd.grad(out @ weight.t(), (x, bias), upstream)
    assert torch.equal(grads[True][0], grads[False][0]) and torch.equal(grads[True][1], grads[False][1])
    assert grads[True][0].data_ptr() == handed[0]


@requires_extension
def test_cpu_saves_only_its_output_for_backward():
    """The output relu would keep anyway, no mask: the backward reads the mask off it."""
    x = torch.randn(64, 64, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = functional.dropout_relu(x, 0.5, bias=torch.randn(64, requires_grad=True), backend="cpu")
    assert len(saved) == 1 and saved[0] is out


def test_triton_ops_take_the_schemas_of_the_compiled_ops():
    assert_same_schema("dropout_relu", triton_dropout_relu_kernels.dropout_relu_op)
    assert_same_schema("dropout_relu_backward", triton_dropout_relu_kernels.dropout_relu_backward_op)


@triton_only
def test_triton_opcheck(backend, device):
    x = torch.randn(4, 33, device=device, requires_grad=True)
    bias = torch.randn(33, device=device, requires_grad=True)
    torch.library.opcheck(triton_dropout_relu_kernels.dropout_relu_op, (x, None, 0.25, 7, 16))
    torch.library.opcheck(triton_dropout_relu_kernels.dropout_relu_op, (x, bias, 0.25, 7, 16))
    torch.library.opcheck(triton_dropout_relu_kernels.dropout_relu_op,
                          (x.detach().half().requires_grad_(), bias.detach().half(), 0.25, -7, 2**33))


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(p=1.5), ValueError, r"dropout_relu: p must lie in \[0, 1\], got 1.5"),
        (dict(p=None), TypeError, "p must be a float, got NoneType"),
        (dict(x=[1.0]), TypeError, "dropout_relu: x must be a torch.Tensor"),
        (dict(x=torch.ones(4, 9, dtype=torch.long)), TypeError, "x must be float16, bfloat16, float32 or float64"),
        (dict(training="yes"), TypeError, "training must be True or False"),
        (dict(generator=0), TypeError, "generator must be a torch.Generator or None"),
        (dict(grad_in_place=1), TypeError, "grad_in_place must be True or False"),
        (dict(bias=[1.0]), TypeError, "dropout_relu: bias must be a torch.Tensor or None"),
        (dict(bias=torch.randn(8)), ValueError, r"bias must have shape \(x.shape\[-1\],\) = \(9,\), got \(8,\)"),
        (dict(bias=torch.randn(9).double()), TypeError, "bias is torch.float64 but x is torch.float32"),
        (dict(bias=torch.randn(9, device="meta")), ValueError, "bias is on meta but x is on cpu"),
        (dict(backend="bogus"), ValueError, "'bogus' is not a backend"),
    ],
)
def test_rejects_bad_arguments(change, error, match):
    arguments = {**dict(x=torch.randn(4, 9), p=0.1), **change}
    with pytest.raises(error, match=match):
        functional.dropout_relu(**arguments)
