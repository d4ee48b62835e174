"""dropout_add in Triton: out = residual ± dropout(x), the residual connection of a reversible half, one pass.

Forward (y = x + dropout(f)) and the backward's reconstruction (x = y - dropout(f)) are the same
kernel with a sign. The dropout mask is never stored: element i's keep decision is a pure function
of (seed, philox_offset, i), so the backward regenerates it from two saved ints and the same kernel
computes grad_x = ±dropout(grad_out) (grad_residual is grad_out itself).

Random numbers: the Philox stream of ``reference/dropout.py`` over x's row-major elements, keyed
by (seed, philox_offset) from ``philox_seed_offset`` (the same bits as the cpu and reference
backends): element i takes word i % 4 of the counter (philox_offset / 4, i // 4) and is kept when
that word >> 1 is at least floor(p * 2^31), then scaled by 1 / (1 - p).
"""
from typing import Optional

import torch
import triton
import triton.language as tl

from ... import backends
from ...reference.dropout import keep_scale, keep_threshold
from ..triton_utils import check_dtype
from . import _fake, fused, register

BLOCK = 1024


@triton.jit
def philox_group(seed, philox_offset, group):
    """The four words of Philox counter (philox_offset / 4, group) under key ``seed``, for a tile
    of int64 group indices (element e is word e % 4 of group e // 4)."""
    base = philox_offset.to(tl.int64) // 4
    zero = tl.zeros(group.shape, tl.uint32)
    return tl.philox(seed, zero + (base & 0xFFFFFFFF).to(tl.uint32), zero + (base >> 32).to(tl.uint32),
                     (group & 0xFFFFFFFF).to(tl.uint32), (group >> 32).to(tl.uint32))


@triton.jit
def philox_groups(BLOCK: tl.constexpr):
    """This program's BLOCK elements as BLOCK / 4 Philox groups of 4 consecutive elements, one
    counter per group: (group indices (BLOCK / 4,), word within the group (1, 4), element indices
    (BLOCK / 4, 4)), int64."""
    group = tl.program_id(0).to(tl.int64) * (BLOCK // 4) + tl.arange(0, BLOCK // 4)
    word = tl.arange(0, 4)[None, :]
    return group, word, group[:, None] * 4 + word


@triton.jit
def kept(r0, r1, r2, r3, word, threshold):
    """Whether the element that is word ``word`` (0..3, broadcast against the r's) of its group is
    kept: that word >> 1 is at least ``threshold``."""
    bits = tl.where(word == 0, r0, tl.where(word == 1, r1, tl.where(word == 2, r2, r3)))
    return (bits >> 1).to(tl.int32) >= threshold


@triton.jit
def philox_keep(seed, philox_offset, element, threshold):
    """Keep decisions of a tile of int64 element indices of the stream keyed by (seed, philox_offset)."""
    r0, r1, r2, r3 = philox_group(seed, philox_offset, element >> 2)
    return kept(r0, r1, r2, r3, element & 3, threshold)


@triton.jit(do_not_specialize=["seed", "philox_offset"])
def _dropout_add_kernel(
    Residual, X, Out, n_elements, seed, philox_offset, threshold, scale, sign,
    HAS_RESIDUAL: tl.constexpr, DROPOUT: tl.constexpr, BLOCK: tl.constexpr,
):
    group, word, idx = philox_groups(BLOCK)
    in_range = idx < n_elements
    x = tl.load(X + idx, mask=in_range, other=0.0).to(tl.float32)
    if DROPOUT:
        r0, r1, r2, r3 = philox_group(seed, philox_offset, group)
        x = tl.where(kept(r0[:, None], r1[:, None], r2[:, None], r3[:, None], word, threshold), x * scale, 0.0)
    out = sign * x
    if HAS_RESIDUAL:
        out += tl.load(Residual + idx, mask=in_range, other=0.0).to(tl.float32)
    tl.store(Out + idx, out.to(Out.dtype.element_ty), mask=in_range)


@torch.library.custom_op("reformer_kernels::triton_dropout_add", mutates_args=())
def dropout_add_op(
    residual: Optional[torch.Tensor], x: torch.Tensor, p: float, seed: int, philox_offset: int, subtract: bool,
    dtype: torch.dtype,
) -> torch.Tensor:
    """residual ± dropout(x) in ``dtype``, computed in fp32 (residual None: ±dropout(x) alone, the
    backward); residual and x have one shape, the mask indexes their row-major elements. p in
    [0, 1]; p = 0 draws nothing. ``seed`` is the uint64 Philox key as int64 (two's complement)."""
    x = x.contiguous()
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    if x.numel() == 0:
        return out
    _dropout_add_kernel[(triton.cdiv(x.numel(), BLOCK),)](
        x if residual is None else residual.contiguous(), x, out, x.numel(), seed, philox_offset, keep_threshold(p),
        keep_scale(p),
        -1.0 if subtract else 1.0,
        HAS_RESIDUAL=residual is not None, DROPOUT=p > 0.0, BLOCK=BLOCK, num_warps=4,
    )
    return out


dropout_add_op.register_fake(_fake)
register(dropout_add_op)
_fused = fused(dropout_add_op)


def dropout_add(residual, x, p, training=True, subtract=False, generator=None):
    """The "dropout_add" backend impl: residual ± dropout(x, p) in their promoted dtype."""
    for t in (residual, x):
        if t is not None:
            check_dtype("dropout_add", t)
    return _fused(residual, x, p, training=training, subtract=subtract, generator=generator)


backends.register("dropout_add", "triton", dropout_add)
