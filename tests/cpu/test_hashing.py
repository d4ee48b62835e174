"""The CPU hashing kernel against the reference: identical buckets and num_keys for int and
factorized bucket counts, with and without padding, in every float dtype."""
import pytest
import torch

from reformer_kernels import functional, reference

from .helpers import lsh_hash_cpu, padding_mask, requires_extension

pytestmark = requires_extension


def _rotations(heads, head_dim, n_hashes, n_buckets, dtype=torch.float64):
    size = n_buckets if isinstance(n_buckets, int) else sum(n_buckets)
    return torch.randn(heads, head_dim, n_hashes, size // 2, dtype=dtype)


@pytest.mark.parametrize(
    "batch, heads, seq_len, head_dim, n_hashes, n_buckets, mask_kind",
    [
        (1, 1, 7, 1, 1, 2, None),
        (3, 8, 100, 16, 2, 8, "padded"),
        (2, 2, 64, 64, 8, (4, 8), "fully_padded"),
        (1, 3, 130, 128, 4, (2, 2, 4), None),
    ],
)
def test_matches_reference_float64(batch, heads, seq_len, head_dim, n_hashes, n_buckets, mask_kind):
    vectors = torch.randn(batch, heads, seq_len, head_dim, dtype=torch.float64)
    rotations = _rotations(heads, head_dim, n_hashes, n_buckets)
    attention_mask = padding_mask(batch, seq_len, mask_kind)
    expected, expected_keys = reference.hash_vectors(vectors, rotations, n_buckets, attention_mask)
    actual, num_keys = lsh_hash_cpu(vectors, rotations, n_buckets, attention_mask)
    assert num_keys == expected_keys
    assert torch.equal(actual, expected)


def test_all_ones_mask_adds_no_padding_bucket():
    vectors = torch.randn(2, 2, 16, 8, dtype=torch.float64)
    rotations = _rotations(2, 8, 2, 4)
    unmasked = lsh_hash_cpu(vectors, rotations, 4)
    masked = lsh_hash_cpu(vectors, rotations, 4, torch.ones(2, 16, dtype=torch.bool))
    assert unmasked[1] == masked[1] == 8
    assert torch.equal(unmasked[0], masked[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_agrees_except_near_ties(dtype):
    """Rounding may flip an argmax only where the two best rotated values nearly tie."""
    vectors = torch.randn(2, 4, 64, 32).to(dtype)
    rotations = _rotations(4, 32, 2, 8, dtype=torch.float32).to(dtype)
    actual, _ = lsh_hash_cpu(vectors, rotations, 8)
    expected, _ = reference.hash_vectors(vectors.double(), rotations.double(), 8)
    rotated = torch.einsum("bhld,hdnr->bhnlr", vectors.double(), rotations.double())
    top2 = torch.cat([rotated, -rotated], dim=-1).topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1] > 1e-3 * top2[..., 0].abs()).flatten(2)
    assert clear.float().mean() > 0.9
    assert torch.equal(actual[clear], expected[clear])


def test_functional_cpu_backend_and_opcheck():
    vectors = torch.randn(2, 2, 16, 8)
    rotations = _rotations(2, 8, 2, (2, 4), dtype=torch.float32)
    attention_mask = padding_mask(2, 16, "padded")
    expected = reference.hash_vectors(vectors, rotations, (2, 4), attention_mask)
    actual = functional.lsh_hash(vectors, rotations, (2, 4), attention_mask=attention_mask, backend="cpu")
    assert actual[1] == expected[1]
    assert torch.equal(actual[0], expected[0])
    torch.library.opcheck(torch.ops.reformer_kernels.lsh_hash.default, (vectors, rotations, [2, 4], attention_mask))


def test_direct_op_calls_reject_bad_inputs():
    vectors = torch.randn(1, 2, 8, 4)
    rotations = _rotations(2, 4, 1, 4, dtype=torch.float32)

    def call(vectors=vectors, rotations=rotations, n_buckets=(4,), mask=None):
        return torch.ops.reformer_kernels.lsh_hash(vectors, rotations, list(n_buckets), mask)

    with pytest.raises(TypeError, match="floating"):
        call(vectors=vectors.long())
    with pytest.raises(TypeError, match="dtype of vectors"):
        call(rotations=rotations.double())
    with pytest.raises(ValueError, match="even"):
        call(n_buckets=(3,))
    with pytest.raises(ValueError, match="sum\\(n_buckets\\) / 2"):
        call(n_buckets=(8,))
    with pytest.raises(ValueError, match="heads, head_dim"):
        call(rotations=rotations[:1])
    with pytest.raises(ValueError, match="attention_mask"):
        call(mask=torch.ones(1, 9, dtype=torch.bool))


def test_head_split_views_are_read_in_place():
    """Vectors as (B, L, H, d).transpose(1, 2) views, as a layer's projection gives them: same buckets."""
    torch.manual_seed(5)
    vectors = torch.randn(2, 3, 40, 8)
    rotations = torch.randn(3, 8, 2, 4)
    view = vectors.transpose(1, 2).contiguous().transpose(1, 2)
    assert not view.is_contiguous()
    assert torch.equal(lsh_hash_cpu(view, rotations, 8)[0], lsh_hash_cpu(vectors, rotations, 8)[0])


def test_more_buckets_than_32_bit_ids_hold_is_an_error():
    vectors = torch.randn(1, 1, 4, 4)
    rotations = torch.randn(1, 4, 1, 31)
    with pytest.raises(ValueError, match=r"make more than 2\^30 buckets"):
        torch.ops.reformer_kernels.lsh_hash(vectors, rotations, [2] * 31, None)
