"""linear_cross_entropy (``reformer_kernels.nn``): every backend against PyTorch's
cross_entropy(linear(hidden, weight, bias)) in float64, the loss and the gradients of hidden,
weight and bias under a random upstream gradient, by the tolerance rule (baseline: the same
composition in the backend's dtype).

The oracle is plain PyTorch, not the "reference" backend: that backend is the chunked PyTorch
path that "cpu" runs too, so comparing them would compare the code with itself.

Then fixed cases: every backend against float64 torch on sizes off the tiles; the chunked PyTorch
path (gradcheck, tiles, memory never tokens x vocab, errors, autocast, backend choice); the Triton
ops under opcheck and torch.compile, the gradient through lse, determinism, memory saved for
backward, large logits and the shared errors."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import strategies as st

from reformer_kernels import backends, nn
from reformer_kernels.nn import linear_cross_entropy
from reformer_kernels.ops import linear_cross_entropy as chunked_cross_entropy
from reformer_kernels.ops.linear_cross_entropy import triton_kernels as triton_cross_entropy
from tests.marks import requires_extension
from tests.tolerance import assert_within_rule

from .fuzz import DTYPES, compare_with_reference, fuzz_tests
from .inputs import ATOL, bytes_saved_for_backward, skip_if_interpreter_lacks, triton_only


@st.composite
def cases(draw, backend):
    tiny = backend == "triton"
    n_tokens = draw(st.integers(1, 24 if tiny else 64))
    return dict(
        seed=draw(st.integers(0, 2**31 - 1)),
        dtype=draw(st.sampled_from(DTYPES[backend])),
        n_tokens=n_tokens,
        dim=draw(st.integers(1, 48 if tiny else 96)),
        vocab=draw(st.integers(1, 80 if tiny else 300)),
        bias=draw(st.booleans()),
        ignored=draw(st.sampled_from(["none", "some", "all"])),
        ignore_index=draw(st.sampled_from([-100, -1, 0])),  # 0 is a vocabulary id: those labels count for nothing
        chunk_size=draw(st.one_of(st.just(0), st.integers(1, n_tokens))),
    )


def check(backend, device, case):
    torch.manual_seed(case["seed"])
    n, dim, vocab, ignore_index = case["n_tokens"], case["dim"], case["vocab"], case["ignore_index"]
    hidden = torch.randn(n, dim, dtype=torch.float64)
    weight = torch.randn(vocab, dim, dtype=torch.float64) / dim**0.5
    bias = torch.randn(vocab, dtype=torch.float64) if case["bias"] else None
    labels = torch.randint(0, vocab, (n,))
    ignored = {"none": torch.zeros(n, dtype=torch.bool), "some": torch.rand(n) < 0.3, "all": torch.ones(n, dtype=torch.bool)}
    labels[ignored[case["ignored"]]] = ignore_index
    labels = labels.to(device)
    counted = bool((labels != ignore_index).any())
    upstream = (torch.randn(()),)

    def run(name, hidden, weight, *bias):
        bias = bias[0] if bias else None
        if name == "torch":
            return (F.cross_entropy(F.linear(hidden, weight, bias), labels, ignore_index=ignore_index),)
        return (nn.linear_cross_entropy(hidden, weight, bias, labels, chunk_size=case["chunk_size"], ignore_index=ignore_index,
                                        backend=name),)

    inputs = (hidden, weight) + ((bias,) if bias is not None else ())
    names = ("loss", "hidden", "weight", "bias")[: 1 + len(inputs)]
    what = f"linear_cross_entropy {case}"
    dtype = case["dtype"]
    if not counted:
        # no label counts: the mean over no tokens is nan, as torch's
        loss = run(backend, *(t.to(device, dtype) for t in inputs))[0]
        assert loss.isnan(), f"{what}: loss {loss.item()} with every label ignored, expected nan"
        return
    compare_with_reference(run, backend, inputs, dtype, device, upstream, names, what, oracle="torch",
                           output_dtype=torch.promote_types(dtype, torch.float32))  # the loss is at least fp32


test_fuzz, test_fuzz_slow = fuzz_tests(check, cases)


def float64_inputs(device, n, v, d, with_bias=True, ignore_index=-100):
    """float64 hidden, weight, bias (or None) and labels with every fourth token ignored."""
    hidden = torch.randn(n, d, dtype=torch.float64, device=device)
    weight = torch.randn(v, d, dtype=torch.float64, device=device) / d**0.5
    bias = torch.randn(v, dtype=torch.float64, device=device) if with_bias else None
    labels = torch.randint(0, v, (n,), device=device)
    labels[::4] = ignore_index
    return hidden, weight, bias, labels


def loss_and_grads(loss_fn, tensors, dtype):
    """The loss, times an upstream gradient that is not 1, and the gradient of every tensor."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in tensors if t is not None]
    args = iter(leaves)
    loss = loss_fn(*[None if t is None else next(args) for t in tensors])
    return loss, torch.autograd.grad(loss * 0.75, leaves)


# dtype, tokens, vocab, hidden dim, bias, ignore_index: no size a multiple of the tiles (16 when
# interpreted, 64 on a GPU); 300 spans several vocabulary tiles on a GPU too; D=100 steps through
# the logits' sum and the backward's output tiles with a masked tail; ignore_index 3 is a class id.
CASES = [
    (torch.float32, 37, 50, 24, True, -100),
    (torch.float32, 37, 50, 100, False, -100),
    (torch.float32, 9, 300, 16, True, 3),
    (torch.float16, 37, 50, 24, False, -100),
    (torch.float16, 21, 40, 100, True, -100),
    (torch.bfloat16, 37, 50, 24, True, -100),
]


@pytest.mark.parametrize("dtype,n,v,d,with_bias,ignore_index", CASES)
def test_matches_float64_torch(backend, device, dtype, n, v, d, with_bias, ignore_index):
    skip_if_interpreter_lacks(backend, dtype)
    hidden, weight, bias, labels = float64_inputs(device, n, v, d, with_bias, ignore_index)
    tensors = (hidden, weight, bias)

    def torch_loss(hidden, weight, bias):
        return F.cross_entropy(F.linear(hidden, weight, bias), labels, ignore_index=ignore_index)

    def backend_loss(hidden, weight, bias):
        return linear_cross_entropy(hidden, weight, bias, labels, ignore_index=ignore_index, backend=backend)

    loss64, grads64 = loss_and_grads(torch_loss, tensors, torch.float64)
    baseline, baseline_grads = loss_and_grads(torch_loss, tensors, dtype)
    loss, grads = loss_and_grads(backend_loss, tensors, dtype)
    assert loss.dtype == torch.float32
    assert_within_rule(loss, loss64, baseline, ATOL[dtype], "loss")
    for name, actual, ref64, base in zip(("hidden", "weight", "bias"), grads, grads64, baseline_grads):
        assert actual.dtype == dtype, f"d {name} is {actual.dtype}"
        assert_within_rule(actual, ref64, base, ATOL[dtype], f"d {name}")


def test_all_ignored_and_no_tokens_give_nan_and_zero_gradients(backend, device):
    hidden, weight, bias, _ = float64_inputs(device, 20, 30, 16)
    hidden, weight, bias = (t.float().requires_grad_() for t in (hidden, weight, bias))
    for n, labels in ((20, torch.full((20,), -100, device=device)), (0, torch.zeros(0, dtype=torch.long, device=device))):
        loss = linear_cross_entropy(hidden[:n], weight, bias, labels, backend=backend)
        assert torch.isnan(loss)
        for grad in torch.autograd.grad(loss, (hidden, weight, bias)):
            assert torch.equal(grad, torch.zeros_like(grad))


def test_large_logits_stay_finite(backend, device):
    """Logits of 1e3 overflow exp unless shifted by the max (forward) or by lse (backward), also in
    the rows past the last token block, whose hidden rows are zero and whose logits are the bias."""
    hidden, weight, bias, labels = float64_inputs(device, 37, 50, 24)
    bias = bias * 1e3
    tensors = (hidden, weight, bias)

    def torch_loss(hidden, weight, bias):
        return F.cross_entropy(F.linear(hidden, weight, bias), labels)

    loss64, grads64 = loss_and_grads(torch_loss, tensors, torch.float64)
    baseline, baseline_grads = loss_and_grads(torch_loss, tensors, torch.float32)
    loss, grads = loss_and_grads(lambda h, w, b: linear_cross_entropy(h, w, b, labels, backend=backend), tensors,
                                 torch.float32)
    assert_within_rule(loss, loss64, baseline, ATOL[torch.float32], "loss")
    for name, actual, ref64, base in zip(("hidden", "weight", "bias"), grads, grads64, baseline_grads):
        assert_within_rule(actual, ref64, base, ATOL[torch.float32], f"d {name}")


# ----------------------------------------------------------------------------- the chunked PyTorch path
def leaf_inputs(n, d, v, dtype, ignore_every=4):
    hidden = torch.randn(n, d, dtype=dtype, requires_grad=True)
    weight = (0.3 * torch.randn(v, d, dtype=dtype)).requires_grad_()
    bias = torch.randn(v, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, v, (n,))
    labels[::ignore_every] = -100
    return hidden, weight, bias, labels


def torch_loss(hidden, weight, bias, labels):
    return F.cross_entropy(F.linear(hidden, weight, bias), labels, ignore_index=-100)


def test_gradcheck_float64():
    hidden, weight, bias, labels = leaf_inputs(9, 5, 7, torch.float64)
    assert torch.autograd.gradcheck(lambda h, w, b: linear_cross_entropy(h, w, b, labels, chunk_size=4), (hidden, weight, bias))


@pytest.mark.parametrize("chunk_size", [0, 1, 5, 64])
def test_matches_torch_within_the_tolerance_rule(chunk_size):
    hidden, weight, bias, labels = leaf_inputs(37, 16, 50, torch.float32)
    reference = [t.detach().double().requires_grad_() for t in (hidden, weight, bias)]
    expected64 = torch_loss(*reference, labels)
    expected64.backward()
    baseline = torch_loss(hidden, weight, bias, labels)
    baseline_grads = torch.autograd.grad(baseline, (hidden, weight, bias))
    actual = linear_cross_entropy(hidden, weight, bias, labels, chunk_size=chunk_size)
    actual_grads = torch.autograd.grad(actual, (hidden, weight, bias))
    assert_within_rule(actual, expected64, baseline, atol=1e-6, what="loss")
    for name, got, ref, base in zip(("hidden", "weight", "bias"), actual_grads, reference, baseline_grads):
        assert_within_rule(got, ref.grad, base, atol=1e-6, what=f"grad {name}")


@pytest.mark.parametrize("ignore_index", [-100, 3])
def test_tiles_over_tokens_and_vocabulary(monkeypatch, ignore_index):
    """Tiles of 5 tokens x 8 vocabulary entries: each token's log-sum-exp is accumulated over 7
    tiles and its label falls in one of them; an ignore_index inside [0, V) is still ignored."""
    monkeypatch.setattr(chunked_cross_entropy, "TILE_ELEMENTS", 40)
    hidden, weight, bias, labels = leaf_inputs(37, 16, 50, torch.float64)
    labels[labels == -100] = ignore_index
    expected = F.cross_entropy(F.linear(hidden, weight, bias), labels, ignore_index=ignore_index)
    actual = linear_cross_entropy(hidden, weight, bias, labels, chunk_size=5, ignore_index=ignore_index)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=0)
    for got, want in zip(torch.autograd.grad(actual, (hidden, weight, bias)),
                         torch.autograd.grad(expected, (hidden, weight, bias))):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)


def test_no_op_allocates_tokens_x_vocab_floats():
    """Forward and backward never create a (tokens x vocab) tensor: the most memory any op takes
    (torch.profiler's accounting) stays under half the fp32 logits, where F.linear + cross_entropy
    take all of it (which shows the measure sees such a tensor)."""
    from torch.profiler import ProfilerActivity, profile

    n, d, v = 512, 32, 32768
    hidden, weight, bias, labels = leaf_inputs(n, d, v, torch.float32)

    def largest_allocation(loss_fn) -> int:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            loss_fn(hidden, weight, bias, labels).backward()
        return max(event.cpu_memory_usage for event in prof.events())

    logits_bytes = n * v * 4
    assert largest_allocation(linear_cross_entropy) < logits_bytes / 2 <= largest_allocation(torch_loss)


def test_no_bias_and_all_ignored():
    hidden, weight, _, labels = leaf_inputs(6, 4, 9, torch.float32)
    assert torch.allclose(linear_cross_entropy(hidden, weight, None, labels), torch_loss(hidden, weight, None, labels))
    assert torch.isnan(linear_cross_entropy(hidden, weight, None, torch.full((6,), -100)))


def test_saved_bytes_stay_below_the_logits():
    """With a large vocabulary, what is kept for backward is far smaller than tokens x vocab floats."""
    n, d, v = 512, 32, 8192
    hidden, weight, bias, labels = leaf_inputs(n, d, v, torch.float32)
    loss, saved = bytes_saved_for_backward(lambda: linear_cross_entropy(hidden, weight, bias, labels, chunk_size=64))
    logits_bytes = n * v * 4
    inputs_bytes = sum(t.numel() * t.element_size() for t in (hidden, weight, bias, labels))
    assert saved < inputs_bytes + 2 * n * 4 + 64 < logits_bytes
    loss.backward()
    assert torch.isfinite(hidden.grad).all()


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(hidden=torch.randn(4, 3, 2)), "hidden must be"),
        (dict(labels=torch.zeros(5, dtype=torch.int64)), "labels must be"),
        (dict(labels=torch.zeros(4, dtype=torch.int32)), "labels must be"),
        (dict(labels=torch.tensor([0, 1, 9, -100])), "outside"),
        (dict(labels=torch.tensor([0, -3, 1, 2])), "outside"),
        (dict(bias=torch.zeros(8)), r"bias must be \(V,\) = \(9,\)"),
        (dict(weight=torch.randn(9, 3, device="meta")), "weight must be on hidden's device cpu, got meta"),
        (dict(chunk_size=-1), "chunk_size must be >= 0"),
    ],
)
def test_bad_inputs(kwargs, error):
    args = dict(hidden=torch.randn(4, 3), weight=torch.randn(9, 3), bias=None, labels=torch.zeros(4, dtype=torch.int64))
    args.update(kwargs)
    with pytest.raises(ValueError, match=error):
        linear_cross_entropy(args["hidden"], args["weight"], args["bias"], args["labels"], chunk_size=args.get("chunk_size", 0))


def test_mixed_dtypes_need_autocast():
    hidden, weight, bias, labels = leaf_inputs(6, 4, 9, torch.float32)
    with pytest.raises(TypeError, match="weight is torch.bfloat16 but hidden is torch.float32.*torch.autocast"):
        linear_cross_entropy(hidden, weight.bfloat16(), bias, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(hidden.bfloat16(), weight, bias, labels)
        expected = torch_loss(hidden.bfloat16(), weight, bias, labels)
    torch.testing.assert_close(loss, expected.float(), rtol=1e-2, atol=1e-2)
    loss.backward()
    assert weight.grad.dtype == torch.float32 and hidden.grad.dtype == torch.float32


@requires_extension
def test_auto_runs_the_cpu_backend_and_every_backend_agrees():
    hidden, weight, bias, labels = leaf_inputs(37, 16, 50, torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.select("linear_cross_entropy", hidden.device)[0] == "cpu"
        auto = linear_cross_entropy(hidden, weight, bias, labels, chunk_size=8)
    for name in ("cpu", "reference"):
        assert torch.equal(linear_cross_entropy(hidden, weight, bias, labels, chunk_size=8, backend=name), auto)


@pytest.mark.skipif(torch.cuda.is_available() or backends.triton_interpreted(), reason="checks the errors when no GPU is visible")
def test_explicit_unavailable_backend_says_why():
    hidden, weight, bias, labels = leaf_inputs(6, 4, 9, torch.float32)
    with pytest.raises(ValueError, match="backend 'triton' is unavailable for linear_cross_entropy: .*TRITON_INTERPRET"):
        linear_cross_entropy(hidden, weight, bias, labels, backend="triton")
    with pytest.raises(ValueError, match="backend 'cuda' is unavailable|backend 'cuda' has no kernel"):
        linear_cross_entropy(hidden, weight, bias, labels, backend="cuda")


# ----------------------------------------------------------------------------- the Triton ops
@triton_only
def test_triton_opcheck(backend, device):
    hidden, weight, bias, labels = (t if t.dtype == torch.long else t.float() for t in float64_inputs(device, 20, 40, 24))
    for b in (bias, None):
        torch.library.opcheck(triton_cross_entropy.linear_cross_entropy_fwd,
                              (hidden.requires_grad_(), weight.requires_grad_(), b, labels, -100))
    with torch.no_grad():
        losses, lse = triton_cross_entropy.linear_cross_entropy_fwd(hidden, weight, bias, labels, -100)
    scales = triton_cross_entropy.row_scales(torch.randn_like(losses), torch.randn_like(lse), labels, -100)
    for op in (triton_cross_entropy.linear_cross_entropy_grad_hidden, triton_cross_entropy.linear_cross_entropy_grad_weight):
        torch.library.opcheck(op, (*scales, hidden.detach(), weight.detach(), bias, labels, lse))


@triton_only
def test_triton_gradient_through_lse(backend, device):
    """lse is an output of the forward op too: its gradient (softmax) adds to the loss's."""
    hidden, weight, bias, labels = float64_inputs(device, 20, 40, 24)
    grad_losses, grad_lse = torch.randn(20, dtype=torch.float64, device=device), torch.randn(20, dtype=torch.float64, device=device)

    def expected(hidden, weight, bias):
        logits = F.linear(hidden, weight, bias)
        losses = F.cross_entropy(logits, labels, reduction="none")
        return (losses * grad_losses).sum() + (torch.logsumexp(logits, -1) * grad_lse).sum()

    def actual(hidden, weight, bias):
        losses, lse = triton_cross_entropy.linear_cross_entropy_fwd(hidden, weight, bias, labels, -100)
        return (losses * grad_losses.float()).sum() + (lse * grad_lse.float()).sum()

    _, grads64 = loss_and_grads(expected, (hidden, weight, bias), torch.float64)
    _, baseline_grads = loss_and_grads(expected, (hidden, weight, bias), torch.float32)
    _, grads = loss_and_grads(actual, (hidden, weight, bias), torch.float32)
    for actual_grad, ref64, base in zip(grads, grads64, baseline_grads):
        assert_within_rule(actual_grad, ref64, base, ATOL[torch.float32], "gradient through lse")


@triton_only
def test_triton_two_runs_give_identical_bits(backend, device):
    """The backward sums split into segments here (fp32 partials added by torch): still no atomics."""
    hidden, weight, bias, labels = float64_inputs(device, 37, 50, 24)

    def run():
        return loss_and_grads(lambda h, w, b: linear_cross_entropy(h, w, b, labels, backend=backend),
                              (hidden, weight, bias), torch.float32)

    (first_loss, first_grads), (second_loss, second_grads) = run(), run()
    assert torch.equal(first_loss, second_loss)
    for first, second in zip(first_grads, second_grads):
        assert torch.equal(first, second)


@triton_only
def test_triton_saves_inputs_and_lse_only(backend, device):
    hidden, weight, bias, labels = (t if t.dtype == torch.long else t.float().requires_grad_()
                                    for t in float64_inputs(device, 37, 50, 24))
    _, saved = bytes_saved_for_backward(lambda: linear_cross_entropy(hidden, weight, bias, labels, backend=backend))
    assert saved <= sum(t.numel() * t.element_size() for t in (hidden, weight, bias, labels)) + 2 * 37 * 4


@triton_only
def test_triton_bad_inputs_get_the_shared_errors(backend, device, with_debug_checks):
    hidden, weight, bias, labels = (t if t.dtype == torch.long else t.float() for t in float64_inputs(device, 8, 10, 16))
    triton = dict(backend=backend)
    # what only this backend refuses: it computes in fp32 from 16/32-bit inputs
    with pytest.raises(TypeError, match="triton backend takes float16, bfloat16 or float32.*'cpu' or 'reference'"):
        linear_cross_entropy(hidden.double(), weight.double(), bias.double(), labels, **triton)
    with pytest.raises(TypeError, match="weight is torch.float16 but hidden is torch.float32"):
        linear_cross_entropy(hidden, weight.half(), bias, labels, **triton)
    with pytest.raises(ValueError, match=r"weight \(V, D\)"):
        linear_cross_entropy(hidden, weight[:, :8], bias, labels, **triton)
    with pytest.raises(ValueError, match=r"bias must be \(V,\)"):
        linear_cross_entropy(hidden, weight, bias[:5], labels, **triton)
    with pytest.raises(ValueError, match="labels must be int64"):
        linear_cross_entropy(hidden, weight, bias, labels.int(), **triton)
    with pytest.raises(ValueError, match=r"labels span \[.*, 10\] outside \[0, vocab_size=10\)"):
        linear_cross_entropy(hidden, weight, bias, torch.where(labels == -100, 10, labels), **triton)
    with pytest.raises(ValueError, match="weight must be on hidden's device .*, got meta"):
        linear_cross_entropy(hidden, weight.to("meta"), bias, labels, **triton)
    with pytest.raises(ValueError, match="labels must be on hidden's device .*, got meta"):
        linear_cross_entropy(hidden, weight, bias, labels.to("meta"), **triton)


@triton_only
def test_triton_compiles_fullgraph_forward_and_backward(backend, device):
    hidden, weight, bias, labels = (t if t.dtype == torch.long else t.float().requires_grad_()
                                    for t in float64_inputs(device, 20, 40, 24))

    def loss(hidden, weight, bias):
        return triton_cross_entropy.linear_cross_entropy(hidden, weight, bias, labels)

    # aot_eager traces forward and backward through the fake impls without compiling C++ on CPU.
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    expected = torch.autograd.grad(loss(hidden, weight, bias), (hidden, weight, bias))
    actual = torch.autograd.grad(compiled(hidden, weight, bias), (hidden, weight, bias))
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e)
