"""lsh_hash: angular LSH bucket ids (rotate, argmax over [xR, -xR] per bucket factor, padding
bucket, round offset), the sort keys of ``bucket_sort``. The public function, with its checks, is
``reformer_kernels.functional.lsh_hash``.

One schema, declared in csrc/reformer.cpp:
    lsh_hash(vectors, rotations, int[] n_buckets, attention_mask) -> buckets
with n_buckets the bucket factors and attention_mask given only when it pads something. It is
implemented by csrc/cpu/hashing.cpp ("cpu"), csrc/cuda/hashing.cu ("cuda") and, with the same
arguments, reformer_kernels::triton_lsh_hash (``triton_kernels.py``, "triton"). The backend impl
that ``backends`` runs has the reference's signature (``reference.hash_vectors``: the n_buckets
int or tuple and any mask in, ``(buckets, num_keys)`` out); ``hash_with`` adapts a compiled op to it.
"""
import math

import torch

from ... import _extension, backends, reference
from ...reference.hashing import bucket_factors, pads_anything


def _lsh_hash_fake(vectors, rotations, n_buckets, attention_mask):
    batch, heads, seq_len, _ = vectors.shape
    return vectors.new_empty((batch, heads, rotations.shape[2] * seq_len), dtype=torch.int64)


def hash_with(op):
    """The "lsh_hash" backend impl of a compiled op of the lsh_hash schema; also gives it its fake."""
    torch.library.register_fake(op, _lsh_hash_fake)

    def lsh_hash(vectors, rotations, n_buckets, attention_mask=None):
        factors = list(bucket_factors(n_buckets))
        # The padding bucket exists only when the mask pads something somewhere in the batch, so the
        # kernel gets the mask only then (and the number of buckets follows). Off the CPU, reading
        # the mask would be a host sync per layer, so there any mask counts, as inside torch.compile:
        # an empty padding bucket changes the ids but not the sort order, hence not the attention.
        pads = attention_mask is not None and (attention_mask.device.type != "cpu" or pads_anything(attention_mask))
        buckets = op(vectors.detach(), rotations.detach(), factors, attention_mask if pads else None)
        return buckets, rotations.shape[2] * (math.prod(factors) + int(pads))

    return lsh_hash


backends.register("lsh_hash", "reference", reference.hash_vectors)
if _extension.loaded():
    compiled = hash_with(torch.ops.reformer_kernels.lsh_hash.default)
    backends.register("lsh_hash", "cpu", compiled)
    if _extension.with_cuda():
        backends.register("lsh_hash", "cuda", compiled)
