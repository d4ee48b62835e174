"""lsh_attention: every backend against the float64 reference, out and per-round lse and the
gradients of qk and v under a random upstream gradient, by the tolerance rule. The permutation
comes from the reference hash + sort of the float64 inputs, so every backend attends over the same
chunks; attention dropout is drawn by ``functional`` from the default generator (a bool mask in
the chunked score layout, independent of dtype and backend), so re-seeding before each call gives
every run the same mask."""
import pytest
import torch
from hypothesis import strategies as st

from reformer_kernels import functional, reference

from .fuzz import DTYPES, HEAD_DIMS, MASK_KINDS, TRITON_HEAD_DIMS, compare_with_reference, fuzz, n_buckets_strategy, padding_mask


@st.composite
def cases(draw, backend):
    tiny = backend == "triton"
    n_hashes = draw(st.integers(1, 2 if tiny else 8))
    chunk_len = draw(st.integers(1, 8 if tiny else 12))
    # whole chunks per round: functional asks chunk_len to divide seq_len when n_hashes > 1, and
    # lsh_self_attention pads to that (its own fuzz test covers the padding)
    n_chunks = draw(st.integers(1, 3 if tiny else 4))
    return dict(
        seed=draw(st.integers(0, 2**31 - 1)),
        dtype=draw(st.sampled_from(DTYPES[backend])),
        batch=draw(st.sampled_from([1, 2, 3])),
        heads=draw(st.integers(1, 2 if tiny else 4)),
        head_dim=draw(st.sampled_from(TRITON_HEAD_DIMS if tiny else HEAD_DIMS)),
        n_hashes=n_hashes,
        chunk_len=chunk_len,
        seq_len=chunk_len * n_chunks,
        n_buckets=draw(n_buckets_strategy(small=tiny)),
        before=draw(st.integers(0, 2)),
        after=draw(st.integers(0, 2)),
        causal=draw(st.booleans()),
        mask=draw(st.sampled_from(MASK_KINDS)),
        dropout_p=draw(st.sampled_from([0.0, 0.0, 0.3])),
        head_split=draw(st.booleans()),  # inputs as (B, L, H, d) memory viewed as (B, H, L, d)
    )


def check(backend, device, case):
    torch.manual_seed(case["seed"])
    batch, heads, seq_len, head_dim, n_hashes = (case[k] for k in ("batch", "heads", "seq_len", "head_dim", "n_hashes"))
    n_buckets = case["n_buckets"]
    qk = torch.randn(batch, heads, seq_len, head_dim, dtype=torch.float64)
    v = torch.randn(batch, heads, seq_len, head_dim, dtype=torch.float64)
    mask = padding_mask(case["mask"], batch, seq_len)
    rotations = torch.randn(heads, head_dim, n_hashes, sum(reference.bucket_factors(n_buckets)) // 2, dtype=torch.float64)
    buckets, num_keys = reference.hash_vectors(qk, rotations, n_buckets, mask)
    sorted_idx, _ = reference.sort_buckets(buckets, num_keys)
    sorted_idx, mask = sorted_idx.to(device), None if mask is None else mask.to(device)
    upstream = (torch.randn(batch, heads, seq_len, head_dim), torch.randn(batch, heads, n_hashes, seq_len))
    dropout_seed = case["seed"] + 1

    def run(name, qk, v):
        torch.manual_seed(dropout_seed)
        return functional.lsh_attention(
            qk, v, sorted_idx, n_hashes=n_hashes, chunk_len=case["chunk_len"], n_chunks_before=case["before"],
            n_chunks_after=case["after"], causal=case["causal"], attention_mask=mask, dropout_p=case["dropout_p"],
            return_lse=True, backend=name,
        )

    compare_with_reference(run, backend, (qk, v), case["dtype"], device, upstream, ("out", "lse", "qk", "v"), f"lsh_attention {case}",
                           head_split_views=case["head_split"])


def test_fuzz(backend, device):
    fuzz(check, cases, backend, device, "default")


@pytest.mark.slow
def test_fuzz_slow(backend, device):
    fuzz(check, cases, backend, device, "slow")
