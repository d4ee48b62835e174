"""LSH attention in Triton: chunked attention over the bucket-sorted sequence, FlashAttention style.

One forward program handles BLOCK query slots of one chunk of the sorted sequence (all hash rounds
concatenated, n_hashes * L slots). It reads its queries and the keys of the neighbouring chunks
through ``sorted_idx`` (no gathered copies in memory), normalizes keys on the fly, applies the
masks at original positions, runs an fp32 online softmax and writes the per-round output and lse
at the un-sorted index. A small kernel then combines the rounds. The backward recomputes the scores
from qk, v and the saved lse (no chunk x window score tensor is ever stored). Attention dropout
takes the keep-mask that ``functional`` draws as the reference does (same generator, same mask:
the backends agree and the reversible backward replays it); that mask is one byte per attention
probability, and the op keeps it for the backward.

The kernels are shared with local attention (``triton_local_attention``): the ``LSH`` flag turns on
the gather through sorted_idx, the key normalization of shared query/key and the self mask.

Every tl.dot asks for input_precision="ieee": fp32 inputs must not silently drop to tf32 on tensor
cores (the fp32 tolerance rule is tight); fp16/bf16 inputs ignore the option.
"""
import math
from typing import Optional

import torch
import triton
import triton.language as tl

from .. import backends
from ..reference.chunked import mask_values
from ..reference.lsh_attention import RMS_EPS

# Jitted code may read module globals only when they are constexpr.
_RMS_EPS = tl.constexpr(RMS_EPS)


def warp_configs() -> list[triton.Config]:
    # Only warps and stages are tuned; the tiles follow the shapes (here the chunk length), so the
    # grid and the order in which blocks are summed are fixed. The winner is cached per key, so repeated
    # calls give identical bits. The interpreter runs one config (several fail there).
    if backends.triton_interpreted():
        return [triton.Config({}, num_warps=1)]
    return [triton.Config({}, num_warps=4, num_stages=2), triton.Config({}, num_warps=8, num_stages=2)]


def check_dtype(op: str, tensor: torch.Tensor) -> None:
    """The kernels compute in fp32 from fp16, bf16 or fp32 inputs; float64 is the reference's."""
    if tensor.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(
            f"{op}: the triton backend takes float16, bfloat16 or float32, got {tensor.dtype}; "
            "cast with .float() or use backend='cpu' or 'reference' for float64"
        )


def head_block(head_dim: int) -> int:
    """head_dim padded to the next power of two (at least 16, the smallest tl.dot side)."""
    return max(16, triton.next_power_of_2(head_dim))


def tiles(chunk_len: int, head_dim: int, dtype: torch.dtype) -> dict:
    """The attention kernels' tile: HEAD_BLOCK (head_dim padded) and BLOCK, the slots per program,
    the chunk rounded up to a power of two within [16, 64]. The interpreter takes 16 so that its
    small tests cross block and chunk boundaries as long sequences do on a GPU."""
    head = head_block(head_dim)
    if backends.triton_interpreted():
        return dict(HEAD_BLOCK=head, BLOCK=16)
    # fp32 tiles of 64 x 128 need more shared memory in the backward than an A100 has.
    largest = 32 if dtype == torch.float32 and head > 64 else 64
    return dict(HEAD_BLOCK=head, BLOCK=min(largest, max(16, triton.next_power_of_2(chunk_len))))


@triton.jit
def _slot_positions(SortedIdx, slot, ok, seq_len, LSH: tl.constexpr):
    """(index, position) of sorted slots: LSH reads the flat index r * L + pos from sorted_idx;
    local attention has no sort, its slots are positions."""
    if LSH:
        index = tl.load(SortedIdx + slot, mask=ok, other=0)
        return index, index % seq_len
    else:
        return slot, slot


@triton.jit
def _load_keys(K, slot_pos, real, offs_d, d_ok, stride_l, head_dim, key_scale, rms_eps, LSH: tl.constexpr):
    """Key rows as the scores see them, in the input dtype: LSH divides the shared query/key by its
    RMS first. Also returns the raw rows and the RMS factor for the backward's chain rule."""
    raw = tl.load(K + slot_pos[:, None] * stride_l + offs_d[None, :], mask=real[:, None] & d_ok[None, :], other=0.0)
    x = raw.to(tl.float32)
    if LSH:
        inv_rms = tl.rsqrt(tl.sum(x * x, axis=1) / head_dim + rms_eps)
    else:
        inv_rms = tl.full([x.shape[0]], 1.0, tl.float32)
    k = (x * (inv_rms * key_scale)[:, None]).to(raw.dtype)
    return k, x, inv_rms


@triton.jit
def _window_keys(K, V, SortedIdx, e, first_chunk, window, chunk_len, n_chunks, seq_len, offs_d, d_ok, stride_l,
                 head_dim, key_scale, LSH: tl.constexpr):
    """Keys and values of window entries ``e`` (0 .. window * chunk_len): the chunks from
    ``first_chunk`` on, circular over all rounds, gathered through sorted_idx."""
    in_window = e < window * chunk_len
    k_slot = ((first_chunk + e // chunk_len) % n_chunks).to(tl.int64) * chunk_len + e % chunk_len
    _, k_pos = _slot_positions(SortedIdx, k_slot, in_window, seq_len, LSH)
    k_real = in_window & (k_pos < seq_len)
    k, _, _ = _load_keys(K, k_pos, k_real, offs_d, d_ok, stride_l, head_dim, key_scale, _RMS_EPS, LSH)
    v = tl.load(V + k_pos[:, None] * stride_l + offs_d[None, :], mask=k_real[:, None] & d_ok[None, :], other=0.0)
    return in_window, k_pos, k_real, k, v


@triton.jit
def _masked_scores(s, q_pos, k_pos, k_real, in_window, b, Mask, stride_mb, mask_value, self_mask_value,
                   LSH: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr):
    """Scores (queries x keys) with transformers' masks, and where a score was replaced by a
    constant (those get no gradient). Keys outside the window get -inf: they are not keys at all."""
    # Local attention pads a length that is not a multiple of the chunk with masked keys.
    replaced = (k_real == 0)[None, :]
    if HAS_MASK:
        keep = tl.load(Mask + b * stride_mb + k_pos, mask=k_real, other=0)
        replaced = replaced | (keep == 0)[None, :]
    if CAUSAL:
        replaced = replaced | (q_pos[:, None] < k_pos[None, :])
    s = tl.where(replaced, mask_value, s)
    if LSH:
        is_self = q_pos[:, None] == k_pos[None, :]
        s = tl.where(is_self, self_mask_value, s)
        replaced = replaced | is_self
    s = tl.where(in_window[None, :], s, float("-inf"))
    return s, replaced


@triton.jit
def _dropout_keep(DropMask, row_starts, cols, ok, drop_scale):
    """A tile of the attention-dropout factors: 1 / (1 - p) where the mask keeps the probability at
    ``row_starts[:, None] + cols[None, :]``, else 0. The mask (one byte per probability) has the
    reference's chunked score layout, (query slot, window entry) with window entry
    e = (neighbour chunk + before) * chunk_len + key."""
    kept = tl.load(DropMask + row_starts[:, None] + cols[None, :], mask=ok, other=0)
    return tl.where(kept != 0, drop_scale, 0.0)


@triton.autotune(configs=warp_configs(), key=["chunk_len", "HEAD_BLOCK", "BLOCK", "LSH", "CAUSAL", "HAS_MASK", "DROPOUT"])
@triton.jit
def attention_fwd_kernel(
    Q, K, V, SortedIdx, Mask, DropMask, Out, Lse,
    stride_xb, stride_xh, stride_xl,  # q, k, v: (B, H, L, head_dim), head_dim contiguous
    stride_ob, stride_oh, stride_ol,  # Out: (B, H, rows, head_dim), rows = n_slots (LSH) or L (local)
    stride_sb, stride_sh,  # SortedIdx and Lse: (B, H, rows)
    stride_mb,  # Mask: (B, L)
    stride_db, stride_dh,  # DropMask: (B, H, n_slots, window * chunk_len)
    seq_len, n_slots, chunk_len, n_chunks_before, window, head_dim,
    key_scale, mask_value, self_mask_value, drop_scale,
    LSH: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr,
    HEAD_BLOCK: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    blocks_per_chunk = tl.cdiv(chunk_len, BLOCK)
    chunk = pid // blocks_per_chunk
    n_chunks = n_slots // chunk_len
    offs = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_BLOCK)
    d_ok = offs_d < head_dim
    x_base = b * stride_xb + h * stride_xh
    Q += x_base
    K += x_base
    V += x_base
    SortedIdx += b * stride_sb + h * stride_sh
    DropMask += b * stride_db + h * stride_dh
    n_keys = window * chunk_len

    # this program's queries: BLOCK slots of one chunk
    q_in_chunk = (pid % blocks_per_chunk) * BLOCK + offs
    q_ok = q_in_chunk < chunk_len
    q_slot = chunk.to(tl.int64) * chunk_len + q_in_chunk
    q_index, q_pos = _slot_positions(SortedIdx, q_slot, q_ok, seq_len, LSH)
    q_real = q_ok & (q_pos < seq_len)
    q = tl.load(Q + q_pos[:, None] * stride_xl + offs_d[None, :], mask=q_real[:, None] & d_ok[None, :], other=0.0)

    m_i = tl.full([BLOCK], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK], tl.float32)
    acc = tl.zeros([BLOCK, HEAD_BLOCK], tl.float32)
    # the window: n_chunks_before chunks back to the chunk's own and after, circular over all rounds
    first_chunk = (chunk + n_chunks - n_chunks_before % n_chunks) % n_chunks
    for start in range(0, n_keys, BLOCK):
        in_window, k_pos, k_real, k, v = _window_keys(K, V, SortedIdx, start + offs, first_chunk, window, chunk_len,
                                                     n_chunks, seq_len, offs_d, d_ok, stride_xl, head_dim, key_scale,
                                                     LSH)
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
        s, _ = _masked_scores(s, q_pos, k_pos, k_real, in_window, b, Mask, stride_mb, mask_value, self_mask_value,
                              LSH, CAUSAL, HAS_MASK)
        # online softmax: rescale what was accumulated to the new running max
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if DROPOUT:  # the normalizer (and lse) count every key, the output only the kept ones
            p = p * _dropout_keep(DropMask, q_slot * n_keys, start + offs, q_ok[:, None] & in_window[None, :],
                                  drop_scale)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        m_i = m_new

    out_row = q_index if LSH else q_pos
    Out += b * stride_ob + h * stride_oh
    tl.store(Out + out_row[:, None] * stride_ol + offs_d[None, :], acc / l_i[:, None],
             mask=q_real[:, None] & d_ok[None, :])
    tl.store(Lse + b * stride_sb + h * stride_sh + out_row, m_i + tl.log(l_i), mask=q_real)


@triton.autotune(configs=warp_configs(), key=["chunk_len", "HEAD_BLOCK", "BLOCK", "LSH", "CAUSAL", "HAS_MASK", "DROPOUT"])
@triton.jit
def attention_bwd_kernel(
    Q, K, V, SortedIdx, Mask, DropMask, DOut, RoundWeight, Lse, Delta, DQ, DK, DV,
    stride_xb, stride_xh, stride_xl,  # q, k, v, DOut: (B, H, L, head_dim)
    stride_gb, stride_gh, stride_gl,  # DQ, DK, DV: (B, H, rows, head_dim), rows = n_slots (LSH) or L
    stride_sb, stride_sh,  # SortedIdx, RoundWeight, Lse, Delta: (B, H, rows)
    stride_mb,
    stride_db, stride_dh,  # DropMask: (B, H, n_slots, window * chunk_len)
    seq_len, n_slots, chunk_len, n_chunks_before, n_chunks_after, head_dim,
    key_scale, mask_value, self_mask_value, drop_scale,
    LSH: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr,
    HEAD_BLOCK: tl.constexpr, BLOCK: tl.constexpr,
):
    """Gradients for BLOCK slots of one chunk, each slot once as a key (stage 1) and once as a query
    (stage 2). Every gradient row is summed inside one program in a fixed order: no atomics, so
    the result is bitwise deterministic. LSH adds the query part and the key part of the shared
    qk at the slot's flat index; the caller sums the rounds. With dropout (factors K: 0, or
    1 / (1 - p) where kept; P the probabilities before dropout): dv = (P*K)^T do and
    ds = P * (K * (do v^T) - delta), where delta = do . out is unchanged because out already holds
    the kept terms only."""
    pid = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    blocks_per_chunk = tl.cdiv(chunk_len, BLOCK)
    chunk = pid // blocks_per_chunk
    n_chunks = n_slots // chunk_len
    window = n_chunks_before + 1 + n_chunks_after
    n_keys = window * chunk_len
    offs = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_BLOCK)
    d_ok = offs_d < head_dim
    x_base = b * stride_xb + h * stride_xh
    Q += x_base
    K += x_base
    V += x_base
    DOut += x_base
    row_base = b * stride_sb + h * stride_sh
    SortedIdx += row_base
    RoundWeight += row_base
    Lse += row_base
    Delta += row_base
    DropMask += b * stride_db + h * stride_dh

    in_chunk = (pid % blocks_per_chunk) * BLOCK + offs
    own_ok = in_chunk < chunk_len
    own_slot = chunk.to(tl.int64) * chunk_len + in_chunk
    own_index, own_pos = _slot_positions(SortedIdx, own_slot, own_ok, seq_len, LSH)
    own_real = own_ok & (own_pos < seq_len)
    own_mask_2d = own_real[:, None] & d_ok[None, :]
    own_row = own_index if LSH else own_pos

    # stage 1: dk, dv of this block's keys, over every query chunk whose window holds this chunk
    k, k_raw, inv_rms = _load_keys(K, own_pos, own_real, offs_d, d_ok, stride_xl, head_dim, key_scale, _RMS_EPS, LSH)
    v = tl.load(V + own_pos[:, None] * stride_xl + offs_d[None, :], mask=own_mask_2d, other=0.0)
    dk = tl.zeros([BLOCK, HEAD_BLOCK], tl.float32)
    dv = tl.zeros([BLOCK, HEAD_BLOCK], tl.float32)
    first_chunk = (chunk + n_chunks - n_chunks_after % n_chunks) % n_chunks
    for start in range(0, n_keys, BLOCK):
        e = start + offs
        in_window = e < n_keys
        q_slot = ((first_chunk + e // chunk_len) % n_chunks).to(tl.int64) * chunk_len + e % chunk_len
        q_index, q_pos = _slot_positions(SortedIdx, q_slot, in_window, seq_len, LSH)
        q_real = in_window & (q_pos < seq_len)
        q_row = q_index if LSH else q_pos
        q = tl.load(Q + q_pos[:, None] * stride_xl + offs_d[None, :], mask=q_real[:, None] & d_ok[None, :], other=0.0)
        do = tl.load(DOut + q_pos[:, None] * stride_xl + offs_d[None, :], mask=q_real[:, None] & d_ok[None, :],
                     other=0.0).to(tl.float32)
        if LSH:
            do = do * tl.load(RoundWeight + q_row, mask=q_real, other=0.0)[:, None]
        do = do.to(v.dtype)
        lse = tl.load(Lse + q_row, mask=q_real, other=0.0)
        delta = tl.load(Delta + q_row, mask=q_real, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
        s, replaced = _masked_scores(s, q_pos, own_pos, own_real, own_ok, b, Mask, stride_mb, mask_value,
                                     self_mask_value, LSH, CAUSAL, HAS_MASK)
        p = tl.where(q_real[:, None], tl.exp(s - lse[:, None]), 0.0)
        kept = p
        dp = tl.dot(do, tl.trans(v), input_precision="ieee")
        if DROPOUT:
            # these queries' chunk sees this block's keys as its window's chunk number
            # window - 1 - e // chunk_len (the queries run over the window backwards)
            keep = _dropout_keep(DropMask, q_slot * n_keys + (window - 1 - e // chunk_len) * chunk_len, in_chunk,
                                 in_window[:, None] & own_ok[None, :], drop_scale)
            kept = p * keep
            dp = dp * keep
        dv += tl.dot(tl.trans(kept.to(v.dtype)), do, input_precision="ieee")
        ds = p * (dp - delta[:, None])
        ds = tl.where(replaced, 0.0, ds)
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision="ieee")

    # chain rule through the key: k = x * inv_rms * key_scale (LSH), k = x * key_scale (local)
    dk = dk * key_scale
    if LSH:
        x_dot_g = tl.sum(k_raw * dk, axis=1)
        dk = inv_rms[:, None] * (dk - k_raw * (inv_rms * inv_rms * x_dot_g / head_dim)[:, None])

    # stage 2: dq of this block's queries, over this chunk's window of keys
    q = tl.load(Q + own_pos[:, None] * stride_xl + offs_d[None, :], mask=own_mask_2d, other=0.0)
    do = tl.load(DOut + own_pos[:, None] * stride_xl + offs_d[None, :], mask=own_mask_2d, other=0.0).to(tl.float32)
    if LSH:
        do = do * tl.load(RoundWeight + own_row, mask=own_real, other=0.0)[:, None]
    do = do.to(v.dtype)
    lse = tl.load(Lse + own_row, mask=own_real, other=0.0)
    delta = tl.load(Delta + own_row, mask=own_real, other=0.0)
    dq = tl.zeros([BLOCK, HEAD_BLOCK], tl.float32)
    first_chunk = (chunk + n_chunks - n_chunks_before % n_chunks) % n_chunks
    for start in range(0, n_keys, BLOCK):
        in_window, k_pos, k_real, k, v_keys = _window_keys(K, V, SortedIdx, start + offs, first_chunk, window, chunk_len,
                                                     n_chunks, seq_len, offs_d, d_ok, stride_xl, head_dim, key_scale,
                                                     LSH)
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
        s, replaced = _masked_scores(s, own_pos, k_pos, k_real, in_window, b, Mask, stride_mb, mask_value,
                                     self_mask_value, LSH, CAUSAL, HAS_MASK)
        p = tl.where(own_real[:, None], tl.exp(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v_keys), input_precision="ieee")
        if DROPOUT:
            dp = dp * _dropout_keep(DropMask, own_slot * n_keys, start + offs, own_ok[:, None] & in_window[None, :],
                                    drop_scale)
        ds = p * (dp - delta[:, None])
        ds = tl.where(replaced, 0.0, ds)
        dq += tl.dot(ds.to(k.dtype), k, input_precision="ieee")

    grad_offsets = b * stride_gb + h * stride_gh + own_row[:, None] * stride_gl + offs_d[None, :]
    if LSH:
        tl.store(DQ + grad_offsets, dq + dk, mask=own_mask_2d)
    else:
        tl.store(DQ + grad_offsets, dq, mask=own_mask_2d)
        tl.store(DK + grad_offsets, dk, mask=own_mask_2d)
    tl.store(DV + grad_offsets, dv, mask=own_mask_2d)


@triton.jit
def _combine_rounds_kernel(
    OutRounds, Lse, Out,
    stride_rb, stride_rh, stride_rl,  # OutRounds: (B, H, n_hashes * L, head_dim), fp32
    stride_lb, stride_lh,  # Lse: (B, H, n_hashes * L), fp32
    stride_ob, stride_oh, stride_ol,  # Out: (B, H, L, head_dim)
    seq_len, n_hashes, head_dim,
    HEAD_BLOCK: tl.constexpr, BLOCK: tl.constexpr,
):
    """out = sum_r out_r * exp(lse_r - logsumexp_r lse_r), per position."""
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
        acc += weight[:, None] * tl.load(OutRounds + rows[:, None] * stride_rl + offs_d[None, :], mask=mask_2d, other=0.0)
    tl.store(Out + b * stride_ob + h * stride_oh + pos[:, None] * stride_ol + offs_d[None, :], acc / total[:, None],
             mask=mask_2d)


def chunk_grid(n_slots: int, chunk_len: int, batch: int, heads: int, tile: dict) -> tuple[int, int, int]:
    """One program per slot block of each chunk, per head and batch entry."""
    return (n_slots // chunk_len) * triton.cdiv(chunk_len, tile["BLOCK"]), heads, batch


def keep_mask_arg(attention_mask: Optional[torch.Tensor], like: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The padding mask as uint8 (1 = keep) and its batch stride; a 1-element dummy when absent."""
    if attention_mask is None:
        return torch.ones(1, dtype=torch.uint8, device=like.device), 0
    keep = (attention_mask != 0).to(torch.uint8).contiguous()
    return keep, keep.stride(0)


def dropout_mask_arg(op: str, dropout_mask: Optional[torch.Tensor], dropout_p: float, like: torch.Tensor, n_slots: int,
                     chunk_len: int, window: int) -> tuple[torch.Tensor, int, int, float]:
    """The kernels' attention-dropout arguments: the bool keep-mask (the reference's chunked score
    layout, ``reference.dropout_mask_shape``) as bytes, its batch and head strides, and the kept
    probabilities' scale 1 / (1 - dropout_p); ``like`` itself (never read) without dropout. The
    kernels index the mask unchecked, so it is checked here."""
    if dropout_mask is None:
        return like, 0, 0, 1.0
    shape = [like.shape[0], like.shape[1], n_slots // chunk_len, chunk_len, window * chunk_len]
    if list(dropout_mask.shape) != shape:
        raise ValueError(f"{op}: dropout_mask must have the chunked score shape {shape} (reference.dropout_mask_shape), "
                         f"got {list(dropout_mask.shape)}")
    if dropout_mask.dtype != torch.bool:
        raise TypeError(f"{op}: dropout_mask must be bool (True where a probability is kept), got {dropout_mask.dtype}")
    if dropout_mask.device != like.device:
        raise ValueError(f"{op}: dropout_mask must be on the inputs' device ({like.device}), got {dropout_mask.device}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"{op}: dropout_p must lie in [0, 1), got {dropout_p}")
    keep = dropout_mask.contiguous().view(torch.uint8)
    return keep, keep.stride(0), keep.stride(1), 1.0 / (1.0 - dropout_p)


@torch.library.custom_op("reformer_kernels::triton_lsh_attention_fwd", mutates_args=())
def lsh_attention_fwd(
    qk: torch.Tensor, v: torch.Tensor, sorted_idx: torch.Tensor, attention_mask: Optional[torch.Tensor],
    dropout_mask: Optional[torch.Tensor], dropout_p: float, n_hashes: int, chunk_len: int, n_chunks_before: int,
    n_chunks_after: int, causal: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns out (B, H, L, d) in qk's dtype and lse (B, H, n_hashes, L) in fp32. ``dropout_mask``:
    bool, True where an attention probability is kept (and scaled by 1 / (1 - dropout_p)), in the
    layout of ``reference.dropout_mask_shape``; or None."""
    qk, v, sorted_idx = qk.contiguous(), v.contiguous(), sorted_idx.contiguous()
    batch, heads, seq_len, head_dim = qk.shape
    n_slots = n_hashes * seq_len
    window = n_chunks_before + 1 + n_chunks_after
    keep, stride_db, stride_dh, drop_scale = dropout_mask_arg("lsh_attention", dropout_mask, dropout_p, qk, n_slots,
                                                              chunk_len, window)
    out_rounds = torch.empty(batch, heads, n_slots, head_dim, dtype=torch.float32, device=qk.device)
    lse = torch.empty(batch, heads, n_slots, dtype=torch.float32, device=qk.device)
    mask, stride_mb = keep_mask_arg(attention_mask, qk)
    mask_value, self_mask_value = mask_values(qk.dtype)
    tile = tiles(chunk_len, head_dim, qk.dtype)
    attention_fwd_kernel[chunk_grid(n_slots, chunk_len, batch, heads, tile)](
        qk, qk, v, sorted_idx, mask, keep, out_rounds, lse,
        qk.stride(0), qk.stride(1), qk.stride(2),
        out_rounds.stride(0), out_rounds.stride(1), out_rounds.stride(2),
        lse.stride(0), lse.stride(1),
        stride_mb,
        stride_db, stride_dh,
        seq_len, n_slots, chunk_len, n_chunks_before, window, head_dim,
        1.0 / math.sqrt(head_dim), mask_value, self_mask_value, drop_scale,
        LSH=True, CAUSAL=causal, HAS_MASK=attention_mask is not None, DROPOUT=dropout_mask is not None,
        **tile,
    )
    out = torch.empty_like(qk)
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


@lsh_attention_fwd.register_fake
def _lsh_attention_fwd_fake(qk, v, sorted_idx, attention_mask, dropout_mask, dropout_p, n_hashes, chunk_len,
                            n_chunks_before, n_chunks_after, causal):
    batch, heads, seq_len, _ = qk.shape
    return torch.empty_like(qk, memory_format=torch.contiguous_format), qk.new_empty(
        batch, heads, n_hashes, seq_len, dtype=torch.float32
    )


@torch.library.custom_op("reformer_kernels::triton_lsh_attention_bwd", mutates_args=())
def lsh_attention_bwd(
    grad_out: torch.Tensor, grad_lse: torch.Tensor, qk: torch.Tensor, v: torch.Tensor, sorted_idx: torch.Tensor,
    attention_mask: Optional[torch.Tensor], dropout_mask: Optional[torch.Tensor], dropout_p: float, out: torch.Tensor,
    lse: torch.Tensor, n_hashes: int, chunk_len: int, n_chunks_before: int, n_chunks_after: int, causal: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients (d qk, d v) from the gradients of out (B, H, L, d) and lse (B, H, n_hashes, L)."""
    qk, v, sorted_idx = qk.contiguous(), v.contiguous(), sorted_idx.contiguous()
    grad_out = grad_out.contiguous()
    batch, heads, seq_len, head_dim = qk.shape
    n_slots = n_hashes * seq_len
    keep, stride_db, stride_dh, drop_scale = dropout_mask_arg("lsh_attention", dropout_mask, dropout_p, qk, n_slots,
                                                              chunk_len, n_chunks_before + 1 + n_chunks_after)
    # Round combination, differentiated: round r sees d out_r = w_r * d out and its lse gets
    # w_r * (d out . (out_r - out)) + d lse_r, so softmax's usual delta becomes
    # w_r * (d out . out) - d lse_r (the out_r terms cancel), with w_r = exp(lse_r - logsumexp lse).
    round_weight = torch.exp(lse - torch.logsumexp(lse, dim=2, keepdim=True))
    delta = round_weight * (grad_out.float() * out.float()).sum(-1).unsqueeze(2) - grad_lse.float()
    round_weight = round_weight.reshape(batch, heads, n_slots).contiguous()
    delta = delta.reshape(batch, heads, n_slots).contiguous()
    lse = lse.reshape(batch, heads, n_slots).contiguous()
    grad_qk_rounds = torch.empty(batch, heads, n_slots, head_dim, dtype=torch.float32, device=qk.device)
    grad_v_rounds = torch.empty_like(grad_qk_rounds)
    mask, stride_mb = keep_mask_arg(attention_mask, qk)
    mask_value, self_mask_value = mask_values(qk.dtype)
    tile = tiles(chunk_len, head_dim, qk.dtype)
    attention_bwd_kernel[chunk_grid(n_slots, chunk_len, batch, heads, tile)](
        qk, qk, v, sorted_idx, mask, keep, grad_out, round_weight, lse, delta, grad_qk_rounds, grad_qk_rounds,
        grad_v_rounds,
        qk.stride(0), qk.stride(1), qk.stride(2),
        grad_qk_rounds.stride(0), grad_qk_rounds.stride(1), grad_qk_rounds.stride(2),
        lse.stride(0), lse.stride(1),
        stride_mb,
        stride_db, stride_dh,
        seq_len, n_slots, chunk_len, n_chunks_before, n_chunks_after, head_dim,
        1.0 / math.sqrt(head_dim), mask_value, self_mask_value, drop_scale,
        LSH=True, CAUSAL=causal, HAS_MASK=attention_mask is not None, DROPOUT=dropout_mask is not None,
        **tile,
    )
    # Each position holds one slot per round; summing the rounds in order keeps it deterministic.
    per_round = (batch, heads, n_hashes, seq_len, head_dim)
    return grad_qk_rounds.view(per_round).sum(dim=2).to(qk.dtype), grad_v_rounds.view(per_round).sum(dim=2).to(v.dtype)


@lsh_attention_bwd.register_fake
def _lsh_attention_bwd_fake(grad_out, grad_lse, qk, v, sorted_idx, attention_mask, dropout_mask, dropout_p, out, lse,
                            n_hashes, chunk_len, n_chunks_before, n_chunks_after, causal):
    return torch.empty_like(qk, memory_format=torch.contiguous_format), torch.empty_like(
        v, memory_format=torch.contiguous_format
    )


def _lsh_setup_context(ctx, inputs, output):
    (qk, v, sorted_idx, attention_mask, dropout_mask, dropout_p, n_hashes, chunk_len, n_chunks_before, n_chunks_after,
     causal) = inputs
    out, lse = output
    ctx.save_for_backward(qk, v, sorted_idx, attention_mask, dropout_mask, out, lse)
    ctx.config = (n_hashes, chunk_len, n_chunks_before, n_chunks_after, causal)
    ctx.dropout_p = dropout_p


def _lsh_backward(ctx, grad_out, grad_lse):
    qk, v, sorted_idx, attention_mask, dropout_mask, out, lse = ctx.saved_tensors
    # autograd passes None for an output whose gradient nobody asked for
    grad_out = torch.zeros_like(out) if grad_out is None else grad_out
    grad_lse = torch.zeros_like(lse) if grad_lse is None else grad_lse
    grad_qk, grad_v = lsh_attention_bwd(grad_out, grad_lse, qk, v, sorted_idx, attention_mask, dropout_mask,
                                        ctx.dropout_p, out, lse, *ctx.config)
    return grad_qk, grad_v, None, None, None, None, None, None, None, None, None


lsh_attention_fwd.register_autograd(_lsh_backward, setup_context=_lsh_setup_context)


def lsh_attention(qk, v, sorted_idx, n_hashes, chunk_len, n_chunks_before, n_chunks_after, causal, attention_mask=None,
                  dropout_mask=None, dropout_p=0.0):
    """The "lsh_attention" backend impl: (out (B, H, L, d), lse (B, H, n_hashes, L)) in qk's dtype."""
    check_dtype("lsh_attention", qk)
    out, lse = lsh_attention_fwd(qk, v, sorted_idx, attention_mask, dropout_mask, dropout_p, n_hashes, chunk_len,
                                 n_chunks_before, n_chunks_after, causal)
    return out, lse.to(qk.dtype)


backends.register("lsh_attention", "triton", lsh_attention)
