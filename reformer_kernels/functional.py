"""The public functional API. Every op validates its inputs here, once for all backends, then
runs on the backend chosen by ``reformer_kernels.backends`` (argument ``backend=``, the
``use_backend`` context, the REFORMER_KERNELS_BACKEND variable, or "auto")."""
from __future__ import annotations

import torch

from . import backends, reference

backends.register("bucket_sort", "reference", reference.sort_buckets)


def bucket_sort(buckets: torch.Tensor, num_buckets: int, *, backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable sort of LSH bucket ids by (bucket, position) along the last dimension.

    Args:
        buckets: (..., N) int64, values in [0, num_buckets): bucket ids with the hash-round offsets
            already added (round r of n_buckets buckets maps bucket b to r * n_buckets + b), so one
            sort orders by (round, bucket, position).
        num_buckets: int, the exclusive upper bound of the ids (n_hashes * n_buckets, counting the
            extra padding bucket where there is one).
        backend: see ``reformer_kernels.backends``.

    Returns:
        ``(sorted_idx, undo_sort)``, both (..., N) int64: ``sorted_idx`` lists positions in sorted
        order (ties keep position order), ``undo_sort`` is its inverse permutation.
    """
    if not isinstance(buckets, torch.Tensor):
        raise TypeError(f"bucket_sort: buckets must be a torch.Tensor, got {type(buckets).__name__}")
    if buckets.dtype != torch.int64:
        raise TypeError(f"bucket_sort: buckets must be int64, got {buckets.dtype}; convert with buckets.long()")
    if buckets.dim() < 1:
        raise ValueError("bucket_sort: buckets must have at least one dimension (..., N), got a 0-d tensor")
    if isinstance(num_buckets, bool) or not isinstance(num_buckets, int) or num_buckets < 1:
        raise ValueError(f"bucket_sort: num_buckets must be a positive int, got {num_buckets!r}")
    if buckets.numel() > 0:
        low, high = torch.aminmax(buckets)
        if low.item() < 0 or high.item() >= num_buckets:
            raise ValueError(
                f"bucket_sort: bucket ids span [{low.item()}, {high.item()}] but must lie in [0, num_buckets={num_buckets}); "
                "pass num_buckets = n_hashes * n_buckets (+ n_hashes for a padding bucket)"
            )
    _, impl = backends.select("bucket_sort", buckets.device, backend)
    return impl(buckets, num_buckets)
