"""lsh_hash: the one-pass hashing kernels of csrc/cpu/hashing.cpp and csrc/cuda/hashing.cu behind
reformer_kernels::lsh_hash (rotate, argmax over [xR, -xR] per bucket factor, padding bucket, round offset)."""
import math

import torch

from .. import _extension, backends
from ..reference.hashing import bucket_factors


def _lsh_hash_compiled(
    vectors: torch.Tensor,
    rotations: torch.Tensor,
    n_buckets: int | tuple[int, ...],
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    factors = list(bucket_factors(n_buckets))
    # The padding bucket exists only when the mask pads something somewhere in the batch, so the
    # kernel gets the mask only then (and the number of buckets follows).
    pads = attention_mask is not None and not bool(attention_mask.bool().all())
    buckets = torch.ops.reformer_kernels.lsh_hash(vectors.detach(), rotations.detach(), factors, attention_mask if pads else None)
    return buckets, rotations.shape[2] * (math.prod(factors) + int(pads))


if _extension.loaded():

    @torch.library.register_fake("reformer_kernels::lsh_hash")
    def _lsh_hash_fake(vectors, rotations, n_buckets, attention_mask):
        batch, heads, seq_len, _ = vectors.shape
        return vectors.new_empty((batch, heads, rotations.shape[2] * seq_len), dtype=torch.int64)

    backends.register("lsh_hash", "cpu", _lsh_hash_compiled)
    if _extension.with_cuda():
        backends.register("lsh_hash", "cuda", _lsh_hash_compiled)
