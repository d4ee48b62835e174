"""Stable sort of LSH bucket ids: the order of the paper's "sort by (hash round, bucket, position)"."""
import torch


def argsort_buckets(buckets: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """``sorted_idx``: the stable argsort of ``buckets`` (..., N) int64 along the last dim, int32
    as the kernels return it (positions within a row, N < 2^31): ``buckets.gather(-1, sorted_idx)``
    is sorted, ties in position order. ``num_buckets`` bounds the ids (they lie in [0,
    num_buckets)); the reference does not need it but takes it to have the kernels' signature."""
    del num_buckets
    return torch.sort(buckets, dim=-1, stable=True).indices.int()


def invert_permutation(sorted_idx: torch.Tensor) -> torch.Tensor:
    """``undo_sort``, the inverse of the permutations ``sorted_idx`` (..., N) along the last dim, in
    its dtype: ``sorted_idx.gather(-1, undo_sort)`` is ``arange(N)``."""
    positions = torch.arange(sorted_idx.shape[-1], dtype=sorted_idx.dtype, device=sorted_idx.device)
    return torch.empty_like(sorted_idx).scatter_(-1, sorted_idx, positions.expand_as(sorted_idx))


def sort_buckets(buckets: torch.Tensor, num_buckets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sorted_idx, undo_sort)`` of ``buckets`` (..., N) int64: ``argsort_buckets`` and its
    ``invert_permutation``, both int32."""
    sorted_idx = argsort_buckets(buckets, num_buckets)
    return sorted_idx, invert_permutation(sorted_idx)
