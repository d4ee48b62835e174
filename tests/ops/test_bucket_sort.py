"""bucket_sort: every backend's (sorted_idx, undo_sort) equal the reference's exactly: a stable
sort by (id, position), so there is one right answer whatever the ids. Fuzzed, then fixed shapes
against a brute-force stable sort; the compiled op's opcheck, torch.compile, same bits on any
thread count, the CUDA sort on a GPU, and bad input."""
import pytest
import torch
from hypothesis import strategies as st

from reformer_kernels import functional, reference

from tests.marks import requires_extension

from .fuzz import fuzz_tests
from .inputs import assert_same_bits_on_thread_counts, requires_cuda_kernels


@st.composite
def cases(draw, backend):
    tiny = backend == "triton"
    return dict(
        seed=draw(st.integers(0, 2**31 - 1)),
        # leading dims (batch, heads) of any rank, 0 to 2
        lead=tuple(draw(st.lists(st.integers(1, 3), max_size=2))),
        n=draw(st.integers(0, 200 if tiny else 600)),
        num_buckets=draw(st.one_of(st.integers(1, 8), st.integers(1, 2000))),
        # the ids of hashing use every id in a few rounds; few distinct ids make long ties
        distinct=draw(st.sampled_from(["all", "few", "one"])),
    )


def check(backend, device, case):
    torch.manual_seed(case["seed"])
    num_buckets, shape = case["num_buckets"], case["lead"] + (case["n"],)
    high = {"all": num_buckets, "few": min(num_buckets, 3), "one": 1}[case["distinct"]]
    buckets = torch.randint(0, high, shape, dtype=torch.int64)
    expected_idx, expected_undo = reference.sort_buckets(buckets, num_buckets)
    sorted_idx, undo_sort = functional.bucket_sort(buckets.to(device), num_buckets, backend=backend)
    assert sorted_idx.dtype == undo_sort.dtype == torch.int64
    assert torch.equal(sorted_idx.cpu(), expected_idx), "sorted_idx differs from the stable sort"
    assert torch.equal(undo_sort.cpu(), expected_undo), "undo_sort is not the inverse permutation"


test_fuzz, test_fuzz_slow = fuzz_tests(check, cases)


def brute_force_sort(buckets):
    """Sort each row by (bucket, position) with Python's sort, which is stable by definition."""
    rows = buckets.reshape(-1, buckets.shape[-1]).tolist()
    order = [sorted(range(len(row)), key=lambda i: (row[i], i)) for row in rows]
    return torch.tensor(order, dtype=torch.int64).reshape(buckets.shape)


SHAPES = [(1, 1, 1), (2, 3, 50), (3, 1, 257), (1, 4, 1024), (7,)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("num_buckets", [1, 2, 7, 300])
def test_matches_brute_force(backend, device, shape, num_buckets):
    buckets = torch.randint(0, num_buckets, shape)
    sorted_idx, undo_sort = (t.cpu() for t in functional.bucket_sort(buckets.to(device), num_buckets, backend=backend))
    assert torch.equal(sorted_idx, brute_force_sort(buckets))
    positions = torch.arange(shape[-1]).expand(shape)
    assert torch.equal(sorted_idx.gather(-1, undo_sort), positions)
    assert torch.equal(undo_sort.gather(-1, sorted_idx), positions)


def test_non_contiguous_input(backend, device):
    buckets = torch.randint(0, 9, (5, 40, 3)).transpose(1, 2)
    sorted_idx, _ = functional.bucket_sort(buckets.to(device), 9, backend=backend)
    assert torch.equal(sorted_idx.cpu(), brute_force_sort(buckets))


@requires_extension
def test_cpu_equals_reference_on_lsh_shaped_keys():
    n_hashes, n_buckets, L = 4, 32, 512
    buckets = torch.randint(0, n_buckets, (2, 4, n_hashes, L)) + n_buckets * torch.arange(n_hashes).view(1, 1, -1, 1)
    buckets = buckets.flatten(2)
    ours = functional.bucket_sort(buckets, n_hashes * n_buckets, backend="cpu")
    ref = reference.sort_buckets(buckets, n_hashes * n_buckets)
    assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])


@requires_extension
def test_same_bits_across_thread_counts():
    buckets = torch.randint(0, 64, (3, 8, 2048))
    assert_same_bits_on_thread_counts(lambda: torch.ops.reformer_kernels.bucket_sort(buckets, 64), counts=(1, 2))


@requires_extension
def test_opcheck():
    buckets = torch.randint(0, 16, (2, 3, 40))
    torch.library.opcheck(torch.ops.reformer_kernels.bucket_sort.default, (buckets, 16))
    torch.library.opcheck(torch.ops.reformer_kernels.bucket_sort.default, (buckets.transpose(0, 1), 16))


@requires_extension
def test_under_torch_compile():
    buckets = torch.randint(0, 16, (2, 3, 40))
    compiled = torch.compile(lambda b: torch.ops.reformer_kernels.bucket_sort(b, 16), fullgraph=True, backend="eager")
    assert all(torch.equal(a, b) for a, b in zip(compiled(buckets), reference.sort_buckets(buckets, 16)))


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
def test_bad_input(buckets, num_buckets, error, match):
    with pytest.raises(error, match=match):
        functional.bucket_sort(buckets, num_buckets)


@requires_extension
def test_kernel_rejects_out_of_range_directly():
    """Calling the op without the functional layer still raises, never writes out of bounds."""
    with pytest.raises(ValueError, match="outside"):
        torch.ops.reformer_kernels.bucket_sort(torch.tensor([[0, 9]]), 4)
    with pytest.raises(TypeError, match="int64"):
        torch.ops.reformer_kernels.bucket_sort(torch.tensor([[0.0, 1.0]]), 4)


@requires_cuda_kernels
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 4, 4096), (3, 8, 1000)])
@pytest.mark.parametrize("num_buckets", [1, 2, 64, 4 * 257, 70000])
def test_cuda_equals_reference(shape, num_buckets):
    buckets = torch.randint(0, num_buckets, shape, device="cuda")
    ours = functional.bucket_sort(buckets, num_buckets, backend="cuda")
    ref = reference.sort_buckets(buckets.cpu(), num_buckets)
    assert torch.equal(ours[0].cpu(), ref[0]) and torch.equal(ours[1].cpu(), ref[1])


@requires_cuda_kernels
def test_cuda_opcheck():
    buckets = torch.randint(0, 16, (2, 3, 40), device="cuda")
    torch.library.opcheck(torch.ops.reformer_kernels.bucket_sort.default, (buckets, 16))
