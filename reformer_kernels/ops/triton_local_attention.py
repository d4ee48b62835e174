"""Local (chunked) attention in Triton: the LSH attention kernels of ``triton_lsh_attention`` with
LSH=False, i.e. slots are positions (no sort, no gather), separate keys scaled by 1/sqrt(d), no
self mask. A length that is not a multiple of the chunk is padded virtually: the kernels treat
positions past the end as masked zero keys, so nothing is copied."""
import math
from typing import Optional

import torch

from .. import backends
from ..reference.chunked import mask_values
from ..reference.local_attention import local_chunking
from .triton_lsh_attention import (
    attention_bwd_kernel,
    attention_fwd_kernel,
    check_dtype,
    chunk_grid,
    dropout_mask_arg,
    keep_mask_arg,
    tiles,
)


@torch.library.custom_op("reformer_kernels::triton_local_attention_fwd", mutates_args=())
def local_attention_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: Optional[torch.Tensor],
    dropout_mask: Optional[torch.Tensor], dropout_p: float, chunk_len: int, n_chunks_before: int, n_chunks_after: int,
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns out (B, H, L, d) in q's dtype and lse (B, H, L) in fp32. ``dropout_mask``: bool, True
    where an attention probability is kept (and scaled by 1 / (1 - dropout_p)), shaped as the
    reference takes it; or None."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    batch, heads, seq_len, head_dim = q.shape
    chunk_len, n_chunks_before, n_chunks_after, n_slots = local_chunking(seq_len, chunk_len, n_chunks_before, n_chunks_after)
    window = n_chunks_before + 1 + n_chunks_after
    keep, stride_db, stride_dh, drop_scale = dropout_mask_arg("local_attention", dropout_mask, dropout_p, q, n_slots,
                                                              chunk_len, window)
    out = torch.empty_like(q)
    lse = torch.empty(batch, heads, seq_len, dtype=torch.float32, device=q.device)
    mask, stride_mb = keep_mask_arg(attention_mask, q)
    mask_value, _ = mask_values(q.dtype)
    tile = tiles(chunk_len, head_dim, q.dtype)
    attention_fwd_kernel[chunk_grid(n_slots, chunk_len, batch, heads, tile)](
        q, k, v, lse, mask, keep, out, lse,
        q.stride(0), q.stride(1), q.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        lse.stride(0), lse.stride(1),
        stride_mb,
        stride_db, stride_dh,
        seq_len, n_slots, chunk_len, n_chunks_before, window, head_dim,
        1.0 / math.sqrt(head_dim), mask_value, 0.0, drop_scale,
        LSH=False, CAUSAL=causal, HAS_MASK=attention_mask is not None, DROPOUT=dropout_mask is not None,
        **tile,
    )
    return out, lse


@local_attention_fwd.register_fake
def _local_attention_fwd_fake(q, k, v, attention_mask, dropout_mask, dropout_p, chunk_len, n_chunks_before,
                              n_chunks_after, causal):
    batch, heads, seq_len, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(
        batch, heads, seq_len, dtype=torch.float32
    )


@torch.library.custom_op("reformer_kernels::triton_local_attention_bwd", mutates_args=())
def local_attention_bwd(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: Optional[torch.Tensor],
    dropout_mask: Optional[torch.Tensor], dropout_p: float, out: torch.Tensor, lse: torch.Tensor, chunk_len: int,
    n_chunks_before: int, n_chunks_after: int, causal: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (d q, d k, d v) from the gradient of out (B, H, L, d)."""
    q, k, v, grad_out, lse = q.contiguous(), k.contiguous(), v.contiguous(), grad_out.contiguous(), lse.contiguous()
    batch, heads, seq_len, head_dim = q.shape
    chunk_len, n_chunks_before, n_chunks_after, n_slots = local_chunking(seq_len, chunk_len, n_chunks_before, n_chunks_after)
    keep, stride_db, stride_dh, drop_scale = dropout_mask_arg("local_attention", dropout_mask, dropout_p, q, n_slots,
                                                              chunk_len, n_chunks_before + 1 + n_chunks_after)
    mask_value, _ = mask_values(q.dtype)
    # A query whose keys are all masked has lse = mask_value + log(n_keys), which fp32 rounds to
    # about mask_value, so the kernel's exp(s - lse) is about 1 instead of 1 / n_keys (grad_v would
    # get the sum of dO, the forward took the mean): scale such a row's dO, hence delta, by the ratio.
    n_keys = chunk_len * (n_chunks_before + 1 + n_chunks_after)
    fully_masked = lse <= mask_value / 2
    row_scale = torch.where(fully_masked, torch.exp(lse.double() - mask_value) / n_keys, 1.0)
    grad_out = (grad_out * row_scale[..., None].to(grad_out.dtype)).contiguous()
    delta = (grad_out.float() * out.float()).sum(-1)
    grad_q, grad_k, grad_v = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    mask, stride_mb = keep_mask_arg(attention_mask, q)
    tile = tiles(chunk_len, head_dim, q.dtype)
    attention_bwd_kernel[chunk_grid(n_slots, chunk_len, batch, heads, tile)](
        q, k, v, lse, mask, keep, grad_out, lse, lse, delta, grad_q, grad_k, grad_v,
        q.stride(0), q.stride(1), q.stride(2),
        grad_q.stride(0), grad_q.stride(1), grad_q.stride(2),
        lse.stride(0), lse.stride(1),
        stride_mb,
        stride_db, stride_dh,
        seq_len, n_slots, chunk_len, n_chunks_before, n_chunks_after, head_dim,
        1.0 / math.sqrt(head_dim), mask_value, 0.0, drop_scale,
        LSH=False, CAUSAL=causal, HAS_MASK=attention_mask is not None, DROPOUT=dropout_mask is not None,
        **tile,
    )
    return grad_q, grad_k, grad_v


@local_attention_bwd.register_fake
def _local_attention_bwd_fake(grad_out, q, k, v, attention_mask, dropout_mask, dropout_p, out, lse, chunk_len,
                              n_chunks_before, n_chunks_after, causal):
    return tuple(torch.empty_like(x, memory_format=torch.contiguous_format) for x in (q, k, v))


def _local_setup_context(ctx, inputs, output):
    q, k, v, attention_mask, dropout_mask, dropout_p, chunk_len, n_chunks_before, n_chunks_after, causal = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, attention_mask, dropout_mask, out, lse)
    ctx.config = (chunk_len, n_chunks_before, n_chunks_after, causal)
    ctx.dropout_p = dropout_p


def _local_backward(ctx, grad_out, grad_lse):
    # lse is an internal output (saved for the backward, never returned to users): no gradient.
    q, k, v, attention_mask, dropout_mask, out, lse = ctx.saved_tensors
    grad_q, grad_k, grad_v = local_attention_bwd(grad_out, q, k, v, attention_mask, dropout_mask, ctx.dropout_p, out, lse,
                                                 *ctx.config)
    return grad_q, grad_k, grad_v, None, None, None, None, None, None, None


local_attention_fwd.register_autograd(_local_backward, setup_context=_local_setup_context)


def local_attention(q, k, v, chunk_len, n_chunks_before, n_chunks_after, causal, attention_mask=None, dropout_mask=None,
                    dropout_p=0.0):
    """The "local_attention" backend impl: out (B, H, L, d) in q's dtype."""
    check_dtype("local_attention", q)
    out, _ = local_attention_fwd(q, k, v, attention_mask, dropout_mask, dropout_p, chunk_len, n_chunks_before,
                                 n_chunks_after, causal)
    return out


backends.register("local_attention", "triton", local_attention)
