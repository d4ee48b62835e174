"""Chunked linear + cross-entropy: torch's loss and gradients without the (tokens x vocab) logits."""
import warnings

import pytest
import torch

from reformer_kernels import backends
from reformer_kernels.nn import linear_cross_entropy
from reformer_kernels.ops import linear_cross_entropy as chunked_cross_entropy
from tests.marks import requires_extension
from tests.tolerance import assert_within_rule


def inputs(n, d, v, dtype, ignore_every=4):
    hidden = torch.randn(n, d, dtype=dtype, requires_grad=True)
    weight = (0.3 * torch.randn(v, d, dtype=dtype)).requires_grad_()
    bias = torch.randn(v, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, v, (n,))
    labels[::ignore_every] = -100
    return hidden, weight, bias, labels


def torch_loss(hidden, weight, bias, labels):
    return torch.nn.functional.cross_entropy(torch.nn.functional.linear(hidden, weight, bias), labels, ignore_index=-100)


def test_gradcheck_float64():
    hidden, weight, bias, labels = inputs(9, 5, 7, torch.float64)
    assert torch.autograd.gradcheck(lambda h, w, b: linear_cross_entropy(h, w, b, labels, chunk_size=4), (hidden, weight, bias))


@pytest.mark.parametrize("chunk_size", [0, 1, 5, 64])
def test_matches_torch_within_the_tolerance_rule(chunk_size):
    hidden, weight, bias, labels = inputs(37, 16, 50, torch.float32)
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
    hidden, weight, bias, labels = inputs(37, 16, 50, torch.float64)
    labels[labels == -100] = ignore_index
    expected = torch.nn.functional.cross_entropy(torch.nn.functional.linear(hidden, weight, bias), labels,
                                                 ignore_index=ignore_index)
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
    hidden, weight, bias, labels = inputs(n, d, v, torch.float32)

    def largest_allocation(loss_fn) -> int:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            loss_fn(hidden, weight, bias, labels).backward()
        return max(event.cpu_memory_usage for event in prof.events())

    logits_bytes = n * v * 4
    assert largest_allocation(linear_cross_entropy) < logits_bytes / 2 <= largest_allocation(torch_loss)


def test_no_bias_and_all_ignored():
    hidden, weight, _, labels = inputs(6, 4, 9, torch.float32)
    assert torch.allclose(linear_cross_entropy(hidden, weight, None, labels), torch_loss(hidden, weight, None, labels))
    assert torch.isnan(linear_cross_entropy(hidden, weight, None, torch.full((6,), -100)))


def test_saved_bytes_stay_below_the_logits():
    """With a large vocabulary, what is kept for backward is far smaller than tokens x vocab floats."""
    n, d, v = 512, 32, 8192
    hidden, weight, bias, labels = inputs(n, d, v, torch.float32)
    saved = 0

    def pack(t):
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = linear_cross_entropy(hidden, weight, bias, labels, chunk_size=64)
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
    hidden, weight, bias, labels = inputs(6, 4, 9, torch.float32)
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
    hidden, weight, bias, labels = inputs(37, 16, 50, torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.select("linear_cross_entropy", hidden.device)[0] == "cpu"
        auto = linear_cross_entropy(hidden, weight, bias, labels, chunk_size=8)
    for name in ("cpu", "reference"):
        assert torch.equal(linear_cross_entropy(hidden, weight, bias, labels, chunk_size=8, backend=name), auto)


@pytest.mark.skipif(torch.cuda.is_available() or backends.triton_interpreted(), reason="checks the errors when no GPU is visible")
def test_explicit_unavailable_backend_says_why():
    hidden, weight, bias, labels = inputs(6, 4, 9, torch.float32)
    with pytest.raises(ValueError, match="backend 'triton' is unavailable for linear_cross_entropy: .*TRITON_INTERPRET"):
        linear_cross_entropy(hidden, weight, bias, labels, backend="triton")
    with pytest.raises(ValueError, match="backend 'cuda' is unavailable|backend 'cuda' has no kernel"):
        linear_cross_entropy(hidden, weight, bias, labels, backend="cuda")
