"""lsh_decode_step in Triton: one program per (batch, head) inserts the new position's key into
each round's recent run, then per round finds the window's positions in the two sorted runs (a
merge-path binary search per window entry) and attends the query to them, combining the rounds by
their log-sum-exp as it goes; behind reformer_kernels::triton_lsh_decode_step, which takes the
arguments of the lsh_decode_step schema (see ``__init__``). One launch per layer and step, no host
read: every size it needs is a shape or a Python int."""
import torch
import triton
import triton.language as tl

from ... import backends
from ...reference.chunked import mask_values
from ..chunk_attention_triton import _RMS_EPS, _load_keys, _masked_scores
from ..triton_utils import check_dtype, head_block, unit_stride_rows
from . import register

_POSITION_MASK = tl.constexpr(0xFFFFFFFF)  # the low POSITION_BITS = 32 bits of a sort key


# The sizes that change every step are not specialized on (divisibility by 16, equality to 1): one
# compiled kernel serves every step instead of a few variants compiled along the first steps.
@triton.jit(do_not_specialize=["n_merged", "n_recent", "position", "padded_len", "MERGED_STEPS", "SPLIT_STEPS"])
def _decode_step_kernel(
    QK, V, Merged, Recent, SortKeys, KeyValid, Out,
    stride_qb, stride_qh, stride_ql,  # QK: (B, H, capacity, head_dim), head_dim contiguous
    stride_vb, stride_vh, stride_vl,  # V: the same
    stride_mb, stride_mh, stride_mr,  # Merged: (B, H, n_hashes, n_merged), last dim contiguous
    stride_rb, stride_rh, stride_rr,  # Recent: (B, H, n_hashes, R), contiguous
    stride_kb, stride_kh,  # SortKeys: (B, H, n_hashes), last dim contiguous
    stride_ab,  # KeyValid: (B, position + 1) uint8
    stride_ob, stride_oh,  # Out: (B, H, head_dim)
    n_hashes, n_merged, n_recent, position, padded_len, chunk_len, n_chunks_before, window, head_dim,
    key_scale, mask_value, self_mask_value,
    MERGED_STEPS, SPLIT_STEPS,  # binary search iterations: over a merged run, over a merge path
    RECENT_BLOCK: tl.constexpr, WINDOW_BLOCK: tl.constexpr, HEAD_BLOCK: tl.constexpr,
):
    h = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    Merged += b * stride_mb + h * stride_mh
    Recent += b * stride_rb + h * stride_rh
    SortKeys += b * stride_kb + h * stride_kh
    slots = tl.arange(0, RECENT_BLOCK)

    # stage 1: insert the new key into each round's sorted recent run (shift the larger ones up)
    for r in range(n_hashes):
        key = tl.load(SortKeys + r)
        row = Recent + r * stride_rr
        held_ok = slots < n_recent
        held = tl.load(row + slots, mask=held_ok, other=0)
        shifted = tl.load(row + slots - 1, mask=(slots >= 1) & (slots <= n_recent), other=0)
        below = tl.sum((held_ok & (held < key)).to(tl.int64), axis=0)
        inserted = tl.where(slots < below, held, tl.where(slots == below, key, shifted))
        tl.debug_barrier()  # every thread has read the row before any writes it
        tl.store(row + slots, inserted, mask=slots <= n_recent)
    tl.debug_barrier()  # the windows below read every round's updated run

    # stage 2: per round, the window's positions in sorted order, attention, online round combination
    length = position + 1
    n_in_recent = n_recent + 1
    n_chunks = n_hashes * padded_len // chunk_len
    offs_d = tl.arange(0, HEAD_BLOCK)
    d_ok = offs_d < head_dim
    QK += b * stride_qb + h * stride_qh
    V += b * stride_vb + h * stride_vh
    query = tl.load(QK + position * stride_ql + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    e = tl.arange(0, WINDOW_BLOCK)
    in_window = e < window
    query_position = tl.zeros([1], tl.int64) + position
    best = tl.full([], float("-inf"), tl.float32)
    total = tl.zeros([], tl.float32)
    acc = tl.zeros([HEAD_BLOCK], tl.float32)
    for r in range(n_hashes):
        key = tl.load(SortKeys + r)
        # the key's rank: a binary search in the merged run plus a count in the recent one
        merged_row = Merged + r * stride_mr
        lo = tl.zeros([], tl.int64)
        hi = tl.zeros([], tl.int64) + n_merged
        for _ in range(MERGED_STEPS):
            active = lo < hi
            mid = (lo + hi) // 2
            right = active & (tl.load(merged_row + mid, mask=active, other=0) < key)
            lo = tl.where(right, mid + 1, lo)
            hi = tl.where(active & ~right, mid, hi)
        in_recent = slots < n_in_recent
        below = tl.sum((in_recent & (tl.load(Recent + r * stride_rr + slots, mask=in_recent, other=0) < key)).to(tl.int64),
                       axis=0)
        own_chunk = (r * padded_len + lo + below) // chunk_len
        chunk = ((own_chunk + e // chunk_len - n_chunks_before) % n_chunks + n_chunks) % n_chunks
        start = chunk * chunk_len
        merged_rows = Merged + (start // padded_len) * stride_mr
        recent_rows = Recent + (start // padded_len) * stride_rr
        rank = start % padded_len + e % chunk_len
        inside = in_window & (rank < length)
        # entry `rank` of the union of the two runs: split the first `rank` entries between them
        split_lo = tl.maximum(rank - n_in_recent, 0)
        split_hi = tl.minimum(rank, n_merged)
        for _ in range(SPLIT_STEPS):
            active = inside & (split_lo < split_hi)
            mid = (split_lo + split_hi) // 2
            a = tl.load(merged_rows + mid, mask=active, other=0)
            c = tl.load(recent_rows + (rank - mid - 1), mask=active, other=0)
            enough = a > c
            split_hi = tl.where(active & enough, mid, split_hi)
            split_lo = tl.where(active & ~enough, mid + 1, split_lo)
        from_recent = rank - split_lo
        a = tl.load(merged_rows + split_lo, mask=inside & (split_lo < n_merged), other=0)
        c = tl.load(recent_rows + from_recent, mask=inside & (from_recent < n_in_recent), other=0)
        take_merged = (from_recent >= n_in_recent) | ((split_lo < n_merged) & (a < c))
        key_position = tl.where(inside, tl.where(take_merged, a, c) & _POSITION_MASK, rank)
        # the query against the window, with the chunked attention's masks
        real = in_window & (key_position <= position)
        keys, _, _ = _load_keys(QK, key_position, real, offs_d, d_ok, stride_ql, head_dim, key_scale, _RMS_EPS, True)
        scores = tl.sum(keys.to(tl.float32) * query[None, :], axis=1)[None, :]
        scores, _ = _masked_scores(scores, query_position, key_position, real, in_window, b, KeyValid, stride_ab,
                                   mask_value, self_mask_value, True, True, True)
        scores = tl.sum(scores, axis=0)  # the one query's row
        top = tl.max(scores, axis=0)
        p = tl.exp(scores - top)
        round_sum = tl.sum(p, axis=0)
        values = tl.load(V + key_position[:, None] * stride_vl + offs_d[None, :], mask=real[:, None] & d_ok[None, :],
                         other=0.0).to(tl.float32)
        out_r = tl.sum(p[:, None] * values, axis=0) / round_sum
        lse = top + tl.log(round_sum)
        # rounds weighted by exp(lse_r - logsumexp lse), accumulated with a running maximum
        new_best = tl.maximum(best, lse)
        rescale = tl.exp(best - new_best)
        weight = tl.exp(lse - new_best)
        acc = acc * rescale + out_r * weight
        total = total * rescale + weight
        best = new_best
    tl.store(Out + b * stride_ob + h * stride_oh + offs_d, (acc / total).to(Out.dtype.element_ty), mask=d_ok)


def _steps(n: int) -> int:
    """Iterations of a binary search over n + 1 candidate answers."""
    return n.bit_length()


@torch.library.custom_op("reformer_kernels::triton_lsh_decode_step", mutates_args=("recent",))
def lsh_decode_step(
    qk: torch.Tensor, v: torch.Tensor, merged: torch.Tensor, recent: torch.Tensor, n_recent: int, sort_keys: torch.Tensor,
    key_valid: torch.Tensor, position: int, padded_len: int, chunk_len: int, n_chunks_before: int, n_chunks_after: int,
) -> torch.Tensor:
    """Returns out (B, H, d) in qk's dtype, computed in fp32; inserts sort_keys into recent."""
    check_dtype("lsh_decode_step", qk)
    batch, heads, capacity, head_dim = qk.shape
    # What the kernel's addressing relies on (functional checks every argument; these guard direct
    # calls of the op from reading or writing out of bounds). Shapes and ints only: no host read.
    if not (0 <= n_recent < recent.shape[3] and merged.shape[3] + n_recent == position < capacity
            and tuple(key_valid.shape) == (batch, position + 1) and recent.is_contiguous()):
        raise ValueError(
            f"lsh_decode_step: need 0 <= n_recent < recent.shape[3], merged.shape[3] + n_recent == position < capacity, "
            f"key_valid (batch, position + 1) and a contiguous recent; got n_recent {n_recent}, recent {tuple(recent.shape)}, "
            f"merged {tuple(merged.shape)}, position {position}, capacity {capacity}, key_valid {tuple(key_valid.shape)}"
        )
    out = qk.new_empty((batch, heads, head_dim))
    qk, v, merged, sort_keys = (unit_stride_rows(t) for t in (qk, v, merged, sort_keys))
    keep = key_valid.contiguous().view(torch.uint8)
    n_hashes, n_merged, recent_len = merged.shape[2], merged.shape[3], recent.shape[3]
    window = (n_chunks_before + 1 + n_chunks_after) * chunk_len
    mask_value, self_mask_value = mask_values(qk.dtype)
    _decode_step_kernel[(heads, batch)](
        qk, v, merged, recent, sort_keys, keep, out,
        qk.stride(0), qk.stride(1), qk.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        merged.stride(0), merged.stride(1), merged.stride(2),
        recent.stride(0), recent.stride(1), recent.stride(2),
        sort_keys.stride(0), sort_keys.stride(1),
        keep.stride(0),
        out.stride(0), out.stride(1),
        n_hashes, n_merged, n_recent, position, padded_len, chunk_len, n_chunks_before, window, head_dim,
        head_dim**-0.5, mask_value, self_mask_value,
        _steps(n_merged), _steps(n_recent + 1),
        RECENT_BLOCK=triton.next_power_of_2(recent_len), WINDOW_BLOCK=triton.next_power_of_2(window),
        HEAD_BLOCK=head_block(head_dim),
        # the fewest spills measured by tests/ops/test_lsh_decode_step.py's compile test
        num_warps=8 if head_block(head_dim) <= 64 else 4,
    )
    return out


register(lsh_decode_step)
backends.register("lsh_decode_step", "triton", lsh_decode_step)
