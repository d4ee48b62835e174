"""lsh_hash in Triton: rotate (tl.dot) -> argmax over [xR, -xR] per bucket factor -> padding
bucket -> round offset, for every hash round in one launch, behind reformer_kernels::triton_lsh_hash
and reformer_kernels::triton_lsh_hash_packed (the arguments of the lsh_hash and lsh_hash_packed
schemas, see ``__init__``). The ids it writes are the sort keys of bucket_sort (round-major, so one
stable sort orders by (round, bucket, position)); packed with their row and written beside their
positions, they are bucket_sort_packed's, which the GPU's radix sort takes as they are. The rotation's
tl.dot follows torch's fp32 matmul setting for fp32 inputs (``triton_utils.dot_precision``): full
"ieee" products by default, TF32 tensor cores when ``torch.backends.cuda.matmul.allow_tf32`` is True,
whose rounding can move a vector whose top two rotations nearly tie into the other bucket, as
torch's own TF32 matmul would."""
import math
from typing import Optional

import torch
import triton
import triton.language as tl

from ... import backends
from ..bucket_sort import packed_key_dtype, triton_can_sort
from ..triton_utils import check_dtype, dot_precision, head_block, unit_stride_rows
from . import hash_sort_packed, hash_with, hashed_keys


@triton.jit
def _hash_kernel(
    X, Rotations, Mask, Keys, Positions,
    stride_xb, stride_xh, stride_xl,  # X: (B, H, L, head_dim), head_dim contiguous
    stride_rh, stride_rd, stride_rn,  # Rotations: (H, head_dim, n_hashes, R / 2), last dim contiguous
    stride_mb,  # Mask: (B, L)
    # Keys, Positions: (B, H, row_len = n_hashes * L) contiguous; key = row * row_keys + id (the id alone
    # for row_keys = 0), row = b * heads + h
    heads, seq_len, row_len, head_dim, factors, n_buckets, ids_per_round, row_keys,  # factors: a tuple of N_FACTORS ints
    N_FACTORS: tl.constexpr, HAS_PADDING: tl.constexpr, WRITE_POSITIONS: tl.constexpr,
    HEAD_BLOCK: tl.constexpr, ROT_BLOCK: tl.constexpr, BLOCK: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    blocks_per_round = tl.cdiv(seq_len, BLOCK)
    hash_round = tl.program_id(0) // blocks_per_round
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    pos = (tl.program_id(0) % blocks_per_round).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = pos < seq_len
    offs_d = tl.arange(0, HEAD_BLOCK)
    d_ok = offs_d < head_dim
    cols = tl.arange(0, ROT_BLOCK)
    x = tl.load(X + b * stride_xb + h * stride_xh + pos[:, None] * stride_xl + offs_d[None, :],
                mask=ok[:, None] & d_ok[None, :], other=0.0)
    rotations = Rotations + h * stride_rh + hash_round * stride_rn + offs_d[:, None] * stride_rd

    # bucket = i1 + b1 * i2 + b1 * b2 * i3 ..., factor f hashed on its own slice of the rotation
    bucket = tl.zeros([BLOCK], tl.int64)
    start = 0
    stride = tl.full([], 1, tl.int64)
    for f in tl.static_range(N_FACTORS):
        half = factors[f] // 2
        # argmax over the concatenation [xR, -xR], ROT_BLOCK rotations at a time, so that shared
        # memory and registers stay bounded whatever the number of buckets: a running maximum of each
        # half and its first index. A later tile replaces it only when strictly larger, and -xR wins
        # only when strictly larger than xR, so the first maximum wins, as torch.argmax.
        best_plus = tl.full([BLOCK], float("-inf"), tl.float32)
        best_minus = tl.full([BLOCK], float("-inf"), tl.float32)
        arg_plus = tl.zeros([BLOCK], tl.int32)
        arg_minus = tl.zeros([BLOCK], tl.int32)
        for tile in range(0, half, ROT_BLOCK):
            in_factor = (tile + cols) < half
            rot = tl.load(rotations + (start + tile + cols)[None, :], mask=d_ok[:, None] & in_factor[None, :], other=0.0)
            # fp32 follows torch's allow_tf32 (triton_utils.dot_precision): TF32 rounding can flip
            # near-tied buckets, as it does in torch's own fp32 matmul of the reference hash
            rotated = tl.dot(x, rot, input_precision=DOT_PRECISION)
            plus = tl.where(in_factor[None, :], rotated, float("-inf"))
            minus = tl.where(in_factor[None, :], -rotated, float("-inf"))
            tile_plus = tl.max(plus, axis=1)
            tile_minus = tl.max(minus, axis=1)
            arg_plus = tl.where(tile_plus > best_plus, tile + tl.argmax(plus, axis=1), arg_plus)
            arg_minus = tl.where(tile_minus > best_minus, tile + tl.argmax(minus, axis=1), arg_minus)
            best_plus = tl.maximum(best_plus, tile_plus)
            best_minus = tl.maximum(best_minus, tile_minus)
        choice = tl.where(best_minus > best_plus, arg_minus + half, arg_plus)
        bucket += stride * choice.to(tl.int64)
        start += half
        stride *= factors[f]

    if HAS_PADDING:
        keep = tl.load(Mask + b * stride_mb + pos, mask=ok, other=1)
        bucket = tl.where(keep != 0, bucket, n_buckets)
    row = b * heads + h
    entry = hash_round * seq_len + pos
    key = row * row_keys + hash_round * ids_per_round + bucket
    tl.store(Keys + row * row_len + entry, key.to(Keys.dtype.element_ty), mask=ok)
    if WRITE_POSITIONS:
        tl.store(Positions + row * row_len + entry, entry.to(tl.int32), mask=ok)


def rotation_block(n_buckets: list[int]) -> int:
    """Rotations per tile of the argmax: the largest factor's half, padded to a power of two between
    16 (the smallest tl.dot side) and 32, so that larger factors loop over tiles."""
    return min(32, max(16, triton.next_power_of_2(max(n_buckets) // 2)))


def _hash_into(op, keys, positions, vectors, rotations, n_buckets, attention_mask, row_keys):
    """Launches the hash of ``op``, writing ``keys`` (and ``positions``, unless None) with key = row *
    row_keys + id."""
    check_dtype(op, vectors)
    vectors, rotations = unit_stride_rows(vectors), unit_stride_rows(rotations)  # head-split views read in place
    batch, heads, seq_len, head_dim = vectors.shape
    n_hashes = rotations.shape[2]
    buckets_per_round = math.prod(n_buckets)
    ids_per_round = buckets_per_round + (attention_mask is not None)
    if attention_mask is None:
        mask, stride_mb = keys, 0  # never read
    else:
        mask = (attention_mask != 0).to(torch.uint8).contiguous()
        stride_mb = mask.stride(0)
    block = 16 if backends.triton_interpreted() else 64
    _hash_kernel[(n_hashes * triton.cdiv(seq_len, block), heads, batch)](
        vectors, rotations, mask, keys, keys if positions is None else positions,
        vectors.stride(0), vectors.stride(1), vectors.stride(2),
        rotations.stride(0), rotations.stride(1), rotations.stride(2),
        stride_mb,
        heads, seq_len, n_hashes * seq_len, head_dim, tuple(n_buckets), buckets_per_round, ids_per_round, row_keys,
        N_FACTORS=len(n_buckets), HAS_PADDING=attention_mask is not None, WRITE_POSITIONS=positions is not None,
        HEAD_BLOCK=head_block(head_dim), ROT_BLOCK=rotation_block(n_buckets), BLOCK=block,
        DOT_PRECISION=dot_precision(vectors.dtype),
        # fp32's "ieee" dot runs on the FMA units and spills at 4 warps (tests/ops/test_triton_compile.py)
        num_warps=8 if vectors.dtype == torch.float32 else 4,
    )


@torch.library.custom_op("reformer_kernels::triton_lsh_hash", mutates_args=())
def lsh_hash(
    vectors: torch.Tensor, rotations: torch.Tensor, n_buckets: list[int], attention_mask: Optional[torch.Tensor]
) -> torch.Tensor:
    """Bucket ids (B, H, n_hashes * L) int64 for the bucket factors ``n_buckets``. ``attention_mask``
    (B, L), given only when it pads something: padding tokens then get bucket prod(n_buckets) and
    rounds prod(n_buckets) + 1 ids."""
    batch, heads, seq_len, _ = vectors.shape
    buckets = torch.empty(batch, heads, rotations.shape[2] * seq_len, dtype=torch.int64, device=vectors.device)
    _hash_into("lsh_hash", buckets, None, vectors, rotations, n_buckets, attention_mask, 0)
    return buckets


@torch.library.custom_op("reformer_kernels::triton_lsh_hash_packed", mutates_args=())
def lsh_hash_packed(
    vectors: torch.Tensor, rotations: torch.Tensor, n_buckets: list[int], attention_mask: Optional[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``lsh_hash``'s ids packed as bucket_sort_packed's keys, row * num_keys + id (uint32 or uint64,
    ``packed_key_dtype``), and their positions in the row (int32), both (B, H, n_hashes * L)."""
    batch, heads, seq_len, _ = vectors.shape
    num_keys = hashed_keys(rotations, n_buckets, attention_mask)
    shape = (batch, heads, rotations.shape[2] * seq_len)
    keys = torch.empty(shape, dtype=packed_key_dtype("lsh_hash_packed", batch * heads, num_keys), device=vectors.device)
    positions = torch.empty(shape, dtype=torch.int32, device=vectors.device)
    _hash_into("lsh_hash_packed", keys, positions, vectors, rotations, n_buckets, attention_mask, num_keys)
    return keys, positions


backends.register("lsh_hash", "triton", hash_with(lsh_hash))
hash_sort = hash_sort_packed(lsh_hash_packed)
if triton_can_sort():
    backends.register("lsh_hash_sort", "triton", hash_sort)
