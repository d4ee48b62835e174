"""bucket_sort: the stable counting sort of csrc/cpu/sorting.cpp and the CUB radix sort of
csrc/cuda/sorting.cu, both behind the schema reformer_kernels::bucket_sort."""
import torch

from .. import _extension, backends


def _bucket_sort_compiled(buckets: torch.Tensor, num_buckets: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.ops.reformer_kernels.bucket_sort(buckets, num_buckets)


if _extension.loaded():

    @torch.library.register_fake("reformer_kernels::bucket_sort")
    def _bucket_sort_fake(buckets, num_buckets):
        return torch.empty_like(buckets, memory_format=torch.contiguous_format), torch.empty_like(
            buckets, memory_format=torch.contiguous_format
        )

    backends.register("bucket_sort", "cpu", _bucket_sort_compiled)
    if _extension.with_cuda():
        backends.register("bucket_sort", "cuda", _bucket_sort_compiled)
