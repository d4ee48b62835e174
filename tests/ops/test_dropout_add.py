"""dropout_add (residual ± dropout(x, p)): every backend against the float64 reference
``reference.dropout_add`` with the mask that backend drew, output and the gradients of residual
and x, by the tolerance rule; mixed dtypes give the promoted dtype.

The mask is the backend's own: it is recovered by running the backend on (0, 1) from a generator
in the same state, which must give the same mask (the op's contract: a generator state
reproduces the mask).

Then fixed cases: no dropout, p = 1 and explicit generators on every backend; every backend draws
the reference's Philox mask (``reference.dropout_keep``) from the key it takes of the generator,
bit for bit, at the rate 1 - p; the C++ op's torch.library checks; the Triton kernel against the
float64 reference with the mask it drew, its determinism, torch.library's checks, errors, and the
reversible backward it serves; functional's errors."""

import pytest
import torch
from hypothesis import strategies as st

from reformer_kernels import backends, functional, nn, reference
from reformer_kernels.ops.dropout_add import PHILOX_OFFSET_STEP, philox_seed_offset
from reformer_kernels.ops.dropout_add import triton_kernels as triton_dropout_add_kernels
from tests.marks import requires_extension
from tests.tolerance import assert_within_rule

from . import inputs
from .fuzz import ATOL, DTYPES, fuzz_tests
from .inputs import assert_same_schema, generator_at, rng_state, triton_only


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


test_fuzz, test_fuzz_slow = fuzz_tests(check, cases)


SHAPE = (3, 37, 29)  # 3219 elements: four Triton blocks, the last one partial


# ----------------------------------------------------------------------------- every backend
@pytest.mark.parametrize("subtract", [False, True])
def test_no_dropout_is_the_exact_sum_and_draws_nothing(backend, device, subtract):
    residual, x = torch.randn(SHAPE, device=device), torch.randn(SHAPE, device=device)
    expected = residual - x if subtract else residual + x
    state = rng_state(device)
    for kwargs in (dict(p=0.0), dict(p=0.5, training=False)):
        assert torch.equal(functional.dropout_add(residual, x, subtract=subtract, backend=backend, **kwargs), expected)
    assert torch.equal(rng_state(device), state)


@pytest.mark.parametrize("subtract", [False, True])
def test_p_one_gives_the_residual_and_no_gradient_to_x(backend, device, subtract):
    residual = torch.randn(SHAPE, device=device)
    x = torch.randn(SHAPE, device=device, requires_grad=True)
    out = functional.dropout_add(residual, x, 1.0, subtract=subtract, backend=backend)
    assert torch.equal(out, residual)
    (grad_x,) = torch.autograd.grad(out, x, torch.ones_like(out))
    assert torch.equal(grad_x, torch.zeros_like(x))


def test_an_explicit_generator_leaves_the_default_one_alone(backend, device):
    residual, x = torch.zeros(SHAPE, device=device), torch.ones(SHAPE, device=device)
    state = rng_state(device)
    masks = [functional.dropout_add(residual, x, 0.5, generator=torch.Generator(device).manual_seed(3), backend=backend)
             for _ in range(2)]
    assert torch.equal(*masks)
    assert torch.equal(rng_state(device), state)


@pytest.mark.parametrize("subtract", [False, True])
def test_draws_the_reference_philox_mask_from_its_key(backend, device, subtract):
    """Every backend gives residual ± x * keep / (1 - p) bit for bit, keep the reference's Philox
    mask under the key that the same generator state yields: the backends draw the same bits."""
    p = 0.25
    residual, x = torch.randn(SHAPE, device=device), torch.randn(SHAPE, device=device)
    torch.manual_seed(3)
    if device.type == "cuda":
        torch.cuda.manual_seed(3)
    out = functional.dropout_add(residual, x, p, subtract=subtract, backend=backend)
    torch.manual_seed(3)
    if device.type == "cuda":
        torch.cuda.manual_seed(3)
    keep = reference.dropout_keep(SHAPE, p, *philox_seed_offset(device), device)
    dropped = x * (keep.float() * (1.0 / (1.0 - p)))
    assert torch.equal(out, residual - dropped if subtract else residual + dropped)


def test_dropout_alone_is_dropout_add_without_the_residual(backend, device):
    """functional.dropout: the same mask as dropout_add from the same generator state, x's dtype,
    and its gradient the upstream gradient through that mask."""
    x = torch.randn(SHAPE, device=device, requires_grad=True)
    state = rng_state(device)
    out = functional.dropout(x, 0.4, backend=backend)
    with generator_at(state, device):
        expected = functional.dropout_add(torch.zeros(SHAPE, device=device), x, 0.4, backend=backend)
    assert out.dtype == x.dtype and torch.equal(out, expected)
    (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
    assert torch.equal(grad, (out != 0).float() / 0.6)
    assert torch.equal(functional.dropout(x, 0.4, training=False, backend=backend), x)
    with pytest.raises(TypeError, match="dropout: x must be a torch.Tensor"):
        functional.dropout([1.0], 0.4)
    with pytest.raises(ValueError, match=r"dropout: p must lie in \[0, 1\], got 2"):
        functional.dropout(x, 2.0)


def test_kept_fraction_is_one_minus_p(backend, device):
    """2^18 draws under a fixed seed: the kept fraction within 5 binomial standard deviations of
    1 - p, overall and for each of the four Philox output words (element i takes word i % 4), and
    neighbours independent (P(both kept) = (1 - p)^2)."""
    p, n = 0.3, 2**18
    torch.manual_seed(0)
    kept = functional.dropout_add(torch.zeros(n, device=device), torch.ones(n, device=device), p, backend=backend) != 0
    for sample in (kept, *(kept[word::4] for word in range(4))):
        bound = 5 * (p * (1 - p) / sample.numel()) ** 0.5
        assert abs(sample.float().mean().item() - (1 - p)) < bound
    both = (kept[1:] & kept[:-1]).float().mean().item()
    assert abs(both - (1 - p) ** 2) < 5 * ((1 - p) ** 2 * (1 - (1 - p) ** 2) / n) ** 0.5



@requires_extension
@pytest.mark.parametrize("residual", [True, False], ids=["dropout_add", "dropout"])
@pytest.mark.parametrize("seed, philox_offset", [(7, 16), (-(2**62) - 3, 2**35 + 4)])
def test_cpu_op_is_the_reference_across_blocks_with_non_finite_values(residual, seed, philox_offset):
    """The C++ kernel, which draws 64 words per Philox block (AVX-512) into 4096-element tasks, gives
    the reference's x * mask bit for bit on a length that ends inside both, for keys and offsets
    with high bits set; inf and NaN in x come out as in the reference (NaN where dropped)."""
    p, shape = 0.3, (3, 2777)  # 8331 elements: three tasks, the last partial, and a partial block
    x = torch.randn(shape, dtype=torch.float64)
    x[0, :4] = torch.tensor([float("inf"), float("-inf"), float("nan"), -0.0])
    base = torch.randn(shape, dtype=torch.float64) if residual else None
    mask = reference.dropout_keep(shape, p, seed, philox_offset).double() / (1.0 - p)
    for subtract in (False, True):
        out = torch.ops.reformer_kernels.dropout_add(base, x, p, seed, philox_offset, subtract, torch.float64)
        torch.testing.assert_close(out, reference.dropout_add(base, x, mask, subtract=subtract), rtol=0, atol=0, equal_nan=True)

@requires_extension
def test_cpu_opcheck():
    residual, x = (torch.randn(4, 33, requires_grad=True) for _ in range(2))
    op = torch.ops.reformer_kernels.dropout_add.default
    torch.library.opcheck(op, (residual, x, 0.25, 7, 16, False, torch.float32))
    torch.library.opcheck(op, (residual, x.detach().bfloat16().requires_grad_(), 0.25, -7, 2**33, True, torch.float32))
    torch.library.opcheck(op, (None, x, 0.25, 7, 16, True, torch.float64))


def test_triton_op_takes_the_schema_of_the_compiled_op():
    assert_same_schema("dropout_add", triton_dropout_add_kernels.dropout_add_op)


@requires_extension
def test_cpu_saves_no_mask_for_backward():
    """The fused op keeps two ints for its backward, no tensor: the mask is regenerated."""
    residual, x = (torch.randn(64, 64, requires_grad=True) for _ in range(2))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        functional.dropout_add(residual, x, 0.5, backend="cpu")
    assert saved == []


def test_promotes_mixed_dtypes():
    """Under autocast the residual stream stays fp32 while a sub-layer returns bf16."""
    out = functional.dropout_add(torch.randn(3, 4), torch.randn(3, 4, dtype=torch.bfloat16), 0.1, backend="reference")
    assert out.dtype == torch.float32


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(p=1.5), ValueError, r"dropout_add: p must lie in \[0, 1\], got 1.5"),
        (dict(p=-0.1), ValueError, r"p must lie in \[0, 1\], got -0.1"),
        (dict(p=None), TypeError, "p must be a float, got NoneType"),
        (dict(x=torch.randn(4, 8)), ValueError, r"x has shape \(4, 8\) but residual has \(4, 9\)"),
        (dict(x=torch.randn(4, 9, device="meta")), ValueError, "x is on meta but residual is on cpu"),
        (dict(x=torch.ones(4, 9, dtype=torch.long)), TypeError, "x must be float16, bfloat16, float32 or float64"),
        (dict(residual=[1.0]), TypeError, "residual must be a torch.Tensor"),
        (dict(subtract="yes"), TypeError, "subtract must be True or False"),
        (dict(generator=0), TypeError, "generator must be a torch.Generator or None"),
        (dict(backend="bogus"), ValueError, "'bogus' is not a backend"),
        (dict(backend="cuda"), ValueError, "backend 'cuda'"),
    ],
)
def test_rejects_bad_arguments(change, error, match):
    arguments = {**dict(residual=torch.randn(4, 9), x=torch.randn(4, 9), p=0.1), **change}
    with pytest.raises(error, match=match):
        functional.dropout_add(**arguments)


def test_has_an_implementation_on_every_backend_but_cuda():
    ops = backends.implemented_ops()
    assert all("dropout_add" in ops[backend] for backend in ("cpu", "reference", "triton"))


# ----------------------------------------------------------------------------- the Triton kernel
def triton_dropout_add(residual, x, p, **kwargs):
    return functional.dropout_add(residual, x, p, backend="triton", **kwargs)


def drawn_scale(state, shape, p, device):
    """The kernel's mask times 1 / (1 - p) in float64, recovered from the kernel itself: what
    dropout_add(0, 1) draws from the generator at ``state``."""
    with generator_at(state, device):
        keep = triton_dropout_add(torch.zeros(shape, device=device), torch.ones(shape, device=device), p) != 0
    return keep.double() / (1 - p)


@triton_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("subtract", [False, True])
def test_triton_matches_float64_reference_with_the_kernels_own_mask(backend, device, dtype, subtract):
    p = 0.3
    residual64, x64, weights = (torch.randn(SHAPE, device=device, dtype=torch.float64) for _ in range(3))
    state = rng_state(device)
    scale = drawn_scale(state, SHAPE, p, device)
    assert 0 < scale.count_nonzero() < scale.numel()

    def reference_run(dtype):
        residual, x = (t.to(dtype).requires_grad_() for t in (residual64, x64))
        out = reference.dropout_add(residual, x, scale.to(dtype), subtract=subtract)
        return out, torch.autograd.grad(out, (residual, x), weights.to(dtype))

    residual, x = (t.to(dtype).requires_grad_() for t in (residual64, x64))
    with generator_at(state, device):
        out = triton_dropout_add(residual, x, p, subtract=subtract)
    grads = torch.autograd.grad(out, (residual, x), weights.to(dtype))
    out64, grads64 = reference_run(torch.float64)
    baseline, baseline_grads = reference_run(dtype)
    assert out.dtype == dtype
    assert_within_rule(out, out64, baseline, inputs.ATOL[dtype], "output")
    for name, actual, ref64, base in zip(("residual", "x"), grads, grads64, baseline_grads):
        assert actual.dtype == dtype
        assert_within_rule(actual, ref64, base, inputs.ATOL[dtype], f"gradient of {name}")


@triton_only
def test_triton_mixed_dtypes_give_the_promoted_output_and_each_inputs_gradient_dtype(backend, device):
    """Under autocast the residual stream stays fp32 while a sub-layer returns fp16."""
    p = 0.2
    residual = torch.randn(SHAPE, device=device, requires_grad=True)
    x = torch.randn(SHAPE, device=device, dtype=torch.float16, requires_grad=True)
    state = rng_state(device)
    scale = drawn_scale(state, SHAPE, p, device)
    with generator_at(state, device):
        out = triton_dropout_add(residual, x, p)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), residual.double() + x.double() * scale)
    grad_residual, grad_x = torch.autograd.grad(out, (residual, x), torch.ones_like(out))
    assert grad_residual.dtype == torch.float32 and grad_x.dtype == torch.float16
    torch.testing.assert_close(grad_x.double(), scale, atol=1e-3, rtol=1e-3)


@triton_only
def test_triton_same_seed_and_offset_give_the_same_mask_and_others_do_not(backend, device):
    zeros, ones = torch.zeros(SHAPE, device=device), torch.ones(SHAPE, device=device)

    def mask(seed, philox_offset):
        return triton_dropout_add_kernels.dropout_add_op(zeros, ones, 0.5, seed, philox_offset, False, torch.float32) != 0

    first = mask(12345, 8)
    assert torch.equal(first, mask(12345, 8))
    # int64 seeds (a uint64 key in two's complement) and offsets past 2^32, whose counter needs both words
    for seed, philox_offset in [(12345, 12), (54321, 8), (-2**62, 8), (12345, 2**40)]:
        other = mask(seed, philox_offset)
        assert torch.equal(other, mask(seed, philox_offset))
        assert 0.4 < (other != first).float().mean() < 0.6, (seed, philox_offset)


@triton_only
def test_triton_draws_from_the_default_generator_and_advances_it(backend, device):
    residual, x = torch.zeros(SHAPE, device=device), torch.ones(SHAPE, device=device)
    state = rng_state(device)
    first = triton_dropout_add(residual, x, 0.5)
    assert not torch.equal(rng_state(device), state)
    assert not torch.equal(triton_dropout_add(residual, x, 0.5), first), "the next call must draw a new mask"
    with generator_at(state, device):
        assert torch.equal(triton_dropout_add(residual, x, 0.5), first), "a restored generator must give the mask again"
    if device.type == "cuda":
        generator = torch.cuda.default_generators[device.index or 0]
        offset = generator.get_offset()
        triton_dropout_add(residual, x, 0.5)
        assert generator.get_offset() == offset + PHILOX_OFFSET_STEP


@triton_only
def test_triton_empty_tensors(backend, device):
    residual, x = (torch.zeros(0, 5, device=device, requires_grad=True) for _ in range(2))
    out = triton_dropout_add(residual, x, 0.5)
    assert out.shape == (0, 5)
    out.sum().backward()
    assert x.grad.shape == (0, 5)


@triton_only
def test_triton_opcheck(backend, device):
    residual, x = (torch.randn(4, 33, device=device, requires_grad=True) for _ in range(2))
    op = triton_dropout_add_kernels.dropout_add_op
    torch.library.opcheck(op, (residual, x, 0.25, 7, 16, False, torch.float32))
    torch.library.opcheck(op, (residual, x.detach().half().requires_grad_(), 0.25, -7, 2**33, True, torch.float32))
    torch.library.opcheck(op, (None, x, 0.25, 7, 16, True, torch.float16))


@triton_only
def test_triton_compiles_fullgraph_forward_and_backward(backend, device):
    residual, x = (torch.randn(SHAPE, device=device, requires_grad=True) for _ in range(2))

    def residual_step(residual, x):
        return (triton_dropout_add_kernels.dropout_add_op(residual, x, 0.25, 11, 4, True, torch.float32) ** 2).sum()

    # aot_eager traces forward and backward through the fake impl without compiling C++ on CPU.
    compiled = torch.compile(residual_step, fullgraph=True, backend="aot_eager")
    expected = torch.autograd.grad(residual_step(residual, x), (residual, x))
    for actual, wanted in zip(torch.autograd.grad(compiled(residual, x), (residual, x)), expected):
        assert torch.equal(actual, wanted)


@triton_only
def test_triton_bad_inputs_get_clear_errors(backend, device):
    residual, x = torch.randn(SHAPE, device=device), torch.randn(SHAPE, device=device)
    with pytest.raises(ValueError, match=r"p must lie in \[0, 1\], got 1.5"):
        triton_dropout_add(residual, x, 1.5)
    with pytest.raises(ValueError, match=r"p must lie in \[0, 1\], got -0.1"):
        triton_dropout_add(residual, x, -0.1)
    with pytest.raises(TypeError, match="p must be a float"):
        triton_dropout_add(residual, x, "0.1")
    with pytest.raises(ValueError, match="x has shape"):
        triton_dropout_add(residual, x[:, :5], 0.1)
    with pytest.raises(ValueError, match="x is on meta"):
        triton_dropout_add(residual, x.to("meta"), 0.1)
    with pytest.raises(TypeError, match="x must be float16, bfloat16, float32 or float64"):
        triton_dropout_add(residual, x.long(), 0.1)
    with pytest.raises(TypeError, match="training must be True or False"):
        triton_dropout_add(residual, x, 0.1, training=1)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        triton_dropout_add(residual, x, 0.1, generator=3)
    if device.type == "cuda":
        with pytest.raises(ValueError, match="generator is on cpu"):
            triton_dropout_add(residual, x, 0.1, generator=torch.Generator())
    # what only this backend refuses: it computes in fp32 from 16/32-bit inputs
    with pytest.raises(TypeError, match="triton backend takes float16, bfloat16 or float32"):
        triton_dropout_add(residual.double(), x.double(), 0.1)


@triton_only
def test_triton_reversible_gradients_equal_plain_autograd(backend, device):
    """Hidden dropout 0.1 through the fused op, forward and the backward's reconstruction: the
    memory-saving backward gives plain autograd's gradients through the same blocks."""
    hidden = 16

    def block():
        attention = torch.nn.Sequential(torch.nn.LayerNorm(hidden), torch.nn.Linear(hidden, hidden))
        return nn.ReversibleBlock(attention, nn.ChunkedFeedForward(hidden, 32, dropout=0.1, chunk_size=5), dropout=0.1)

    sequence = nn.ReversibleSequence([block() for _ in range(3)]).to(device).train()
    x1, x2, w1, w2 = (torch.randn(2, 13, hidden, device=device) for _ in range(4))

    def gradients():
        sequence.zero_grad()
        leaves = [x1.clone().requires_grad_(), x2.clone().requires_grad_()]
        torch.manual_seed(4)
        with backends.use_backend("triton"):
            y1, y2 = sequence(*leaves)
            ((y1 * w1).sum() + (y2 * w2).sum()).backward()
        grads = {name: p.grad.clone() for name, p in sequence.named_parameters()}
        return (y1.detach(), y2.detach()), {**grads, "x1": leaves[0].grad, "x2": leaves[1].grad}

    outputs_reversible, grads_reversible = gradients()
    sequence.reversible = False
    outputs_plain, grads_plain = gradients()
    for reversible, plain in zip(outputs_reversible, outputs_plain):
        assert torch.equal(reversible, plain), "same seed, same layers: the forwards must agree bit for bit"
    for name, grad in grads_plain.items():
        # the reconstruction rounds: relative to the largest entry, as tests/nn/test_reversible.py
        assert (grads_reversible[name] - grad).abs().max() <= 1e-5 * grad.abs().max(), name


@triton_only
def test_triton_reformer_with_attention_dropout_reversible_equals_plain_autograd(backend, device):
    """A Reformer with LSH and local layers, attention and hidden dropout 0.1, every op on the Triton
    kernels (an explicit backend: a fallback would be an error): the reversible backward replays
    the attention-dropout masks and gives plain autograd's gradients."""
    from tests.nn.test_reversible import tiny_model

    model = tiny_model(["lsh", "local"], 0.1, num_hashes=2, is_decoder=True).to(device)
    ids = torch.randint(0, 50, (2, 40), device=device)  # not a chunk multiple: padded inside
    attention_mask = torch.ones_like(ids)
    attention_mask[1, :5] = 0
    weights = torch.randn(2, 40, 32, device=device)

    def gradients():
        model.zero_grad()
        torch.manual_seed(4)
        with backends.use_backend("triton"):
            out = model(input_ids=ids, attention_mask=attention_mask).last_hidden_state
            (out * weights).sum().backward()
        return out.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}

    out_reversible, grads_reversible = gradients()
    model.encoder.reversible = False
    out_plain, grads_plain = gradients()
    assert torch.equal(out_reversible, out_plain), "same seed, same layers: the forwards must agree bit for bit"
    for name, grad in grads_plain.items():
        assert (grads_reversible[name] - grad).abs().max() <= 1e-5 * grad.abs().max(), name
