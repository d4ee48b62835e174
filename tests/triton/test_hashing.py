"""Triton LSH hashing against the float64 reference: the same bucket ids except where two rotated
coordinates tie to within rounding (there any answer is right)."""
import pytest
import torch

from reformer_kernels import functional, reference

from .helpers import skip_if_interpreter_lacks
from .test_lsh_attention import padding_mask

pytestmark = pytest.mark.triton_interpret

# relative gap between the two best [xR, -xR] entries below which the dtype may pick either
NEAR_TIE = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def near_ties(vectors: torch.Tensor, rotations: torch.Tensor, n_buckets, rel: float) -> torch.Tensor:
    """(B, H, n_hashes * L) bool: where some bucket factor's argmax is decided by less than ``rel``."""
    rotated = torch.einsum("bhld,hdnr->bhnlr", vectors, rotations)
    tie = torch.zeros(rotated.shape[:-1], dtype=torch.bool, device=vectors.device)
    start = 0
    for factor in reference.bucket_factors(n_buckets):
        part = rotated[..., start : start + factor // 2]
        start += factor // 2
        top2 = torch.cat([part, -part], dim=-1).topk(2, dim=-1).values
        tie |= (top2[..., 0] - top2[..., 1]) <= rel * top2[..., 0].abs()
    return tie.flatten(2)


@pytest.mark.parametrize(
    "dtype,n_buckets,n_hashes,padding",
    [
        (torch.float32, 8, 1, "none"),
        (torch.float32, (4, 6), 2, "tail"),
        (torch.float16, 16, 4, "full_row"),
        (torch.bfloat16, (2, 4), 2, "tail"),
    ],
)
def test_lsh_hash_matches_reference(device, dtype, n_buckets, n_hashes, padding):
    skip_if_interpreter_lacks(dtype)
    batch, heads, seq_len, head_dim = 2, 2, 40, 16
    rotation_size = sum(reference.bucket_factors(n_buckets))
    # the reference hashes exactly the values the kernel sees
    vectors = torch.randn(batch, heads, seq_len, head_dim, device=device).to(dtype).double()
    rotations = torch.randn(heads, head_dim, n_hashes, rotation_size // 2, device=device).to(dtype).double()
    mask = padding_mask(padding, batch, seq_len, device)

    buckets, num_keys = functional.lsh_hash(vectors.to(dtype), rotations.to(dtype), n_buckets, attention_mask=mask,
                                            backend="triton")
    expected, expected_num_keys = reference.hash_vectors(vectors, rotations, n_buckets, mask)

    assert num_keys == expected_num_keys
    assert buckets.dtype == torch.int64 and buckets.shape == expected.shape
    ties = near_ties(vectors, rotations, n_buckets, NEAR_TIE[dtype])
    if mask is not None:
        ties &= mask.repeat(1, n_hashes)[:, None, :]
    assert ties.float().mean() < 0.05, "too many near-ties for the comparison to mean anything"
    differ = buckets != expected
    assert not (differ & ~ties).any(), f"{int((differ & ~ties).sum())} bucket ids differ away from near-ties"
