"""bucket_sort: the stable sort of LSH bucket ids by (round, bucket, position), emitting sorted_idx
(the public function, with its checks and the inverse permutation undo_sort for callers that ask,
is ``reformer_kernels.functional.bucket_sort``).

One schema, declared in csrc/reformer.cpp: bucket_sort(buckets, num_buckets) -> sorted_idx (int32),
implemented by csrc/cpu/sorting.cpp (a counting sort, or a sort of packed (row, id) keys with
their positions for rows shorter than num_buckets, so that memory follows the input) and the
device-wide CUB radix sort of the same packed keys in csrc/cuda/sorting.cu (csrc/sort_keys.h);
``reference.argsort_buckets`` takes the same arguments. The sort
has no Triton kernel: the triton backend's bucket_sort is the compiled one (CUB on GPU, the C++
sort on CPU tensors under the interpreter), so that a whole hash -> sort -> attend pipeline runs
with backend="triton".

A second schema, bucket_sort_packed(keys, positions, num_keys) -> sorted_idx, sorts keys already
packed, as lsh_hash_packed writes them (uint32 or uint64 by ``packed_key_dtype``), carrying their
int32 positions: on the GPU the same radix sort without the packing pass. The LSH layer's
hash -> sort takes it (see ``ops.lsh_hash``); it has no backend entry of its own.
"""
import torch

from .. import _extension, backends, reference


def packed_key_dtype(op: str, rows: int, num_keys: int) -> torch.dtype:
    """The dtype of packed keys (csrc/sort_keys.h's packed_key_dtype): uint32 while rows * num_keys
    <= 2^32, uint64 up to 2^64, past that a ValueError naming ``op``."""
    largest = max(rows, 1) * num_keys
    if largest > 2**64:
        raise ValueError(
            f"{op}: {rows} rows * num_keys={num_keys} do not fit a 64-bit sort key; "
            "pass fewer rows (batch * heads) per call or fewer buckets"
        )
    return torch.uint32 if largest <= 2**32 else torch.uint64


def triton_can_sort() -> bool:
    """Whether the compiled sort serves the triton backend here. That backend runs CUDA tensors,
    or CPU tensors under the interpreter where no GPU is visible; on a GPU machine whose extension
    lacks CUDA it has no sort, so that "auto" says so and takes the reference sort instead of
    picking an entry that fails inside torch's dispatcher."""
    return _extension.loaded() and (_extension.with_cuda() or not torch.cuda.is_available())


backends.register("bucket_sort", "reference", reference.argsort_buckets)
if _extension.loaded():

    @torch.library.register_fake("reformer_kernels::bucket_sort")
    def _bucket_sort_fake(buckets, num_buckets):
        return torch.empty_like(buckets, dtype=torch.int32, memory_format=torch.contiguous_format)

    @torch.library.register_fake("reformer_kernels::bucket_sort_packed")
    def _bucket_sort_packed_fake(keys, positions, num_keys):
        return torch.empty_like(positions, memory_format=torch.contiguous_format)

    compiled = torch.ops.reformer_kernels.bucket_sort
    backends.register("bucket_sort", "cpu", compiled)
    if _extension.with_cuda():
        backends.register("bucket_sort", "cuda", compiled)
    if triton_can_sort():
        backends.register("bucket_sort", "triton", compiled)
