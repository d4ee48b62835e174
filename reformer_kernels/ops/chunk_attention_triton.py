"""Chunked attention in Triton, FlashAttention style: the kernels that LSH attention and local
attention share (``lsh_attention/triton_kernels.py``, ``local_attention/triton_kernels.py``).

One forward program handles BLOCK query slots of one chunk. For LSH the slots are the
bucket-sorted sequence (all hash rounds concatenated, n_hashes * L slots): the program reads its
queries and the keys of the neighbouring chunks through ``sorted_idx`` (no gathered copies in
memory), normalizes the shared query/keys on the fly and applies the self mask; for local
attention the slots are positions. The masks apply at original positions, the softmax is an fp32
online one, and the output and lse are written at the un-sorted index. The backward recomputes
the scores from the inputs and the saved lse (no chunk x window score tensor is ever stored).
Attention dropout is drawn inside the kernels: the keep decision of the probability of query slot
q and window entry e is the Philox stream keyed by (dropout_seed, dropout_offset) at element
((b * H + h) * n_slots + q) * window_keys + e of the reference's chunked scores
(``reference/dropout.py``), the same bits as the cpu and reference backends; the backward
regenerates it, so no mask exists in memory.

Every tl.dot takes its input_precision from the constexpr DOT_PRECISION that the launchers pass
(``triton_utils.dot_precision``): fp32 inputs follow torch's own fp32 matmuls, full-precision
"ieee" products on the FMA units by default, TF32 tensor cores once
``torch.backends.cuda.matmul.allow_tf32`` is True (or ``torch.set_float32_matmul_precision("high")``),
which rounds q, k, p and the gradients to 10 mantissa bits inside each dot (up to 2^-11 = 4.9e-4
relative per operand, fp32's tolerance no longer holds); fp16/bf16 inputs use tensor cores either way.
"""
import math
from typing import Optional

import torch
import triton
import triton.language as tl

from .. import backends
from ..reference.chunked import mask_values
from ..reference.dropout import keep_threshold
from ..reference.lsh_attention import RMS_EPS
from .attention_spills import SPILLING_WARPS, spill_key
from .dropout_add.triton_kernels import kept, philox_group, philox_keep
from .triton_utils import dot_precision, head_block, prune_spilling_warps, unit_stride_rows, warp_configs

# Jitted code may read module globals only when they are constexpr.
_RMS_EPS = tl.constexpr(RMS_EPS)


def tiles(chunk_len: int, head_dim: int, dtype: torch.dtype, backward: bool) -> dict:
    """The attention kernels' tile: HEAD_BLOCK (head_dim padded); BLOCK, the slots per program, the
    chunk rounded up to a power of two within [16, 64] for the forward up to head_dim 64, within
    [16, 32] for the backward and for head_dim over 64; STEP, the window entries one loop
    iteration takes (keys; the backward's first stage: queries), at most 32, so that the scores
    tile is BLOCK x STEP. Tiles are sized to fit the registers
    (tests/ops/test_triton_compile.py): the backward holds two BLOCK x HEAD_BLOCK fp32 accumulators
    (dk and dv, then dq) besides its scores, probabilities and dropout factors, and 64 slots spilled
    on sm_80 at every head_dim (up to 768 B per thread at 128); the forward's 64 x 128 accumulator
    spilled on sm_80 (up to 272 B). The price of 32 slots is that each program reads its window
    for half as many slots: twice the window reads per slot, mostly from L2 (neighbouring
    programs read the same chunks). The interpreter takes BLOCK 16 and STEP 8 so that its small
    tests cross block, step and chunk boundaries as long sequences do on a GPU."""
    head = head_block(head_dim)
    if backends.triton_interpreted():
        return dict(HEAD_BLOCK=head, BLOCK=16, STEP=8)
    # (fp32 tiles of 64 x 128 also need more shared memory in the backward than an A100 has.)
    largest = 32 if backward or head > 64 else 64
    block = min(largest, max(16, triton.next_power_of_2(chunk_len)))
    return dict(HEAD_BLOCK=head, BLOCK=block, STEP=min(block, 32))


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
def _window_keys(K, V, SortedIdx, e, first_chunk, window, chunk_len, n_chunks, seq_len, offs_d, d_ok, stride_kl,
                 stride_vl, head_dim, key_scale, LSH: tl.constexpr):
    """Keys and values of window entries ``e`` (0 .. window * chunk_len): the chunks from
    ``first_chunk`` on, circular over all rounds, gathered through sorted_idx; K's and V's rows
    ``stride_kl`` and ``stride_vl`` apart."""
    in_window = e < window * chunk_len
    k_slot = ((first_chunk + e // chunk_len) % n_chunks).to(tl.int64) * chunk_len + e % chunk_len
    _, k_pos = _slot_positions(SortedIdx, k_slot, in_window, seq_len, LSH)
    k_real = in_window & (k_pos < seq_len)
    k, _, _ = _load_keys(K, k_pos, k_real, offs_d, d_ok, stride_kl, head_dim, key_scale, _RMS_EPS, LSH)
    v = tl.load(V + k_pos[:, None] * stride_vl + offs_d[None, :], mask=k_real[:, None] & d_ok[None, :], other=0.0)
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
def _dropout_keep(seed, philox_offset, threshold, row_first, col_first, drop_scale, N_COLS: tl.constexpr,
                  WHOLE_GROUPS: tl.constexpr):
    """A tile of the attention-dropout factors: 1 / (1 - p) where the Philox stream keeps element
    ``row_first[:, None] + col_first + j`` (j < N_COLS) of the chunked scores, else 0. ``row_first``:
    a query slot's first element, ((b * H + h) * n_slots + slot) * window_keys, plus the window
    entry of its first key column where the rows run over the window; ``col_first``: the tile's
    first column. WHOLE_GROUPS (the launcher's chunk_len % 4 == 0, so every row and column start is
    a multiple of 4): one Philox draw per four elements, its four words interleaved into the row;
    else one draw per element (a quarter of its words used), four times the work and registers."""
    if WHOLE_GROUPS:
        group = (row_first + col_first)[:, None] // 4 + tl.arange(0, N_COLS // 4)[None, :]
        r0, r1, r2, r3 = philox_group(seed, philox_offset, group)
        f0 = tl.where(kept(r0, r1, r2, r3, 0, threshold), drop_scale, 0.0)
        f1 = tl.where(kept(r0, r1, r2, r3, 1, threshold), drop_scale, 0.0)
        f2 = tl.where(kept(r0, r1, r2, r3, 2, threshold), drop_scale, 0.0)
        f3 = tl.where(kept(r0, r1, r2, r3, 3, threshold), drop_scale, 0.0)
        # word w of group g is element 4 g + w
        return tl.interleave(tl.interleave(f0, f2), tl.interleave(f1, f3))
    else:
        element = (row_first + col_first)[:, None] + tl.arange(0, N_COLS)[None, :]
        return tl.where(philox_keep(seed, philox_offset, element, threshold), drop_scale, 0.0)


@triton.autotune(configs=warp_configs(), key=["chunk_len", "HEAD_BLOCK", "BLOCK", "LSH", "CAUSAL", "HAS_MASK", "DROPOUT",
                                                "DOT_PRECISION"],
                 prune_configs_by=prune_spilling_warps(SPILLING_WARPS["attention_fwd_kernel"], spill_key))
@triton.jit(do_not_specialize=["dropout_seed", "dropout_offset"])
def attention_fwd_kernel(
    Q, K, V, SortedIdx, Mask, Out, Lse,
    stride_qb, stride_qh, stride_ql,  # q, k, v: (B, H, L, head_dim), each with its own strides,
    stride_kb, stride_kh, stride_kl,  # head_dim contiguous (head-split views of the projections
    stride_vb, stride_vh, stride_vl,  # are read in place)
    stride_ob, stride_oh, stride_ol,  # Out: (B, H, rows, head_dim), rows = n_slots (LSH) or L (local)
    stride_ib, stride_ih,  # SortedIdx: (B, H, n_slots), slots contiguous
    stride_lb, stride_lh,  # Lse: (B, H, rows), rows contiguous
    stride_mb,  # Mask: (B, L)
    seq_len, n_slots, chunk_len, n_chunks_before, window, head_dim,
    key_scale, mask_value, self_mask_value, dropout_seed, dropout_offset, dropout_threshold, drop_scale,
    LSH: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr,
    HEAD_BLOCK: tl.constexpr, BLOCK: tl.constexpr, STEP: tl.constexpr, DOT_PRECISION: tl.constexpr,
    WHOLE_GROUPS: tl.constexpr,
):
    pid = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    blocks_per_chunk = tl.cdiv(chunk_len, BLOCK)
    chunk = pid // blocks_per_chunk
    n_chunks = n_slots // chunk_len
    offs = tl.arange(0, BLOCK)
    offs_step = tl.arange(0, STEP)
    offs_d = tl.arange(0, HEAD_BLOCK)
    d_ok = offs_d < head_dim
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    SortedIdx += b * stride_ib + h * stride_ih
    n_keys = window * chunk_len
    # the first slot of this (batch, head) in the numbering of attention-dropout elements
    bh_slot = (b * tl.num_programs(1) + h) * n_slots

    # this program's queries: BLOCK slots of one chunk
    q_in_chunk = (pid % blocks_per_chunk) * BLOCK + offs
    q_ok = q_in_chunk < chunk_len
    q_slot = chunk.to(tl.int64) * chunk_len + q_in_chunk
    q_index, q_pos = _slot_positions(SortedIdx, q_slot, q_ok, seq_len, LSH)
    q_real = q_ok & (q_pos < seq_len)
    q = tl.load(Q + q_pos[:, None] * stride_ql + offs_d[None, :], mask=q_real[:, None] & d_ok[None, :], other=0.0)

    m_i = tl.full([BLOCK], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK], tl.float32)
    acc = tl.zeros([BLOCK, HEAD_BLOCK], tl.float32)
    # the window: n_chunks_before chunks back to the chunk's own and after, circular over all rounds
    first_chunk = (chunk + n_chunks - n_chunks_before % n_chunks) % n_chunks
    for start in range(0, n_keys, STEP):
        in_window, k_pos, k_real, k, v = _window_keys(K, V, SortedIdx, start + offs_step, first_chunk, window,
                                                     chunk_len, n_chunks, seq_len, offs_d, d_ok, stride_kl, stride_vl,
                                                     head_dim, key_scale, LSH)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        s, _ = _masked_scores(s, q_pos, k_pos, k_real, in_window, b, Mask, stride_mb, mask_value, self_mask_value,
                              LSH, CAUSAL, HAS_MASK)
        # online softmax: rescale what was accumulated to the new running max
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if DROPOUT:  # the normalizer (and lse) count every key, the output only the kept ones
            p = p * _dropout_keep(dropout_seed, dropout_offset, dropout_threshold, (bh_slot + q_slot) * n_keys, start,
                                  drop_scale, STEP, WHOLE_GROUPS)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    out_row = q_index if LSH else q_pos
    Out += b * stride_ob + h * stride_oh
    tl.store(Out + out_row[:, None] * stride_ol + offs_d[None, :], acc / l_i[:, None],
             mask=q_real[:, None] & d_ok[None, :])
    tl.store(Lse + b * stride_lb + h * stride_lh + out_row, m_i + tl.log(l_i), mask=q_real)


@triton.jit
def _dout_scale(RoundWeight, row, ok, lse, mask_value, n_keys, LSH: tl.constexpr):
    """The factor of query rows' upstream gradient: LSH's round weight w_r (written by the
    prologue); for local attention 1, except for a query whose keys are all masked. Its lse is
    mask_value + log(n_keys), which fp32 rounds to about mask_value, so the kernel's exp(s - lse)
    is about 1 instead of 1 / n_keys (grad_v would get the sum of d out where the forward took the
    mean): scaling d out, hence delta, by exp(lse - mask_value) / n_keys undoes that."""
    if LSH:
        return tl.load(RoundWeight + row, mask=ok, other=0.0)
    else:
        fully_masked = lse <= mask_value / 2
        # (exp of the other rows' lse - mask_value, about -mask_value, would overflow to inf)
        return tl.where(fully_masked, tl.exp(tl.where(fully_masked, lse - mask_value, 0.0)) / n_keys, 1.0)


@triton.jit
def attention_bwd_prologue_kernel(
    DOut, Out, Lse, DLse, RoundWeight, Delta,
    stride_db, stride_dh, stride_dl,  # DOut: (B, H, L, head_dim)
    stride_ob, stride_oh, stride_ol,  # Out: (B, H, L, head_dim)
    stride_sb, stride_sh,  # Lse, RoundWeight, Delta: (B, H, n_rounds * L), the rounds one after the other
    stride_gb, stride_gh, stride_gr, stride_gl,  # DLse: (B, H, n_rounds, L), any strides (a broadcast zero too)
    seq_len, n_rounds, head_dim, floor_score, n_keys,
    LSH: tl.constexpr, HAS_DLSE: tl.constexpr, HEAD_BLOCK: tl.constexpr, BLOCK: tl.constexpr,
):
    """The backward's per-row inputs, in fp32, for BLOCK positions of one (batch, head), reading
    d out and out once. The round combination, differentiated: round r sees d out_r = w_r * d out
    and its lse gets w_r * (d out . (out_r - out)) + d lse_r, so softmax's usual delta becomes
    delta_r = w_r * (d out . out) - d lse_r (the out_r terms cancel), with
    w_r = exp(lse_r - logsumexp_r lse_r). Local attention has one round and no d lse; its w is
    ``_dout_scale``'s, computed again by the backward kernel from lse. ``floor_score``: the score
    of the keys a query takes when it sees nothing else, mask_value (local) or the self mask (LSH).

    A round in which a query sees only itself (every other key masked) has scores of exactly the
    self mask S (-1e5; fp16 -1e3) on its n copies of itself (n > 1 when the window wraps a short
    ring) and lse = S + log n, which fp32 rounds by up to 0.004 at -1e5: the kernel's exp(s - lse)
    would be 1 / n off by that much (0.4%, where the forward's output, the mean, is exact). n is
    recovered as the integer nearest exp(lse - S) (exact while n < 128; n is at most the window's
    chunk count), and the round's w and delta are scaled by exp(lse - S) / n, which turns
    exp(s - lse) into 1 / n. Real scores never come near S / 2 (a query of norm |S| / 2 *
    sqrt(head_dim) would be needed)."""
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    pos = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = pos < seq_len
    offs_d = tl.arange(0, HEAD_BLOCK)
    mask_2d = ok[:, None] & (offs_d < head_dim)[None, :]
    d_out = tl.load(DOut + b * stride_db + h * stride_dh + pos[:, None] * stride_dl + offs_d[None, :], mask=mask_2d,
                    other=0.0).to(tl.float32)
    out = tl.load(Out + b * stride_ob + h * stride_oh + pos[:, None] * stride_ol + offs_d[None, :], mask=mask_2d,
                  other=0.0).to(tl.float32)
    out_dot = tl.sum(d_out * out, axis=1)
    Lse += b * stride_sb + h * stride_sh
    Delta += b * stride_sb + h * stride_sh
    if LSH:
        RoundWeight += b * stride_sb + h * stride_sh
        DLse += b * stride_gb + h * stride_gh
        top = tl.full([BLOCK], float("-inf"), tl.float32)
        for r in range(n_rounds):
            top = tl.maximum(top, tl.load(Lse + r * seq_len + pos, mask=ok, other=0.0))
        total = tl.zeros([BLOCK], tl.float32)
        for r in range(n_rounds):
            total += tl.exp(tl.load(Lse + r * seq_len + pos, mask=ok, other=0.0) - top)
        for r in range(n_rounds):
            rows = r * seq_len + pos
            lse = tl.load(Lse + rows, mask=ok, other=0.0)
            weight = tl.exp(lse - top) / total
            delta = weight * out_dot
            if HAS_DLSE:
                delta -= tl.load(DLse + r * stride_gr + pos * stride_gl, mask=ok, other=0.0).to(tl.float32)
            only_self = lse <= floor_score / 2
            # (exp of the other rows' lse - floor_score, about -floor_score, would overflow to inf)
            copies = tl.exp(tl.where(only_self, lse - floor_score, 0.0))
            exact = tl.where(only_self, copies / tl.floor(copies + 0.5), 1.0)
            tl.store(RoundWeight + rows, weight * exact, mask=ok)
            tl.store(Delta + rows, delta * exact, mask=ok)
    else:
        lse = tl.load(Lse + pos, mask=ok, other=0.0)
        tl.store(Delta + pos, _dout_scale(RoundWeight, pos, ok, lse, floor_score, n_keys, LSH) * out_dot, mask=ok)


@triton.autotune(configs=warp_configs(), key=["chunk_len", "HEAD_BLOCK", "BLOCK", "LSH", "CAUSAL", "HAS_MASK", "DROPOUT",
                                                "DOT_PRECISION"],
                 prune_configs_by=prune_spilling_warps(SPILLING_WARPS["attention_bwd_kernel"], spill_key))
@triton.jit(do_not_specialize=["dropout_seed", "dropout_offset"])
def attention_bwd_kernel(
    Q, K, V, SortedIdx, Mask, DOut, RoundWeight, Lse, Delta, DQ, DK, DV,
    stride_xb, stride_xh, stride_xl,  # q, k, v: (B, H, L, head_dim)
    stride_db, stride_dh, stride_dl,  # DOut: (B, H, L, head_dim)
    stride_gb, stride_gh, stride_gl,  # DQ, DK: (B, H, rows, head_dim), rows = n_slots (LSH) or L
    stride_vb, stride_vh, stride_vl,  # DV: (B, H, rows, head_dim)
    stride_sb, stride_sh,  # SortedIdx, RoundWeight, Lse, Delta: (B, H, rows)
    stride_mb,
    seq_len, n_slots, chunk_len, n_chunks_before, n_chunks_after, head_dim,
    key_scale, mask_value, self_mask_value, dropout_seed, dropout_offset, dropout_threshold, drop_scale,
    LSH: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr,
    HEAD_BLOCK: tl.constexpr, BLOCK: tl.constexpr, STEP: tl.constexpr, DOT_PRECISION: tl.constexpr,
    WHOLE_GROUPS: tl.constexpr,
):
    """Gradients for BLOCK slots of one chunk, each slot once as a key (stage 1) and once as a query
    (stage 2). Every gradient row is summed inside one program in a fixed order: no atomics, so
    the result is bitwise deterministic. LSH adds the query part and the key part of the shared
    qk at the slot's flat index; with several rounds the caller sums them. The gradients are
    stored in the dtype of DQ, DK, DV (the inputs' dtype; LSH's per-round buffers too).
    RoundWeight and Delta: ``attention_bwd_prologue_kernel``'s. With dropout (factors K: 0, or
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
    offs_step = tl.arange(0, STEP)
    offs_d = tl.arange(0, HEAD_BLOCK)
    d_ok = offs_d < head_dim
    x_base = b * stride_xb + h * stride_xh
    Q += x_base
    K += x_base
    V += x_base
    DOut += b * stride_db + h * stride_dh
    row_base = b * stride_sb + h * stride_sh
    SortedIdx += row_base
    RoundWeight += row_base
    Lse += row_base
    Delta += row_base
    bh_slot = (b * tl.num_programs(1) + h) * n_slots

    in_chunk = (pid % blocks_per_chunk) * BLOCK + offs
    own_ok = in_chunk < chunk_len
    own_slot = chunk.to(tl.int64) * chunk_len + in_chunk
    own_index, own_pos = _slot_positions(SortedIdx, own_slot, own_ok, seq_len, LSH)
    own_real = own_ok & (own_pos < seq_len)
    own_mask_2d = own_real[:, None] & d_ok[None, :]
    own_row = own_index if LSH else own_pos

    # stage 1: dk, dv of this block's keys, over every query chunk whose window holds this chunk
    k, _, _ = _load_keys(K, own_pos, own_real, offs_d, d_ok, stride_xl, head_dim, key_scale, _RMS_EPS, LSH)
    v = tl.load(V + own_pos[:, None] * stride_xl + offs_d[None, :], mask=own_mask_2d, other=0.0)
    dk = tl.zeros([BLOCK, HEAD_BLOCK], tl.float32)
    dv = tl.zeros([BLOCK, HEAD_BLOCK], tl.float32)
    first_chunk = (chunk + n_chunks - n_chunks_after % n_chunks) % n_chunks
    for start in range(0, n_keys, STEP):
        e = start + offs_step
        in_window = e < n_keys
        q_slot = ((first_chunk + e // chunk_len) % n_chunks).to(tl.int64) * chunk_len + e % chunk_len
        q_index, q_pos = _slot_positions(SortedIdx, q_slot, in_window, seq_len, LSH)
        q_real = in_window & (q_pos < seq_len)
        q_row = q_index if LSH else q_pos
        q = tl.load(Q + q_pos[:, None] * stride_xl + offs_d[None, :], mask=q_real[:, None] & d_ok[None, :], other=0.0)
        do = tl.load(DOut + q_pos[:, None] * stride_dl + offs_d[None, :], mask=q_real[:, None] & d_ok[None, :],
                     other=0.0).to(v.dtype)
        lse = tl.load(Lse + q_row, mask=q_real, other=0.0)
        delta = tl.load(Delta + q_row, mask=q_real, other=0.0)
        # the queries' d out factors scale their rows of p (for dv) and of dp, tiles smaller than d out's
        do_scale = _dout_scale(RoundWeight, q_row, q_real, lse, mask_value, n_keys, LSH)[:, None]
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        s, replaced = _masked_scores(s, q_pos, own_pos, own_real, own_ok, b, Mask, stride_mb, mask_value,
                                     self_mask_value, LSH, CAUSAL, HAS_MASK)
        p = tl.where(q_real[:, None], tl.exp(s - lse[:, None]), 0.0)
        p_kept = p * do_scale
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION) * do_scale
        if DROPOUT:
            # these queries' chunk sees this block's keys as its window's chunk number
            # window - 1 - e // chunk_len (the queries run over the window backwards)
            keep = _dropout_keep(dropout_seed, dropout_offset, dropout_threshold,
                                 (bh_slot + q_slot) * n_keys + (window - 1 - e // chunk_len) * chunk_len,
                                 (pid % blocks_per_chunk) * BLOCK, drop_scale, BLOCK, WHOLE_GROUPS)
            p_kept = p_kept * keep
            dp = dp * keep
        dv += tl.dot(tl.trans(p_kept.to(v.dtype)), do, input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        ds = tl.where(replaced, 0.0, ds)
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION)

    grad_offsets = b * stride_gb + h * stride_gh + own_row[:, None] * stride_gl + offs_d[None, :]
    # Each gradient is written (or handed on) as soon as it is complete: dv, dk and the key rows
    # are not live across stage 2, which needs the registers for its own tiles.
    tl.store(DV + b * stride_vb + h * stride_vh + own_row[:, None] * stride_vl + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=own_mask_2d)
    # chain rule through the key: k = x * inv_rms * key_scale (LSH), k = x * key_scale (local); the
    # raw rows are loaded again rather than kept across stage 1
    dk = dk * key_scale
    if LSH:
        _, k_raw, inv_rms = _load_keys(K, own_pos, own_real, offs_d, d_ok, stride_xl, head_dim, key_scale, _RMS_EPS,
                                       LSH)
        x_dot_g = tl.sum(k_raw * dk, axis=1)
        dk = inv_rms[:, None] * (dk - k_raw * (inv_rms * inv_rms * x_dot_g / head_dim)[:, None])

    # stage 2: dq of this block's queries, over this chunk's window of keys
    q = tl.load(Q + own_pos[:, None] * stride_xl + offs_d[None, :], mask=own_mask_2d, other=0.0)
    do = tl.load(DOut + own_pos[:, None] * stride_dl + offs_d[None, :], mask=own_mask_2d, other=0.0).to(v.dtype)
    lse = tl.load(Lse + own_row, mask=own_real, other=0.0)
    delta = tl.load(Delta + own_row, mask=own_real, other=0.0)
    do_scale = _dout_scale(RoundWeight, own_row, own_real, lse, mask_value, n_keys, LSH)[:, None]
    if LSH:  # the shared qk's gradient: its key part (dk) plus its query part, accumulated onto it
        dq = dk
    else:
        tl.store(DK + grad_offsets, dk.to(DK.dtype.element_ty), mask=own_mask_2d)
        dq = tl.zeros([BLOCK, HEAD_BLOCK], tl.float32)
    first_chunk = (chunk + n_chunks - n_chunks_before % n_chunks) % n_chunks
    for start in range(0, n_keys, STEP):
        in_window, k_pos, k_real, k_keys, v_keys = _window_keys(K, V, SortedIdx, start + offs_step, first_chunk, window,
                                                                chunk_len, n_chunks, seq_len, offs_d, d_ok, stride_xl,
                                                                stride_xl, head_dim, key_scale, LSH)
        s = tl.dot(q, tl.trans(k_keys), input_precision=DOT_PRECISION)
        s, replaced = _masked_scores(s, own_pos, k_pos, k_real, in_window, b, Mask, stride_mb, mask_value,
                                     self_mask_value, LSH, CAUSAL, HAS_MASK)
        p = tl.where(own_real[:, None], tl.exp(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v_keys), input_precision=DOT_PRECISION) * do_scale
        if DROPOUT:
            dp = dp * _dropout_keep(dropout_seed, dropout_offset, dropout_threshold, (bh_slot + own_slot) * n_keys,
                                    start, drop_scale, STEP, WHOLE_GROUPS)
        ds = p * (dp - delta[:, None])
        ds = tl.where(replaced, 0.0, ds)
        dq += tl.dot(ds.to(k_keys.dtype), k_keys, input_precision=DOT_PRECISION)

    tl.store(DQ + grad_offsets, dq.to(DQ.dtype.element_ty), mask=own_mask_2d)


def chunk_grid(n_slots: int, chunk_len: int, batch: int, heads: int, tile: dict) -> tuple[int, int, int]:
    """One program per slot block of each chunk, per head and batch entry."""
    return (n_slots // chunk_len) * triton.cdiv(chunk_len, tile["BLOCK"]), heads, batch


def keep_mask_arg(attention_mask: Optional[torch.Tensor], like: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The padding mask as uint8 (1 = keep) and its batch stride; a 1-element dummy when absent."""
    if attention_mask is None:
        return torch.ones(1, dtype=torch.uint8, device=like.device), 0
    keep = (attention_mask != 0).to(torch.uint8).contiguous()
    return keep, keep.stride(0)


def dropout_args(op: str, dropout: tuple[float, int, int]) -> tuple[int, int, int, float]:
    """The kernels' attention-dropout scalars from the schema's (dropout_p, dropout_seed,
    dropout_offset): seed, offset, keep threshold and the kept probabilities' scale 1 / (1 - p)."""
    dropout_p, seed, offset = dropout
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"{op}: dropout_p must lie in [0, 1), got {dropout_p}")
    return seed, offset, keep_threshold(dropout_p), 1.0 / (1.0 - dropout_p)


def _launch_arguments(q: torch.Tensor, op: str, n_slots: int, chunk_len: int, lsh: bool,
                      attention_mask: Optional[torch.Tensor], dropout: tuple[float, int, int],
                      backward: bool) -> tuple[tuple, tuple, dict, tuple[int, int, int]]:
    """What the forward and backward launches share: the padding mask and its batch stride, the
    scalars (key_scale, mask_value, self_mask_value, then the dropout ones of ``dropout_args``), the
    constexprs (the tile and the dots' precision) and the grid."""
    batch, heads, _, head_dim = q.shape
    mask, stride_mb = keep_mask_arg(attention_mask, q)
    mask_value, self_mask_value = mask_values(q.dtype)
    tile = tiles(chunk_len, head_dim, q.dtype, backward)
    scalars = (1.0 / math.sqrt(head_dim), mask_value, self_mask_value if lsh else 0.0, *dropout_args(op, dropout))
    constexprs = dict(tile, DOT_PRECISION=dot_precision(q.dtype), WHOLE_GROUPS=chunk_len % 4 == 0)
    return (mask, stride_mb), scalars, constexprs, chunk_grid(n_slots, chunk_len, batch, heads, tile)


def slot_index(sorted_idx: torch.Tensor, n_slots: int, row_stride: int) -> torch.Tensor:
    """``sorted_idx`` as the kernels read it. They compute row offsets (index * row stride) in the
    index's type: bucket_sort's int32 serves while n_slots times the largest row stride an index
    multiplies stays below 2^31 (head_dim for contiguous rows; H * head_dim for the rows of
    head-split views), int64 past that."""
    return sorted_idx.long() if n_slots * row_stride >= 2**31 else sorted_idx


def shared_rows(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(B, H, L, d) inputs (q, k, v) that the backward kernel addresses with one set of strides: as
    they are where they already share their strides with head_dim contiguous (head-split views of
    projections laid out alike, or contiguous tensors), else contiguous copies."""
    first = tensors[0]
    if first.stride(-1) == 1 and all(t.stride() == first.stride() for t in tensors):
        return tensors
    return tuple(t.contiguous() for t in tensors)


def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sorted_idx: Optional[torch.Tensor],
                      out: torch.Tensor, lse: torch.Tensor, *, op: str, n_slots: int, chunk_len: int,
                      n_chunks_before: int, n_chunks_after: int, causal: bool, attention_mask: Optional[torch.Tensor],
                      dropout: tuple[float, int, int]) -> None:
    """Launches ``attention_fwd_kernel`` over ``n_slots`` query slots of (B, H, L, d) inputs read
    through their strides (head-split views in place), whose rows are contiguous
    (``unit_stride_rows``). LSH when ``sorted_idx`` (B, H, n_slots), slots contiguous, is given
    (slots are its entries, k is q), else local (slots are positions). Writes each query's output
    and lse at its row of ``out`` (B, H, rows, d), any strides with rows contiguous, and ``lse``
    (B, H, rows), rows contiguous. ``dropout``: the schema's (dropout_p, dropout_seed,
    dropout_offset)."""
    lsh = sorted_idx is not None
    window = n_chunks_before + 1 + n_chunks_after
    (mask, stride_mb), scalars, constexprs, grid = _launch_arguments(q, op, n_slots, chunk_len, lsh, attention_mask,
                                                                      dropout, backward=False)
    row_stride = max(q.stride(2), k.stride(2), v.stride(2), out.stride(2))
    slots = slot_index(sorted_idx, n_slots, row_stride) if lsh else lse
    attention_fwd_kernel[grid](
        q, k, v, slots, mask, out, lse,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        slots.stride(0), slots.stride(1),
        lse.stride(0), lse.stride(1),
        stride_mb,
        q.shape[2], n_slots, chunk_len, n_chunks_before, window, q.shape[3],
        *scalars,
        LSH=lsh, CAUSAL=causal, HAS_MASK=attention_mask is not None, DROPOUT=dropout[0] > 0.0,
        **constexprs,
    )


def attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sorted_idx: Optional[torch.Tensor],
                       out: torch.Tensor, grad_out: torch.Tensor, lse: torch.Tensor, grad_lse: Optional[torch.Tensor],
                       grad_q: torch.Tensor, grad_k: torch.Tensor, grad_v: torch.Tensor, *, op: str, n_slots: int,
                       chunk_len: int, n_chunks_before: int, n_chunks_after: int, causal: bool,
                       attention_mask: Optional[torch.Tensor], dropout: tuple[float, int, int]) -> None:
    """Launches ``attention_bwd_prologue_kernel`` (round weights and delta, in fp32) then
    ``attention_bwd_kernel``: the gradients of every slot's rows into ``grad_q``, ``grad_k``,
    ``grad_v`` (B, H, rows, d; grad_q and grad_k laid out alike), from ``out`` and ``grad_out``
    (B, H, L, d), the per-row ``lse`` (B, H, rows, rounds one after the other, contiguous) and
    ``grad_lse`` (B, H, rounds, L; None: zero). q, k and v must share their strides
    (``shared_rows``); out and grad_out are read through their own (copied only where head_dim is
    not contiguous, ``unit_stride_rows``). LSH when ``sorted_idx`` is given (then k is q and grad_k
    is grad_q), else local."""
    lsh = sorted_idx is not None
    batch, heads, seq_len, head_dim = q.shape
    n_rows = lse.shape[2]
    out, grad_out = unit_stride_rows(out), unit_stride_rows(grad_out)
    (mask, stride_mb), scalars, constexprs, grid = _launch_arguments(q, op, n_slots, chunk_len, lsh, attention_mask,
                                                                      dropout, backward=True)
    mask_value, self_mask_value = mask_values(q.dtype)
    n_keys = chunk_len * (n_chunks_before + 1 + n_chunks_after)
    delta = torch.empty_like(lse)
    round_weight = torch.empty_like(lse) if lsh else delta  # local attention's is computed from lse
    grad_lse_arg = lse if grad_lse is None else grad_lse
    block = 16  # positions per program: a memory-bound pass over d out and out
    attention_bwd_prologue_kernel[(triton.cdiv(seq_len, block), heads, batch)](
        grad_out, out, lse, grad_lse_arg, round_weight, delta,
        grad_out.stride(0), grad_out.stride(1), grad_out.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        lse.stride(0), lse.stride(1),
        *(grad_lse.stride() if grad_lse is not None else (0, 0, 0, 0)),
        seq_len, n_rows // seq_len, head_dim, self_mask_value if lsh else mask_value, n_keys,
        LSH=lsh, HAS_DLSE=grad_lse is not None, HEAD_BLOCK=constexprs["HEAD_BLOCK"], BLOCK=block,
    )
    row_stride = max(q.stride(2), grad_out.stride(2), grad_q.stride(2), grad_v.stride(2))
    attention_bwd_kernel[grid](
        q, k, v, slot_index(sorted_idx, n_slots, row_stride) if lsh else lse, mask, grad_out,
        round_weight, lse, delta, grad_q, grad_k, grad_v,
        q.stride(0), q.stride(1), q.stride(2),
        grad_out.stride(0), grad_out.stride(1), grad_out.stride(2),
        grad_q.stride(0), grad_q.stride(1), grad_q.stride(2),
        grad_v.stride(0), grad_v.stride(1), grad_v.stride(2),
        lse.stride(0), lse.stride(1),
        stride_mb,
        seq_len, n_slots, chunk_len, n_chunks_before, n_chunks_after, head_dim,
        *scalars,
        LSH=lsh, CAUSAL=causal, HAS_MASK=attention_mask is not None, DROPOUT=dropout[0] > 0.0,
        **constexprs,
    )
