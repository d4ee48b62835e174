"""local_attention in Triton: the chunked attention kernels of ``chunk_attention_triton`` with
LSH=False, i.e. slots are positions (no sort, no gather), separate keys scaled by 1/sqrt(d), no
self mask, behind reformer_kernels::triton_local_attention_fwd and _bwd, which take the arguments
of the local_attention_fwd/_bwd schema (see ``__init__``). A length that is not a multiple of the
chunk is padded virtually: the kernels treat positions past the end as masked zero keys, so
nothing is copied."""
from typing import Optional

import torch

from ... import backends
from ...reference.local_attention import local_chunking
from ..chunk_attention_triton import attention_backward, attention_forward, shared_rows
from ..lsh_attention import rows_like
from ..triton_utils import check_dtype, unit_stride_rows
from . import contiguous_like, out_only, register


@torch.library.custom_op("reformer_kernels::triton_local_attention_fwd", mutates_args=())
def local_attention_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk_len: int, n_chunks_before: int, n_chunks_after: int,
    causal: bool, attention_mask: Optional[torch.Tensor], dropout_p: float = 0.0, dropout_seed: int = 0,
    dropout_offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns out (B, H, L, d) in q's dtype, laid out like q (``rows_like``: a layer merges its
    heads back as a view), and lse (B, H, L) in fp32. Attention dropout as the schema says: the
    Philox stream keyed by (dropout_seed, dropout_offset) over the reference's chunked scores.
    q, k and v are read in place through their strides (head-split views included; only a
    tensor whose last dimension is not contiguous is copied)."""
    check_dtype("local_attention", q)
    out = rows_like(q)  # before any copy of q, as the fake impl sees it
    q, k, v = unit_stride_rows(q), unit_stride_rows(k), unit_stride_rows(v)
    batch, heads, seq_len, _ = q.shape
    chunk_len, n_chunks_before, n_chunks_after, n_slots = local_chunking(seq_len, chunk_len, n_chunks_before, n_chunks_after)
    lse = torch.empty(batch, heads, seq_len, dtype=torch.float32, device=q.device)
    attention_forward(q, k, v, None, out, lse, op="local_attention", n_slots=n_slots, chunk_len=chunk_len,
                      n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after, causal=causal,
                      attention_mask=attention_mask, dropout=(dropout_p, dropout_seed, dropout_offset))
    return out, lse


@torch.library.custom_op("reformer_kernels::triton_local_attention_bwd", mutates_args=())
def local_attention_bwd(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    chunk_len: int, n_chunks_before: int, n_chunks_after: int, causal: bool, attention_mask: Optional[torch.Tensor],
    dropout_p: float = 0.0, dropout_seed: int = 0, dropout_offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (d q, d k, d v) from the gradient of out (B, H, L, d)."""
    q, k, v = shared_rows(q, k, v)
    seq_len = q.shape[2]
    chunk_len, n_chunks_before, n_chunks_after, n_slots = local_chunking(seq_len, chunk_len, n_chunks_before, n_chunks_after)
    grad_q, grad_k, grad_v = (torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))
    attention_backward(q, k, v, None, out, grad_out, lse.contiguous(), None, grad_q, grad_k, grad_v,
                       op="local_attention", n_slots=n_slots, chunk_len=chunk_len, n_chunks_before=n_chunks_before,
                       n_chunks_after=n_chunks_after, causal=causal, attention_mask=attention_mask,
                       dropout=(dropout_p, dropout_seed, dropout_offset))
    return grad_q, grad_k, grad_v


register(local_attention_fwd, local_attention_bwd, grads_like=contiguous_like)
backends.register("local_attention", "triton", out_only(local_attention_fwd))
