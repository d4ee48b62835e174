"""dropout_relu in Triton: relu(dropout(x + bias)) in one pass, and its backward from the output alone.

The mask is dropout_add's (the Philox stream of ``reference/dropout.py`` over x's row-major
elements, keyed by (seed, philox_offset), drawn with dropout_add's Triton helpers), so the
bits are those of the cpu and reference backends. The backward needs no mask: grad_x =
grad_out / (1 - p) where the output is positive, 0 elsewhere.
"""
from typing import Optional

import torch
import triton
import triton.language as tl

from ... import backends
from ...reference.dropout import keep_scale, keep_threshold
from ..dropout_add.triton_kernels import kept, philox_group, philox_groups
from ..triton_utils import check_dtype
from . import _fake, _fake_backward, fused, register

BLOCK = 1024


@triton.jit(do_not_specialize=["seed", "philox_offset"])
def _dropout_relu_kernel(X, Bias, Out, n_elements, n_columns, seed, philox_offset, threshold, scale, HAS_BIAS: tl.constexpr,
                         BLOCK: tl.constexpr):
    group, word, idx = philox_groups(BLOCK)
    in_range = idx < n_elements
    x = tl.load(X + idx, mask=in_range, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x += tl.load(Bias + idx % n_columns, mask=in_range, other=0.0).to(tl.float32)
    r0, r1, r2, r3 = philox_group(seed, philox_offset, group)
    keep = kept(r0[:, None], r1[:, None], r2[:, None], r3[:, None], word, threshold)
    # x * 0 where dropped, as dropout_add computes it, so that a NaN stays NaN through relu
    dropped = x * tl.where(keep, scale, 0.0)
    out = tl.where(dropped <= 0.0, 0.0, dropped)
    tl.store(Out + idx, out.to(Out.dtype.element_ty), mask=in_range)


@triton.jit
def _dropout_relu_backward_kernel(GradOut, Out, GradX, n_elements, scale, BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_range = idx < n_elements
    grad_out = tl.load(GradOut + idx, mask=in_range, other=0.0).to(tl.float32)
    out = tl.load(Out + idx, mask=in_range, other=0.0).to(tl.float32)
    tl.store(GradX + idx, tl.where(out > 0.0, grad_out * scale, 0.0).to(GradX.dtype.element_ty), mask=in_range)


@torch.library.custom_op("reformer_kernels::triton_dropout_relu", mutates_args=())
def dropout_relu_op(x: torch.Tensor, bias: Optional[torch.Tensor], p: float, seed: int, philox_offset: int) -> torch.Tensor:
    """relu(dropout(x + bias)) in x's dtype, computed in fp32, bias (x.shape[-1],) or None; p in
    [0, 1], the mask that of dropout_add keyed by (seed, philox_offset)."""
    x = x.contiguous()
    out = torch.empty_like(x)
    if x.numel() > 0:
        _dropout_relu_kernel[(triton.cdiv(x.numel(), BLOCK),)](
            x, x if bias is None else bias.contiguous(), out, x.numel(), x.shape[-1], seed, philox_offset,
            keep_threshold(p), keep_scale(p), HAS_BIAS=bias is not None, BLOCK=BLOCK, num_warps=4,
        )
    return out


@torch.library.custom_op("reformer_kernels::triton_dropout_relu_backward", mutates_args=())
def dropout_relu_backward_op(grad_out: torch.Tensor, out: torch.Tensor, p: float) -> torch.Tensor:
    """grad_out / (1 - p) where out > 0, else 0, in out's dtype."""
    out = out.contiguous()
    grad_out = grad_out.to(out.dtype).contiguous()
    grad_x = torch.empty_like(out)
    if out.numel() > 0:
        _dropout_relu_backward_kernel[(triton.cdiv(out.numel(), BLOCK),)](
            grad_out, out, grad_x, out.numel(), keep_scale(p), BLOCK=BLOCK, num_warps=4,
        )
    return grad_x


dropout_relu_op.register_fake(_fake)
dropout_relu_backward_op.register_fake(_fake_backward)
register(dropout_relu_op, dropout_relu_backward_op)
_fused = fused(dropout_relu_op)


def dropout_relu(x, bias, p, training=True, generator=None, grad_in_place=False):
    """The "dropout_relu" backend impl: relu(dropout(x + bias, p)) in x's dtype (its backward writes a
    new gradient: ``grad_in_place`` changes nothing)."""
    check_dtype("dropout_relu", x)
    return _fused(x, bias, p, training=training, generator=generator)


backends.register("dropout_relu", "triton", dropout_relu)
