"""bucket_sort: every backend against a brute-force stable sort, plus opcheck and bad input."""
import pytest
import torch

from reformer_kernels import functional, reference

from .marks import requires_extension


def brute_force_sort(buckets):
    """Sort each row by (bucket, position) with Python's sort, which is stable by definition."""
    rows = buckets.reshape(-1, buckets.shape[-1]).tolist()
    order = [sorted(range(len(row)), key=lambda i: (row[i], i)) for row in rows]
    return torch.tensor(order, dtype=torch.int64).reshape(buckets.shape)


SHAPES = [(1, 1, 1), (2, 3, 50), (3, 1, 257), (1, 4, 1024), (7,)]


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=requires_extension)])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("num_buckets", [1, 2, 7, 300])
def test_bucket_sort_matches_brute_force(backend, shape, num_buckets):
    buckets = torch.randint(0, num_buckets, shape)
    sorted_idx, undo_sort = functional.bucket_sort(buckets, num_buckets, backend=backend)
    assert torch.equal(sorted_idx, brute_force_sort(buckets))
    positions = torch.arange(shape[-1]).expand(shape)
    assert torch.equal(sorted_idx.gather(-1, undo_sort), positions)
    assert torch.equal(undo_sort.gather(-1, sorted_idx), positions)


@requires_extension
def test_bucket_sort_cpu_equals_reference_on_lsh_shaped_keys():
    n_hashes, n_buckets, L = 4, 32, 512
    buckets = torch.randint(0, n_buckets, (2, 4, n_hashes, L)) + n_buckets * torch.arange(n_hashes).view(1, 1, -1, 1)
    buckets = buckets.flatten(2)
    ours = functional.bucket_sort(buckets, n_hashes * n_buckets, backend="cpu")
    ref = reference.sort_buckets(buckets, n_hashes * n_buckets)
    assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])


@requires_extension
def test_bucket_sort_same_bits_across_thread_counts():
    buckets = torch.randint(0, 64, (3, 8, 2048))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.reformer_kernels.bucket_sort(buckets, 64)
        torch.set_num_threads(2)
        two = torch.ops.reformer_kernels.bucket_sort(buckets, 64)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


@requires_extension
def test_bucket_sort_opcheck():
    buckets = torch.randint(0, 16, (2, 3, 40))
    torch.library.opcheck(torch.ops.reformer_kernels.bucket_sort.default, (buckets, 16))
    torch.library.opcheck(torch.ops.reformer_kernels.bucket_sort.default, (buckets.transpose(0, 1), 16))


@requires_extension
def test_bucket_sort_under_torch_compile():
    buckets = torch.randint(0, 16, (2, 3, 40))
    compiled = torch.compile(lambda b: torch.ops.reformer_kernels.bucket_sort(b, 16), fullgraph=True, backend="eager")
    assert all(torch.equal(a, b) for a, b in zip(compiled(buckets), reference.sort_buckets(buckets, 16)))


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=requires_extension)])
def test_bucket_sort_non_contiguous_input(backend):
    buckets = torch.randint(0, 9, (5, 40, 3)).transpose(1, 2)
    sorted_idx, _ = functional.bucket_sort(buckets, 9, backend=backend)
    assert torch.equal(sorted_idx, brute_force_sort(buckets))


@pytest.mark.parametrize(
    "buckets, num_buckets, error, match",
    [
        (torch.zeros(2, 3), 4, TypeError, "int64"),
        (torch.zeros(2, 3, dtype=torch.int32), 4, TypeError, "int64"),
        ([1, 2, 3], 4, TypeError, "torch.Tensor"),
        (torch.tensor(3), 4, ValueError, "at least one dimension"),
        (torch.tensor([[0, 1, 4]]), 4, ValueError, r"span \[0, 4\]"),
        (torch.tensor([[-1, 1, 2]]), 4, ValueError, r"span \[-1, 2\]"),
        (torch.tensor([[0, 1]]), 0, ValueError, "positive int"),
        (torch.tensor([[0, 1]]), 2.0, ValueError, "positive int"),
    ],
)
def test_bucket_sort_bad_input(buckets, num_buckets, error, match):
    with pytest.raises(error, match=match):
        functional.bucket_sort(buckets, num_buckets)


@requires_extension
def test_bucket_sort_kernel_rejects_out_of_range_directly():
    """Calling the op without the functional layer still raises, never writes out of bounds."""
    with pytest.raises(ValueError, match="outside"):
        torch.ops.reformer_kernels.bucket_sort(torch.tensor([[0, 9]]), 4)
    with pytest.raises(TypeError, match="int64"):
        torch.ops.reformer_kernels.bucket_sort(torch.tensor([[0.0, 1.0]]), 4)
