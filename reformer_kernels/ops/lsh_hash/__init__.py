"""lsh_hash: angular LSH bucket ids (rotate, argmax over [xR, -xR] per bucket factor, padding
bucket, round offset), the sort keys of ``bucket_sort``. The public function, with its checks, is
``reformer_kernels.functional.lsh_hash``.

Two schemas, declared in csrc/reformer.cpp:
    lsh_hash(vectors, rotations, int[] n_buckets, attention_mask) -> buckets
    lsh_hash_packed(vectors, rotations, int[] n_buckets, attention_mask) -> (keys, positions)
with n_buckets the bucket factors and attention_mask given only when it pads something. Each is
implemented by csrc/cpu/hashing.cpp ("cpu"), csrc/cuda/hashing.cu ("cuda") and, with the same
arguments, reformer_kernels::triton_lsh_hash and triton_lsh_hash_packed (``triton_kernels.py``,
"triton"). The backend impl of "lsh_hash" has the reference's signature
(``reference.hash_vectors``: the n_buckets int or tuple and any mask in, ``(buckets, num_keys)``
out); ``hash_with`` adapts a compiled op to it.

lsh_hash_packed writes the ids already packed as the GPU radix sort's keys, row * num_keys + id
(csrc/sort_keys.h), beside their positions, so that hash -> sort runs without the packing pass
and without int64 ids. It is reached through the backend op "lsh_hash_sort" (same arguments,
sorted_idx out; ``functional.lsh_hash_sort``, which lsh_self_attention and the LSH layer's every
path but the decoding cache's prefill call): on GPU backends lsh_hash_packed -> bucket_sort_packed
(``hash_sort_packed``); on the CPU the int64 ids' counting sort, O(N) per row, which packed keys
would only slow down. The prefill keeps lsh_hash -> bucket_sort: its cache stores the bucket ids.
"""
import math

import torch

from ... import _extension, backends, reference
from ...reference.hashing import bucket_factors, pads_anything
from ..bucket_sort import packed_key_dtype


def _lsh_hash_fake(vectors, rotations, n_buckets, attention_mask):
    batch, heads, seq_len, _ = vectors.shape
    return vectors.new_empty((batch, heads, rotations.shape[2] * seq_len), dtype=torch.int64)


def hashed_keys(rotations: torch.Tensor, n_buckets: list[int], attention_mask: torch.Tensor | None) -> int:
    """num_keys of a compiled hash given ``attention_mask`` (only when it pads): n_hashes rounds of
    prod(n_buckets) ids, and one more per round for the padding bucket."""
    return rotations.shape[2] * (math.prod(n_buckets) + (attention_mask is not None))


def _lsh_hash_packed_fake(vectors, rotations, n_buckets, attention_mask):
    batch, heads, seq_len, _ = vectors.shape
    shape = (batch, heads, rotations.shape[2] * seq_len)
    dtype = packed_key_dtype("lsh_hash_packed", batch * heads, hashed_keys(rotations, n_buckets, attention_mask))
    return vectors.new_empty(shape, dtype=dtype), vectors.new_empty(shape, dtype=torch.int32)


def _kernel_arguments(vectors, rotations, n_buckets, attention_mask):
    """A compiled hash's arguments: the factors as a list, the mask only where it pads."""
    # The padding bucket exists only when the mask pads something somewhere in the batch, so the
    # kernel gets the mask only then (and the number of buckets follows). Off the CPU, reading the
    # mask would be a host sync per layer, so there any mask counts, as inside torch.compile: an
    # empty padding bucket changes the ids but not the sort order, hence not the attention.
    pads = attention_mask is not None and (attention_mask.device.type != "cpu" or pads_anything(attention_mask))
    return vectors.detach(), rotations.detach(), list(bucket_factors(n_buckets)), attention_mask if pads else None


def hash_with(op):
    """The "lsh_hash" backend impl of a compiled op of the lsh_hash schema; also gives it its fake."""
    torch.library.register_fake(op, _lsh_hash_fake)

    def lsh_hash(vectors, rotations, n_buckets, attention_mask=None):
        arguments = _kernel_arguments(vectors, rotations, n_buckets, attention_mask)
        return op(*arguments), hashed_keys(*arguments[1:])

    return lsh_hash


def hash_sort_packed(op):
    """The "lsh_hash_sort" backend impl of a compiled op of the lsh_hash_packed schema: its keys and
    positions go to bucket_sort_packed as they are; also gives the op its fake."""
    torch.library.register_fake(op, _lsh_hash_packed_fake)

    def lsh_hash_sort(vectors, rotations, n_buckets, attention_mask=None):
        arguments = _kernel_arguments(vectors, rotations, n_buckets, attention_mask)
        keys, positions = op(*arguments)
        return torch.ops.reformer_kernels.bucket_sort_packed(keys, positions, hashed_keys(*arguments[1:]))

    return lsh_hash_sort


def sort_after(hash_impl, sort_impl):
    """The "lsh_hash_sort" impl that sorts the int64 ids of an "lsh_hash" impl with a "bucket_sort" one."""

    def lsh_hash_sort(vectors, rotations, n_buckets, attention_mask=None):
        return sort_impl(*hash_impl(vectors, rotations, n_buckets, attention_mask=attention_mask))

    return lsh_hash_sort


backends.register("lsh_hash", "reference", reference.hash_vectors)
backends.register("lsh_hash_sort", "reference", sort_after(reference.hash_vectors, reference.argsort_buckets))
if _extension.loaded():
    compiled = hash_with(torch.ops.reformer_kernels.lsh_hash.default)
    backends.register("lsh_hash", "cpu", compiled)
    backends.register("lsh_hash_sort", "cpu", sort_after(compiled, torch.ops.reformer_kernels.bucket_sort))
    compiled_packed = hash_sort_packed(torch.ops.reformer_kernels.lsh_hash_packed.default)
    if _extension.with_cuda():
        backends.register("lsh_hash", "cuda", compiled)
        backends.register("lsh_hash_sort", "cuda", compiled_packed)
