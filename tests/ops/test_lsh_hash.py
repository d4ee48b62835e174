"""lsh_hash: every backend's bucket ids against the float64 reference hash of the same values.

float64 must agree exactly. In float32 and float16 the kernel and the float64 reference may
round a near-tie of the two best rotated coordinates either way (both answers are right), so
there they must agree everywhere except at near-ties, which are measured in float64 on the very
values the kernel sees."""
import pytest
import torch
from hypothesis import strategies as st

from reformer_kernels import functional, reference

from .fuzz import DTYPES, HEAD_DIMS, MASK_KINDS, NEAR_TIE, TRITON_HEAD_DIMS, fuzz, head_split, n_buckets_strategy, near_ties, padding_mask


@st.composite
def cases(draw, backend):
    tiny = backend == "triton"
    return dict(
        seed=draw(st.integers(0, 2**31 - 1)),
        dtype=draw(st.sampled_from(DTYPES[backend])),
        batch=draw(st.sampled_from([1, 2, 3])),
        heads=draw(st.integers(1, 4)),
        seq_len=draw(st.integers(1, 24 if tiny else 70)),
        head_dim=draw(st.sampled_from(TRITON_HEAD_DIMS if tiny else HEAD_DIMS)),
        n_hashes=draw(st.integers(1, 4 if tiny else 8)),
        n_buckets=draw(n_buckets_strategy(small=tiny)),
        mask=draw(st.sampled_from(MASK_KINDS)),
        head_split=draw(st.booleans()),  # vectors as (B, L, H, d) memory viewed as (B, H, L, d)
    )


def check(backend, device, case):
    torch.manual_seed(case["seed"])
    dtype, n_buckets = case["dtype"], case["n_buckets"]
    batch, heads, seq_len, head_dim, n_hashes = (case[k] for k in ("batch", "heads", "seq_len", "head_dim", "n_hashes"))
    factors = reference.bucket_factors(n_buckets)
    # rounded to dtype first, so that the float64 reference hashes exactly the values the kernel sees
    vectors = torch.randn(batch, heads, seq_len, head_dim).to(dtype).double()
    rotations = torch.randn(heads, head_dim, n_hashes, sum(factors) // 2).to(dtype).double()
    mask = padding_mask(case["mask"], batch, seq_len)

    expected, expected_keys = reference.hash_vectors(vectors, rotations, n_buckets, mask)
    kernel_vectors = vectors.to(device, dtype)
    buckets, num_keys = functional.lsh_hash(
        head_split(kernel_vectors) if case["head_split"] else kernel_vectors, rotations.to(device, dtype), n_buckets,
        attention_mask=None if mask is None else mask.to(device), backend=backend,
    )
    assert num_keys == expected_keys
    assert buckets.dtype == torch.int64 and buckets.shape == expected.shape
    buckets = buckets.cpu()
    if dtype == torch.float64:
        assert torch.equal(buckets, expected), f"{int((buckets != expected).sum())} bucket ids differ in float64"
        return
    ties = near_ties(vectors, rotations, factors, NEAR_TIE[dtype])
    if mask is not None:
        ties &= mask.repeat(1, n_hashes)[:, None, :]  # padding takes the padding bucket whatever its rotations
    differ = buckets != expected
    assert not (differ & ~ties).any(), f"{int((differ & ~ties).sum())} bucket ids differ away from near-ties"


def test_fuzz(backend, device):
    fuzz(check, cases, backend, device, "default")


@pytest.mark.slow
def test_fuzz_slow(backend, device):
    fuzz(check, cases, backend, device, "slow")
