"""lsh_self_attention (hash -> bucket_sort -> lsh_attention, padding to whole chunks, full attention
up to one chunk) on every backend against the float64 reference, out and the gradients of qk and
v, by the tolerance rule.

Each backend hashes its own dtype's values. A near-tie of the two best rotated coordinates may
round to either bucket, and a flipped bucket moves a position to another chunk: a different,
equally right attention that no tolerance covers. So the inputs are rounded to the dtype first
(the float64 reference sees the kernel's values) and cases with a near-tie at an unpadded
position are discarded (``assume``); the hash's own agreement away from ties is test_lsh_hash's."""
import math

import pytest
import torch
from hypothesis import assume
from hypothesis import strategies as st

from reformer_kernels import functional, reference

from .fuzz import (DTYPES, HEAD_DIMS, MASK_KINDS, NEAR_TIE, TRITON_HEAD_DIMS, compare_with_reference, fuzz, n_buckets_strategy,
                   near_ties, padding_mask)


@st.composite
def cases(draw, backend):
    dtype = draw(st.sampled_from(DTYPES[backend]))
    # fp16 near-ties come at ~0.5 % of the hashed entries, which would discard nearly every case of
    # a thousand entries: fp16 cases stay under ~200 (as the triton ones, which are tiny anyway)
    tiny = backend == "triton" or dtype == torch.float16
    return dict(
        seed=draw(st.integers(0, 2**31 - 1)),
        dtype=dtype,
        batch=draw(st.sampled_from([1, 2, 3])),
        heads=draw(st.integers(1, 2 if tiny else 4)),
        seq_len=draw(st.integers(1, 16 if tiny else 64)),
        head_dim=draw(st.sampled_from(TRITON_HEAD_DIMS if tiny else HEAD_DIMS)),
        n_hashes=draw(st.integers(1, 2 if tiny else 8)),
        n_buckets=draw(n_buckets_strategy(small=tiny)),
        chunk_len=draw(st.integers(2 if tiny else 1, 8 if tiny else 16)),
        before=draw(st.integers(0, 2)),
        after=draw(st.integers(0, 2)),
        causal=draw(st.booleans()),
        mask=draw(st.sampled_from(MASK_KINDS)),
        dropout_p=draw(st.sampled_from([0.0, 0.0, 0.3])),
        head_split=draw(st.booleans()),  # inputs as (B, L, H, d) memory viewed as (B, H, L, d)
    )


def check(backend, device, case):
    torch.manual_seed(case["seed"])
    dtype, n_buckets, chunk_len = case["dtype"], case["n_buckets"], case["chunk_len"]
    batch, heads, seq_len, head_dim, n_hashes = (case[k] for k in ("batch", "heads", "seq_len", "head_dim", "n_hashes"))
    factors = reference.bucket_factors(n_buckets)
    shape = (batch, heads, seq_len, head_dim)
    qk, v = (torch.randn(shape).to(dtype).double() for _ in range(2))
    rotations = torch.randn(heads, head_dim, n_hashes, sum(factors) // 2).to(dtype).double()
    mask = padding_mask(case["mask"], batch, seq_len)
    if seq_len > chunk_len and dtype != torch.float64:
        padded_len = math.ceil(seq_len / chunk_len) * chunk_len
        (padded_qk,), keep = reference.pad_sequence((qk,), mask, padded_len)
        ties = near_ties(padded_qk, rotations, factors, NEAR_TIE[dtype]) & keep.repeat(1, n_hashes)[:, None, :]
        assume(not ties.any())
    mask = None if mask is None else mask.to(device)
    upstream = (torch.randn(shape),)
    dropout_seed = case["seed"] + 1

    def run(name, qk, v):
        torch.manual_seed(dropout_seed)
        out = functional.lsh_self_attention(
            qk, v, rotations.to(device, qk.dtype), n_buckets, chunk_len=chunk_len, n_chunks_before=case["before"],
            n_chunks_after=case["after"], causal=case["causal"], attention_mask=mask, dropout_p=case["dropout_p"], backend=name,
        )
        return (out,)

    compare_with_reference(run, backend, (qk, v), dtype, device, upstream, ("out", "qk", "v"), f"lsh_self_attention {case}",
                           head_split_views=case["head_split"])


def test_fuzz(backend, device):
    fuzz(check, cases, backend, device, "default")


@pytest.mark.slow
def test_fuzz_slow(backend, device):
    fuzz(check, cases, backend, device, "slow")
