"""Stable sort of LSH bucket ids: the order of the paper's "sort by (hash round, bucket, position)"."""
import torch


def sort_buckets(buckets: torch.Tensor, num_buckets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable argsort of ``buckets`` (..., N) int64 along the last dim, and its inverse.

    ``num_buckets`` bounds the ids (they lie in [0, num_buckets)); the reference does not need it
    but takes it to have the same signature as the kernels. Returns ``(sorted_idx, undo_sort)``:
    ``buckets.gather(-1, sorted_idx)`` is sorted, ties in position order, and
    ``sorted_idx.gather(-1, undo_sort)`` is ``arange(N)``.
    """
    del num_buckets
    sorted_idx = torch.sort(buckets, dim=-1, stable=True).indices
    undo_sort = torch.empty_like(sorted_idx)
    positions = torch.arange(buckets.shape[-1], device=buckets.device).expand_as(sorted_idx)
    undo_sort.scatter_(-1, sorted_idx, positions)
    return sorted_idx, undo_sort
