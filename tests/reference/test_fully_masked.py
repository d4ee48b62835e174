"""A query whose every key is masked gets the mean of its window's values in every dtype.

Its scores are all the mask value, so softmax is uniform. Computed as exp(scores - logsumexp)
below float64 it is not: -1e9 + log(n) rounds back to -1e9 (float32 steps are 64 there), every
probability becomes 1 and the query gets the *sum* of the values. transformers' Reformer does
that in fp32; the reference (a user-selectable backend and the oracle) and the kernels do not.
"""
import pytest
import torch

from reformer_kernels import functional

from ..marks import requires_extension

# relative to max |mean|: a few units in the last place of each dtype
TOLERANCE = {torch.float16: 4e-3, torch.bfloat16: 2e-2, torch.float32: 1e-6, torch.float64: 1e-12}
BACKENDS = ["reference", pytest.param("cpu", marks=requires_extension)]


def window_mean(v: torch.Tensor, first: int, last: int) -> torch.Tensor:
    """The mean over positions [first, last) of v (B, H, L, d), per (B, H): (B, H, d)."""
    return v[:, :, first:last].double().mean(dim=2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
def test_fully_masked_query_gets_the_mean(dtype, backend):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 16, 8, dtype=torch.float64).add(3.0).to(dtype) for _ in range(3))
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[1] = False  # every key of the second sequence is padding

    # full attention (L <= chunk_len): each query of the padded sequence averages all 16 values
    full = functional.local_attention(q, k, v, chunk_len=16, attention_mask=mask, backend=backend)
    mean = window_mean(v, 0, 16)[1]
    error = (full[1].double() - mean[:, None, :]).abs().max() / mean.abs().max()
    assert error <= TOLERANCE[dtype], f"full attention: relative error {error:.2e} (the sum instead of the mean is ~15)"

    # chunks of 4 seeing one chunk before: chunk c averages the values of chunks c - 1 and c (circularly)
    chunked = functional.local_attention(q, k, v, chunk_len=4, n_chunks_before=1, attention_mask=mask, backend=backend)
    for chunk in range(4):
        window = torch.cat([v[1, :, (chunk - 1) % 4 * 4 : (chunk - 1) % 4 * 4 + 4], v[1, :, chunk * 4 : chunk * 4 + 4]], dim=1)
        mean = window.double().mean(dim=1)
        error = (chunked[1, :, chunk * 4 : chunk * 4 + 4].double() - mean[:, None, :]).abs().max() / mean.abs().max()
        assert error <= TOLERANCE[dtype], f"chunk {chunk}: relative error {error:.2e}"

    # the unpadded sequence is untouched by the other's padding
    alone = functional.local_attention(q[:1], k[:1], v[:1], chunk_len=4, n_chunks_before=1, backend=backend)
    assert torch.equal(chunked[:1], alone)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_left_padded_causal_queries_match_float64(dtype):
    """Left padding + causal: the first queries see only padding (their past), a mix of the
    cases above inside one sequence, through the gradient too."""
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 2, 12, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.ones(1, 12, dtype=torch.bool)
    mask[0, :5] = False
    chunking = dict(chunk_len=4, n_chunks_before=1, causal=True, attention_mask=mask, backend="reference")
    out64 = functional.local_attention(q, k, v, **chunking)
    grads64 = torch.autograd.grad(out64.sum(), (q, k, v))
    low = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    out = functional.local_attention(*low, **chunking)
    grads = torch.autograd.grad(out.sum(), low)
    tolerance = TOLERANCE[dtype] * 4
    assert (out.double() - out64).abs().max() <= tolerance * out64.abs().max()
    for g, g64 in zip(grads, grads64):
        assert (g.double() - g64).abs().max() <= tolerance * 10 * g64.abs().max()
