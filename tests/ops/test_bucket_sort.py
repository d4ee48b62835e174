"""bucket_sort: every backend's (sorted_idx, undo_sort) equal the reference's exactly: a stable
sort by (id, position), so there is one right answer whatever the ids."""
import pytest
import torch
from hypothesis import strategies as st

from reformer_kernels import functional, reference

from .fuzz import fuzz


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


def test_fuzz(backend, device):
    fuzz(check, cases, backend, device, "default")


@pytest.mark.slow
def test_fuzz_slow(backend, device):
    fuzz(check, cases, backend, device, "slow")
