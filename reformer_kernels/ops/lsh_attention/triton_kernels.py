"""lsh_attention in Triton: the chunked attention kernels of ``chunk_attention_triton`` with LSH=True,
plus the kernels that combine the hash rounds (their outputs forward, their gradients backward),
behind reformer_kernels::triton_lsh_attention_fwd and _bwd, which take the arguments of the
lsh_attention_fwd/_bwd schema (see ``__init__``)."""
import functools
from typing import Optional

import torch
import triton
import triton.language as tl

from ... import backends
from ..chunk_attention_triton import attention_backward, attention_forward, shared_rows
from ..triton_utils import check_dtype, head_block, unit_stride_rows
from . import register, rows_like


@triton.jit
def _combine_rounds_kernel(
    OutRounds, Lse, Out,
    stride_rb, stride_rh, stride_rl,  # OutRounds: (B, H, n_hashes * L, head_dim), the input dtype
    stride_lb, stride_lh,  # Lse: (B, H, n_hashes * L), fp32
    stride_ob, stride_oh, stride_ol,  # Out: (B, H, L, head_dim)
    seq_len, n_hashes, head_dim,
    HEAD_BLOCK: tl.constexpr, BLOCK: tl.constexpr,
):
    """out = sum_r out_r * exp(lse_r - logsumexp_r lse_r), per position, summed in fp32 in round order."""
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    pos = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = pos < seq_len
    offs_d = tl.arange(0, HEAD_BLOCK)
    mask_2d = ok[:, None] & (offs_d < head_dim)[None, :]
    OutRounds += b * stride_rb + h * stride_rh
    Lse += b * stride_lb + h * stride_lh
    top = tl.full([BLOCK], float("-inf"), tl.float32)
    for r in range(n_hashes):
        top = tl.maximum(top, tl.load(Lse + r * seq_len + pos, mask=ok, other=0.0))
    total = tl.zeros([BLOCK], tl.float32)
    acc = tl.zeros([BLOCK, HEAD_BLOCK], tl.float32)
    for r in range(n_hashes):
        rows = r * seq_len + pos
        weight = tl.exp(tl.load(Lse + rows, mask=ok, other=0.0) - top)
        total += weight
        out_r = tl.load(OutRounds + rows[:, None] * stride_rl + offs_d[None, :], mask=mask_2d, other=0.0)
        acc += weight[:, None] * out_r.to(tl.float32)
    tl.store(Out + b * stride_ob + h * stride_oh + pos[:, None] * stride_ol + offs_d[None, :], acc / total[:, None],
             mask=mask_2d)


@torch.library.custom_op("reformer_kernels::triton_lsh_attention_fwd", mutates_args=())
def lsh_attention_fwd(
    qk: torch.Tensor, v: torch.Tensor, sorted_idx: torch.Tensor, n_hashes: int, chunk_len: int, n_chunks_before: int,
    n_chunks_after: int, causal: bool, attention_mask: Optional[torch.Tensor], dropout_p: float = 0.0,
    dropout_seed: int = 0, dropout_offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns out (B, H, L, d) in qk's dtype, laid out like qk (``rows_like``), and lse
    (B, H, n_hashes, L) in fp32. Attention dropout as the schema says: the Philox stream keyed by
    (dropout_seed, dropout_offset) over the reference's chunked scores.

    qk, v and sorted_idx are read in place through their strides (head-split views included; only
    a tensor whose last dimension is not contiguous is copied). One hash round: the attention
    kernel writes out itself, in qk's dtype. Several: it writes each round's output in qk's dtype
    and ``_combine_rounds_kernel`` combines them in fp32. In fp16/bf16 that rounds twice, each
    round's output and then out: an element of out is off from the combination of the rounds' fp32
    outputs by at most u * (|out| + sum_r w_r |out_r|) <= 2 u max_r |out_r| (u = 2^-8 bf16, 2^-11
    fp16; w_r the round weights; plus fp32 round-off), against u * |out| with fp32 rounds; fp32
    inputs keep fp32 rounds. The sums run
    in a fixed order, so the bits are the same every run."""
    check_dtype("lsh_attention", qk)
    out = rows_like(qk)  # before any copy of qk, as the fake impl sees it
    qk, v, sorted_idx = unit_stride_rows(qk), unit_stride_rows(v), unit_stride_rows(sorted_idx)
    batch, heads, seq_len, head_dim = qk.shape
    n_slots = n_hashes * seq_len
    lse = torch.empty(batch, heads, n_slots, dtype=torch.float32, device=qk.device)
    # With one round the combination is the identity: the kernel's rows are out's positions.
    out_rounds = out if n_hashes == 1 else torch.empty(batch, heads, n_slots, head_dim, dtype=qk.dtype,
                                                         device=qk.device)
    attention_forward(qk, qk, v, sorted_idx, out_rounds, lse, op="lsh_attention", n_slots=n_slots, chunk_len=chunk_len,
                      n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after, causal=causal,
                      attention_mask=attention_mask, dropout=(dropout_p, dropout_seed, dropout_offset))
    if n_hashes > 1:
        block = 16  # positions per program: the combination is a memory-bound pass over n_hashes rows each
        _combine_rounds_kernel[(triton.cdiv(seq_len, block), heads, batch)](
            out_rounds, lse, out,
            out_rounds.stride(0), out_rounds.stride(1), out_rounds.stride(2),
            lse.stride(0), lse.stride(1),
            out.stride(0), out.stride(1), out.stride(2),
            seq_len, n_hashes, head_dim,
            HEAD_BLOCK=head_block(head_dim), BLOCK=block,
        )
    return out, lse.view(batch, heads, n_hashes, seq_len)


@triton.jit
def _sum_round_rows(Rounds, stride_rl, Grad, stride_gb, stride_gh, stride_gl, b, h, pos, offs_d, mask_2d, seq_len,
                    n_hashes):
    """Grad[b, h, pos] = the sum in fp32 over rounds r, in order, of row r * L + pos of Rounds
    (already at (b, h))."""
    acc = tl.zeros(mask_2d.shape, tl.float32)
    for r in range(n_hashes):
        acc += tl.load(Rounds + (r * seq_len + pos)[:, None] * stride_rl + offs_d[None, :], mask=mask_2d,
                       other=0.0).to(tl.float32)
    tl.store(Grad + b * stride_gb + h * stride_gh + pos[:, None] * stride_gl + offs_d[None, :],
             acc.to(Grad.dtype.element_ty), mask=mask_2d)


@triton.jit
def _sum_rounds_kernel(
    GradRounds, GradQK, GradV,
    stride_rt, stride_rb, stride_rh, stride_rl,  # GradRounds: (2 (qk, v), B, H, n_hashes * L, head_dim), the input dtype
    stride_qb, stride_qh, stride_ql,  # GradQK: (B, H, L, head_dim)
    stride_vb, stride_vh, stride_vl,  # GradV: (B, H, L, head_dim)
    seq_len, n_hashes, head_dim,
    HEAD_BLOCK: tl.constexpr, BLOCK: tl.constexpr,
):
    """The gradients of qk and v of BLOCK positions: each position holds one slot per round, summed
    in fp32 in round order (deterministic) and written in the inputs' dtype."""
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    pos = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_BLOCK)
    mask_2d = (pos < seq_len)[:, None] & (offs_d < head_dim)[None, :]
    GradRounds += b * stride_rb + h * stride_rh
    _sum_round_rows(GradRounds, stride_rl, GradQK, stride_qb, stride_qh, stride_ql, b, h, pos, offs_d, mask_2d, seq_len,
                    n_hashes)
    _sum_round_rows(GradRounds + stride_rt, stride_rl, GradV, stride_vb, stride_vh, stride_vl, b, h, pos, offs_d, mask_2d,
                    seq_len, n_hashes)


@torch.library.custom_op("reformer_kernels::triton_lsh_attention_bwd", mutates_args=())
def lsh_attention_bwd(
    grad_out: torch.Tensor, grad_lse: Optional[torch.Tensor], qk: torch.Tensor, v: torch.Tensor, sorted_idx: torch.Tensor,
    out: torch.Tensor, lse: torch.Tensor, n_hashes: int, chunk_len: int, n_chunks_before: int, n_chunks_after: int,
    causal: bool, attention_mask: Optional[torch.Tensor], dropout_p: float = 0.0, dropout_seed: int = 0,
    dropout_offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients (d qk, d v) from the gradients of out (B, H, L, d) and lse (B, H, n_hashes, L; None: zero),
    laid out like qk and v (``rows_like``).

    One hash round: the attention kernel writes each position's gradient rows once, in place.
    Several: a position has one slot per round, each slot's rows complete in one program; the
    attention kernel writes them per round in qk's dtype and ``_sum_rounds_kernel`` sums them per
    position in fp32, in round order (no atomics: the bits are the same every run). In fp16/bf16
    that rounds twice, each round's gradient and then their sum: an element of d qk or d v is off
    from the sum of the rounds' fp32 gradients g_r by at most u * (|sum_r g_r| + sum_r |g_r|)
    (u = 2^-8 bf16, 2^-11 fp16; plus fp32 round-off), against u * |sum_r g_r| with fp32 rounds,
    for half the bytes written and read back (fp16's range, 65504, then bounds each round's
    gradient as well as their sum); fp32 inputs keep fp32 rounds."""
    grad_qk, grad_v = rows_like(qk), rows_like(v)
    qk, v = shared_rows(qk, v)
    batch, heads, seq_len, head_dim = qk.shape
    n_slots = n_hashes * seq_len
    lse = lse.reshape(batch, heads, n_slots).contiguous()
    backward = functools.partial(
        attention_backward, qk, qk, v, sorted_idx.contiguous(), out, grad_out, lse, grad_lse, op="lsh_attention",
        n_slots=n_slots, chunk_len=chunk_len, n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after,
        causal=causal, attention_mask=attention_mask, dropout=(dropout_p, dropout_seed, dropout_offset))
    if n_hashes == 1:  # a position's only slot: its gradient rows are written once, in place
        backward(grad_qk, grad_qk, grad_v)
        return grad_qk, grad_v
    grad_rounds = torch.empty(2, batch, heads, n_slots, head_dim, dtype=qk.dtype, device=qk.device)
    backward(grad_rounds[0], grad_rounds[0], grad_rounds[1])
    block = 16  # positions per program: a memory-bound pass over n_hashes rows each
    _sum_rounds_kernel[(triton.cdiv(seq_len, block), heads, batch)](
        grad_rounds, grad_qk, grad_v,
        grad_rounds.stride(0), grad_rounds.stride(1), grad_rounds.stride(2), grad_rounds.stride(3),
        grad_qk.stride(0), grad_qk.stride(1), grad_qk.stride(2),
        grad_v.stride(0), grad_v.stride(1), grad_v.stride(2),
        seq_len, n_hashes, head_dim,
        HEAD_BLOCK=head_block(head_dim), BLOCK=block,
    )
    return grad_qk, grad_v


register(lsh_attention_fwd, lsh_attention_bwd)
backends.register("lsh_attention", "triton", lsh_attention_fwd)
