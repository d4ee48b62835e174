"""The CUDA kernels of reformer_kernels._C (bucket sort via CUB, one-pass hashing) on a real GPU.

On machines without a GPU these tests skip; tests/test_build.py still checks that the CUDA code was
compiled and registered there."""
import pytest
import torch

from reformer_kernels import _extension, functional, reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not _extension.with_cuda(), reason="reformer_kernels._C was built without CUDA"),
]


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 4, 4096), (3, 8, 1000)])
@pytest.mark.parametrize("num_buckets", [1, 2, 64, 4 * 257, 70000])
def test_bucket_sort_cuda_equals_reference(shape, num_buckets):
    buckets = torch.randint(0, num_buckets, shape, device="cuda")
    ours = functional.bucket_sort(buckets, num_buckets, backend="cuda")
    ref = reference.sort_buckets(buckets.cpu(), num_buckets)
    assert torch.equal(ours[0].cpu(), ref[0]) and torch.equal(ours[1].cpu(), ref[1])


def test_bucket_sort_cuda_opcheck():
    buckets = torch.randint(0, 16, (2, 3, 40), device="cuda")
    torch.library.opcheck(torch.ops.reformer_kernels.bucket_sort.default, (buckets, 16))


@pytest.mark.parametrize("n_buckets", [2, 32, (4, 8), (2, 4, 6)])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lsh_hash_cuda_equals_reference(n_buckets, padded, dtype):
    batch, heads, seq_len, head_dim, n_hashes = 2, 3, 300, 64, 4
    rotation_size = n_buckets if isinstance(n_buckets, int) else sum(n_buckets)
    vectors = torch.randn(batch, heads, seq_len, head_dim, dtype=dtype)
    rotations = torch.randn(heads, head_dim, n_hashes, rotation_size // 2, dtype=dtype)
    mask = None
    if padded:
        mask = torch.ones(batch, seq_len, dtype=torch.bool)
        mask[1, 250:] = False
    ref, ref_keys = reference.hash_vectors(vectors.double(), rotations.double(), n_buckets, mask)
    ours, keys = functional.lsh_hash(
        vectors.cuda(), rotations.cuda(), n_buckets, attention_mask=None if mask is None else mask.cuda(), backend="cuda"
    )
    assert keys == ref_keys
    # The kernel sums the rotation in a different order than the float64 oracle: near-ties may
    # flip in float32, never in float64.
    agreement = (ours.cpu() == ref).double().mean().item()
    assert agreement == 1.0 if dtype == torch.float64 else agreement > 0.999


def test_lsh_hash_cuda_opcheck():
    vectors = torch.randn(1, 2, 64, 16, device="cuda")
    rotations = torch.randn(2, 16, 2, 4, device="cuda")
    torch.library.opcheck(torch.ops.reformer_kernels.lsh_hash.default, (vectors, rotations, [8], None))
