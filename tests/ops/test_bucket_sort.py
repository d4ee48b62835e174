"""bucket_sort: every backend's (sorted_idx, undo_sort) equal the reference's exactly, int32: a
stable sort by (id, position), so there is one right answer whatever the ids. Fuzzed (up to 64
rows), then fixed shapes against a brute-force stable sort, LSH-shaped ids (rounds, the padding
bucket); the packed (row, id) keys of the compiled sorts on both sides of the 32- and 64-bit key
widths; the compiled op's opcheck, torch.compile, same bits on any thread count, the CUDA sort on
a GPU, and bad input. bucket_sort_packed (keys packed by lsh_hash_packed) against the sort of the
ids they pack, on both sides of the key widths, and its bad input."""
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
        # leading dims (batch, heads) of any rank, 0 to 2, up to 64 rows: all rows sort at once
        lead=tuple(draw(st.lists(st.integers(1, 3 if tiny else 8), max_size=2))),
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
    assert sorted_idx.dtype == undo_sort.dtype == torch.int32
    assert torch.equal(sorted_idx.cpu(), expected_idx), "sorted_idx differs from the stable sort"
    assert torch.equal(undo_sort.cpu(), expected_undo), "undo_sort is not the inverse permutation"


test_fuzz, test_fuzz_slow = fuzz_tests(check, cases)


def brute_force_sort(buckets):
    """Sort each row by (bucket, position) with Python's sort, which is stable by definition."""
    rows = buckets.reshape(-1, buckets.shape[-1]).tolist()
    order = [sorted(range(len(row)), key=lambda i: (row[i], i)) for row in rows]
    return torch.tensor(order, dtype=torch.int32).reshape(buckets.shape)


SHAPES = [(1, 1, 1), (2, 3, 50), (3, 1, 257), (1, 4, 1024), (7,)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("num_buckets", [1, 2, 7, 300])
def test_matches_brute_force(backend, device, shape, num_buckets):
    buckets = torch.randint(0, num_buckets, shape)
    sorted_idx, undo_sort = (t.cpu() for t in functional.bucket_sort(buckets.to(device), num_buckets, backend=backend))
    assert torch.equal(sorted_idx, brute_force_sort(buckets))
    positions = torch.arange(shape[-1], dtype=torch.int32).expand(shape)
    assert torch.equal(sorted_idx.gather(-1, undo_sort), positions)
    assert torch.equal(undo_sort.gather(-1, sorted_idx), positions)


def test_non_contiguous_input(backend, device):
    buckets = torch.randint(0, 9, (5, 40, 3)).transpose(1, 2)
    sorted_idx, _ = functional.bucket_sort(buckets.to(device), 9, backend=backend)
    assert torch.equal(sorted_idx.cpu(), brute_force_sort(buckets))


def test_inverse_only_when_asked(backend, device):
    buckets = torch.randint(0, 5, (2, 3, 30), device=device)
    sorted_idx, undo_sort = functional.bucket_sort(buckets, 5, inverse=False, backend=backend)
    assert undo_sort is None
    assert torch.equal(sorted_idx, functional.bucket_sort(buckets, 5, backend=backend)[0])


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("rows, seq_len", [((2, 4), 512), ((8, 8), 64), ((1, 3), 5)])
def test_equals_reference_on_lsh_shaped_ids(backend, device, rows, seq_len, padded):
    """Ids as lsh_hash writes them: round r's in [r * n', (r + 1) * n'), padding positions in each
    round's extra bucket; rows longer than num_buckets and shorter (5 positions, 4 rounds of 33)."""
    n_hashes, n_buckets = 4, 32
    per_round = n_buckets + padded
    buckets = torch.randint(0, n_buckets, (*rows, n_hashes, seq_len))
    if padded:
        buckets[..., seq_len // 2 :] = n_buckets
    buckets = (buckets + per_round * torch.arange(n_hashes).view(-1, 1)).flatten(-2)
    ours = functional.bucket_sort(buckets.to(device), n_hashes * per_round, backend=backend)
    ref = reference.sort_buckets(buckets, n_hashes * per_round)
    assert torch.equal(ours[0].cpu(), ref[0]) and torch.equal(ours[1].cpu(), ref[1])


@requires_extension
@pytest.mark.parametrize(
    "rows, num_buckets",
    [
        (4, 2**30),  # rows * num_buckets = 2^32: the largest key, 2^32 - 1, is the last 32-bit one
        (5, 2**30),  # 5 * 2^30 - 1 needs 33 bits: 64-bit keys
        (2, 2**31 + 1),  # row 1's keys all lie past 2^32
        (4, 2**62),  # rows * num_buckets = 2^64: the last 64-bit keys
        (5, 2**62),  # past 64 bits: each row sorts alone
    ],
)
def test_packed_keys_on_both_sides_of_the_key_widths(rows, num_buckets):
    """The compiled sorts order packed keys row * num_buckets + id (csrc/sort_keys.h), 32 bits wide
    while rows * num_buckets <= 2^32; the C++ sort takes that path for rows shorter than
    num_buckets, so a key that wrapped would move its entry to another row or out of order. Ids
    from the top and the bottom of the range, with ties."""
    ids = torch.tensor([num_buckets - 1, 0, num_buckets - 2, num_buckets // 2, 1])
    buckets = ids[torch.randint(0, 5, (rows, 7))]
    buckets[-1, :2] = num_buckets - 1
    ours = functional.bucket_sort(buckets, num_buckets, backend="cpu")
    ref = reference.sort_buckets(buckets, num_buckets)
    assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])


@requires_extension
@pytest.mark.parametrize("num_buckets", [64, 5000])  # a counting sort per row, packed keys per thread's rows
def test_same_bits_across_thread_counts(num_buckets):
    buckets = torch.randint(0, num_buckets, (3, 8, 2048))
    assert_same_bits_on_thread_counts(lambda: torch.ops.reformer_kernels.bucket_sort(buckets, num_buckets), counts=(1, 2))


@requires_extension
def test_opcheck():
    buckets = torch.randint(0, 16, (2, 3, 40))
    torch.library.opcheck(torch.ops.reformer_kernels.bucket_sort.default, (buckets, 16))
    torch.library.opcheck(torch.ops.reformer_kernels.bucket_sort.default, (buckets.transpose(0, 1), 16))


@requires_extension
def test_under_torch_compile():
    buckets = torch.randint(0, 16, (2, 3, 40))
    compiled = torch.compile(lambda b: torch.ops.reformer_kernels.bucket_sort(b, 16), fullgraph=True, backend="eager")
    assert torch.equal(compiled(buckets), reference.argsort_buckets(buckets, 16))


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
        # expanded, not allocated: 2^31 ids in a row are more than int32 sorted_idx indexes
        (torch.zeros(1, dtype=torch.int64).expand(2**31), 1, ValueError, r"int32 sorted_idx can index \(2\^31 - 1\)"),
    ],
)
def test_bad_input(buckets, num_buckets, error, match):
    with pytest.raises(error, match=match):
        functional.bucket_sort(buckets, num_buckets)


def test_inverse_must_be_a_bool():
    with pytest.raises(TypeError, match="inverse must be True or False"):
        functional.bucket_sort(torch.tensor([[0, 1]]), 2, inverse=1)


@requires_extension
def test_kernel_rejects_out_of_range_directly():
    """Calling the op without the functional layer still raises, never writes out of bounds."""
    with pytest.raises(ValueError, match="outside"):
        torch.ops.reformer_kernels.bucket_sort(torch.tensor([[0, 9]]), 4)
    with pytest.raises(TypeError, match="int64"):
        torch.ops.reformer_kernels.bucket_sort(torch.tensor([[0.0, 1.0]]), 4)
    with pytest.raises(ValueError, match=r"int32 sorted_idx can index \(2\^31 - 1\)"):
        torch.ops.reformer_kernels.bucket_sort(torch.zeros(1, dtype=torch.int64).expand(2**31), 1)


@requires_cuda_kernels
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 4, 4096), (3, 8, 1000), (8, 8, 700)])
@pytest.mark.parametrize("num_buckets", [1, 2, 64, 4 * 257, 70000, 2**27, 2**40])
def test_cuda_equals_reference(shape, num_buckets):
    """One device-wide sort of packed keys: 32-bit keys up to rows * num_buckets = 2^32, 64-bit past
    that (64 rows of 2^27 ids, 2^40 ids)."""
    buckets = torch.randint(0, num_buckets, shape, device="cuda")
    buckets[..., : shape[-1] // 3] = buckets[..., :1]  # ties
    ours = functional.bucket_sort(buckets, num_buckets, backend="cuda")
    ref = reference.sort_buckets(buckets.cpu(), num_buckets)
    assert ours[0].dtype == torch.int32
    assert torch.equal(ours[0].cpu(), ref[0]) and torch.equal(ours[1].cpu(), ref[1])


@requires_cuda_kernels
def test_cuda_packed_keys_at_the_64_bit_boundary():
    num_buckets = 2**62
    buckets = torch.tensor([[num_buckets - 1, 0, num_buckets - 1, 5]] * 4, device="cuda")
    sorted_idx = torch.ops.reformer_kernels.bucket_sort(buckets, num_buckets)
    assert torch.equal(sorted_idx.cpu(), reference.argsort_buckets(buckets.cpu(), num_buckets))
    with pytest.raises(ValueError, match="do not fit the 64-bit sort key"):
        torch.ops.reformer_kernels.bucket_sort(torch.cat([buckets, buckets[:1]]), num_buckets)


@requires_cuda_kernels
def test_cuda_opcheck():
    buckets = torch.randint(0, 16, (2, 3, 40), device="cuda")
    torch.library.opcheck(torch.ops.reformer_kernels.bucket_sort.default, (buckets, 16))


def packed(ids, num_keys, dtype):
    """csrc/sort_keys.h's keys of ``ids`` (..., N): row * num_keys + id, rows counted over the leading dims."""
    rows = torch.arange(ids[..., 0].numel()).view(*ids.shape[:-1], 1)
    return (rows * num_keys + ids).to(dtype)


PACKED_CASES = [
    ((2, 3), 50, 7, torch.uint32),  # a counting sort per row
    ((3,), 50, 300, torch.uint32),  # rows shorter than num_keys: sorts of packed pairs
    ((4,), 7, 2**30, torch.uint32),  # rows * num_keys = 2^32: the largest key, 2^32 - 1, is the last 32-bit one
    ((5,), 7, 2**30, torch.uint64),  # 33 bits
]


def check_packed_sort(lead, n, num_keys, key_dtype, device):
    ids = torch.randint(0, num_keys, (*lead, n))
    ids[..., :3] = num_keys - 1  # ties at the top of the range
    positions = torch.randint(0, 2**31 - 1, (*lead, n), dtype=torch.int32)  # any values: they are carried
    sorted_idx = torch.ops.reformer_kernels.bucket_sort_packed(packed(ids, num_keys, key_dtype).to(device),
                                                               positions.to(device), num_keys)
    assert sorted_idx.dtype == torch.int32
    assert torch.equal(sorted_idx.cpu(), positions.gather(-1, reference.argsort_buckets(ids, num_keys).long()))


@requires_extension
@pytest.mark.parametrize("lead, n, num_keys, key_dtype", PACKED_CASES)
def test_packed_sort_is_the_stable_sort_of_the_ids_carrying_positions(lead, n, num_keys, key_dtype):
    check_packed_sort(lead, n, num_keys, key_dtype, torch.device("cpu"))


@requires_extension
@pytest.mark.parametrize("key_dtype", [torch.uint32, torch.uint64])
def test_packed_opcheck(key_dtype):
    ids = torch.randint(0, 16, (2, 3, 40))
    positions = torch.arange(40, dtype=torch.int32).expand(2, 3, 40)
    torch.library.opcheck(torch.ops.reformer_kernels.bucket_sort_packed.default, (packed(ids, 16, key_dtype), positions, 16))


@requires_extension
def test_packed_sort_rejects_bad_input():
    ids = torch.randint(0, 4, (2, 5))
    keys, positions = packed(ids, 4, torch.uint32), torch.arange(5, dtype=torch.int32).expand(2, 5)
    sort = torch.ops.reformer_kernels.bucket_sort_packed
    with pytest.raises(ValueError, match=r"key [0-3] in row 1 is outside its row's .* = \[4, 8\)"):
        sort(torch.cat([keys[:1], ids[1:].to(torch.uint32)]), positions, 4)  # row 1 not packed
    with pytest.raises(ValueError, match=r"key (8|9|10|11) in row 1 is outside"):
        sort(packed(ids + torch.tensor([[0], [4]]), 4, torch.uint32), positions, 4)  # row 1's ids past num_keys
    with pytest.raises(TypeError, match="keys must be uint32 or uint64"):
        sort(keys.long(), positions, 4)
    with pytest.raises(TypeError, match="positions must be int32"):
        sort(keys, positions.long(), 4)
    with pytest.raises(ValueError, match="must match keys"):
        sort(keys, positions[:, :4], 4)
    with pytest.raises(ValueError, match="num_keys must be >= 1"):
        sort(keys, positions, 0)


@requires_cuda_kernels
@pytest.mark.parametrize("lead, n, num_keys, key_dtype", PACKED_CASES + [((8, 8), 4096, 64, torch.uint32)])
def test_cuda_packed_sort_is_the_stable_sort_of_the_ids(lead, n, num_keys, key_dtype):
    check_packed_sort(lead, n, num_keys, key_dtype, torch.device("cuda"))


@requires_cuda_kernels
def test_cuda_packed_opcheck():
    ids = torch.randint(0, 16, (2, 3, 40))
    positions = torch.arange(40, dtype=torch.int32).expand(2, 3, 40).cuda()
    torch.library.opcheck(torch.ops.reformer_kernels.bucket_sort_packed.default,
                          (packed(ids, 16, torch.uint32).cuda(), positions, 16))
