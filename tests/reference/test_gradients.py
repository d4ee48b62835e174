"""gradcheck (float64, tiny shapes) on the reference attention ops and the reversible layer."""
import pytest
import torch

from reformer_kernels import reference


def double(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize("causal,padded", [(False, False), (True, True)])
def test_lsh_attention_gradcheck_through_out_and_lse(causal, padded):
    batch, heads, seq_len, head_dim, n_hashes = 2, 2, 8, 3, 2
    qk, v = double(batch, heads, seq_len, head_dim), double(batch, heads, seq_len, head_dim)
    rotations = torch.randn(heads, head_dim, n_hashes, 2, dtype=torch.float64)
    mask = None
    if padded:
        mask = torch.ones(batch, seq_len, dtype=torch.bool)
        mask[1, :2] = False
    buckets, num_keys = reference.hash_vectors(qk, rotations, 4, mask)
    sorted_idx, _ = reference.sort_buckets(buckets, num_keys)

    def attention(qk, v):
        # Both outputs are checked: the lse feeds the round combination and is returned.
        return reference.lsh_attention(
            qk, v, sorted_idx, n_hashes=n_hashes, chunk_len=4, n_chunks_before=1, n_chunks_after=1, causal=causal,
            attention_mask=mask,
        )

    assert torch.autograd.gradcheck(attention, (qk, v))


@pytest.mark.parametrize("seq_len,causal", [(8, False), (7, True)])
def test_local_attention_gradcheck(seq_len, causal):
    q, k, v = (double(1, 2, seq_len, 3) for _ in range(3))
    mask = torch.ones(1, seq_len, dtype=torch.bool)
    mask[0, 0] = False

    def attention(q, k, v):
        return reference.local_attention(
            q, k, v, chunk_len=4, n_chunks_before=1, n_chunks_after=0, causal=causal, attention_mask=mask
        )

    assert torch.autograd.gradcheck(attention, (q, k, v))


def blocks(w_f: torch.Tensor, w_g: torch.Tensor) -> tuple:
    """Small parametrized stand-ins for attention (f) and the feed-forward (g)."""
    return (lambda x: torch.tanh(x @ w_f)), (lambda x: torch.sin(x @ w_g))


def test_reversible_gradcheck():
    def layer(x1, x2, w_f, w_g):
        return reference.reversible_forward(x1, x2, *blocks(w_f, w_g))

    assert torch.autograd.gradcheck(layer, (double(3, 4), double(3, 4), double(4, 4), double(4, 4)))


def test_reversible_inverse_recovers_inputs():
    f, g = blocks(double(5, 5), double(5, 5))
    x1, x2 = double(2, 6, 5), double(2, 6, 5)
    with torch.no_grad():
        y1, y2 = reference.reversible_forward(x1, x2, f, g)
        r1, r2 = reference.reversible_inverse(y1, y2, f, g)
    assert not torch.allclose(y1, x1)
    assert torch.allclose(r1, x1, rtol=0, atol=1e-12) and torch.allclose(r2, x2, rtol=0, atol=1e-12)
