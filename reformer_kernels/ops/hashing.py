"""lsh_hash: the one-pass hashing kernels of csrc/cpu/hashing.cpp and csrc/cuda/hashing.cu behind
reformer_kernels::lsh_hash (rotate, argmax over [xR, -xR] per bucket factor, padding bucket, round offset)."""
import math

import torch

from .. import _extension, backends
from ..reference.hashing import bucket_factors, pads_anything


def _lsh_hash_compiled(
    vectors: torch.Tensor,
    rotations: torch.Tensor,
    n_buckets: int | tuple[int, ...],
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    factors = list(bucket_factors(n_buckets))
    # The padding bucket exists only when the mask pads something somewhere in the batch, so the
    # kernel gets the mask only then (and the number of buckets follows).
    pads = pads_anything(attention_mask)
    buckets = torch.ops.reformer_kernels.lsh_hash(vectors.detach(), rotations.detach(), factors, attention_mask if pads else None)
    return buckets, rotations.shape[2] * (math.prod(factors) + int(pads))


@torch.library.custom_op("reformer_kernels::seeded_randn", mutates_args=())
def seeded_randn(shape: list[int], seed: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.manual_seed(seed); torch.randn(shape)`` without touching the global generator: the
    rotations of a layer with a hash_seed. An op rather than Python, because torch.compile cannot
    create a torch.Generator inside a graph."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=dtype, device=device)


@seeded_randn.register_fake
def _seeded_randn_fake(shape, seed, dtype, device):
    return torch.empty(shape, dtype=dtype, device=device)


if _extension.loaded():

    @torch.library.register_fake("reformer_kernels::lsh_hash")
    def _lsh_hash_fake(vectors, rotations, n_buckets, attention_mask):
        batch, heads, seq_len, _ = vectors.shape
        return vectors.new_empty((batch, heads, rotations.shape[2] * seq_len), dtype=torch.int64)

    backends.register("lsh_hash", "cpu", _lsh_hash_compiled)
    if _extension.with_cuda():
        backends.register("lsh_hash", "cuda", _lsh_hash_compiled)
