"""Triton linear cross-entropy (loss, d hidden, d weight, d bias) against float64 torch
(F.cross_entropy over F.linear), the custom ops under opcheck, determinism and the shared errors."""
import pytest
import torch
import torch.nn.functional as F

from reformer_kernels.nn import linear_cross_entropy
from reformer_kernels.ops.linear_cross_entropy import triton_kernels as triton_cross_entropy
from tests.tolerance import assert_within_rule

from .helpers import ATOL, skip_if_interpreter_lacks

pytestmark = pytest.mark.triton_interpret


def inputs(device, n, v, d, with_bias=True, ignore_index=-100):
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
def test_matches_float64_torch(device, dtype, n, v, d, with_bias, ignore_index):
    skip_if_interpreter_lacks(dtype)
    hidden, weight, bias, labels = inputs(device, n, v, d, with_bias, ignore_index)
    tensors = (hidden, weight, bias)

    def torch_loss(hidden, weight, bias):
        return F.cross_entropy(F.linear(hidden, weight, bias), labels, ignore_index=ignore_index)

    def triton_loss(hidden, weight, bias):
        return linear_cross_entropy(hidden, weight, bias, labels, ignore_index=ignore_index, backend="triton")

    loss64, grads64 = loss_and_grads(torch_loss, tensors, torch.float64)
    baseline, baseline_grads = loss_and_grads(torch_loss, tensors, dtype)
    loss, grads = loss_and_grads(triton_loss, tensors, dtype)
    assert loss.dtype == torch.float32
    assert_within_rule(loss, loss64, baseline, ATOL[dtype], "loss")
    for name, actual, ref64, base in zip(("hidden", "weight", "bias"), grads, grads64, baseline_grads):
        assert actual.dtype == dtype, f"d {name} is {actual.dtype}"
        assert_within_rule(actual, ref64, base, ATOL[dtype], f"d {name}")


def test_all_ignored_and_no_tokens_give_nan_and_zero_gradients(device):
    hidden, weight, bias, _ = inputs(device, 20, 30, 16)
    hidden, weight, bias = (t.float().requires_grad_() for t in (hidden, weight, bias))
    for n, labels in ((20, torch.full((20,), -100, device=device)), (0, torch.zeros(0, dtype=torch.long, device=device))):
        loss = linear_cross_entropy(hidden[:n], weight, bias, labels, backend="triton")
        assert torch.isnan(loss)
        for grad in torch.autograd.grad(loss, (hidden, weight, bias)):
            assert torch.equal(grad, torch.zeros_like(grad))


def test_opcheck(device):
    hidden, weight, bias, labels = (t if t.dtype == torch.long else t.float() for t in inputs(device, 20, 40, 24))
    for b in (bias, None):
        torch.library.opcheck(triton_cross_entropy.linear_cross_entropy_fwd,
                              (hidden.requires_grad_(), weight.requires_grad_(), b, labels, -100))
    with torch.no_grad():
        losses, lse = triton_cross_entropy.linear_cross_entropy_fwd(hidden, weight, bias, labels, -100)
    grads = (torch.randn_like(losses), torch.randn_like(lse))
    for op in (triton_cross_entropy.linear_cross_entropy_grad_hidden, triton_cross_entropy.linear_cross_entropy_grad_weight):
        torch.library.opcheck(op, (*grads, hidden.detach(), weight.detach(), bias, labels, lse, -100))


def test_gradient_through_lse(device):
    """lse is an output of the forward op too: its gradient (softmax) adds to the loss's."""
    hidden, weight, bias, labels = inputs(device, 20, 40, 24)
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


def test_two_runs_give_identical_bits(device):
    """The backward sums split into segments here (fp32 partials added by torch): still no atomics."""
    hidden, weight, bias, labels = inputs(device, 37, 50, 24)

    def run():
        return loss_and_grads(lambda h, w, b: linear_cross_entropy(h, w, b, labels, backend="triton"),
                              (hidden, weight, bias), torch.float32)

    (first_loss, first_grads), (second_loss, second_grads) = run(), run()
    assert torch.equal(first_loss, second_loss)
    for first, second in zip(first_grads, second_grads):
        assert torch.equal(first, second)


def test_saves_inputs_and_lse_only(device):
    hidden, weight, bias, labels = (t if t.dtype == torch.long else t.float().requires_grad_() for t in inputs(device, 37, 50, 24))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        linear_cross_entropy(hidden, weight, bias, labels, backend="triton")
    linear = sum(t.numel() * t.element_size() for t in (hidden, weight, bias, labels)) + 2 * 37 * 4
    assert sum(t.numel() * t.element_size() for t in saved) <= linear


def test_bad_inputs_get_the_shared_errors(device):
    hidden, weight, bias, labels = (t if t.dtype == torch.long else t.float() for t in inputs(device, 8, 10, 16))
    triton = dict(backend="triton")
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


def test_compiles_fullgraph_forward_and_backward(device):
    hidden, weight, bias, labels = (t if t.dtype == torch.long else t.float().requires_grad_() for t in inputs(device, 20, 40, 24))

    def loss(hidden, weight, bias):
        return triton_cross_entropy.linear_cross_entropy(hidden, weight, bias, labels)

    # aot_eager traces forward and backward through the fake impls without compiling C++ on CPU.
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    expected = torch.autograd.grad(loss(hidden, weight, bias), (hidden, weight, bias))
    actual = torch.autograd.grad(compiled(hidden, weight, bias), (hidden, weight, bias))
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e)


def test_large_logits_stay_finite(device):
    """Logits of 1e3 overflow exp unless shifted by the max (forward) or by lse (backward), also in
    the rows past the last token block, whose hidden rows are zero and whose logits are the bias."""
    hidden, weight, bias, labels = inputs(device, 37, 50, 24)
    bias = bias * 1e3
    tensors = (hidden, weight, bias)

    def torch_loss(hidden, weight, bias):
        return F.cross_entropy(F.linear(hidden, weight, bias), labels)

    loss64, grads64 = loss_and_grads(torch_loss, tensors, torch.float64)
    baseline, baseline_grads = loss_and_grads(torch_loss, tensors, torch.float32)
    loss, grads = loss_and_grads(lambda h, w, b: linear_cross_entropy(h, w, b, labels, backend="triton"), tensors,
                                 torch.float32)
    assert_within_rule(loss, loss64, baseline, ATOL[torch.float32], "loss")
    for name, actual, ref64, base in zip(("hidden", "weight", "bias"), grads, grads64, baseline_grads):
        assert_within_rule(actual, ref64, base, ATOL[torch.float32], f"d {name}")
