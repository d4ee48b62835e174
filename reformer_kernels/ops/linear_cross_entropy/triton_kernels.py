"""linear_cross_entropy in Triton: the LM head projection + cross-entropy without the (tokens x vocab) logits.

Forward: one program per block of BLOCK_N tokens walks the vocabulary in tiles of BLOCK_V. Each
logits tile is hidden_block @ weight_tile^T (+ bias), accumulated in fp32 over the hidden dim in
tiles of BLOCK_D; an online max / sum-exp turns the tiles into one log-sum-exp per token, and the
label's logit is picked up on the way. It writes each token's loss (0 for ignore_index) and lse.

Backward, FlashAttention-2 style: two kernels recompute the logits tiles and, from lse, the
softmax; d loss / d logits = softmax * (d loss + d lse) - one_hot(label) * d loss per token.
One kernel owns blocks of grad_hidden rows (a sum over vocabulary tiles), the other blocks of
grad_weight rows and grad_bias (a sum over token blocks). Neither uses atomics: each output tile is
summed by one program in a fixed order, or, where there are too few output tiles to fill a GPU,
by a fixed number of programs over fixed segments of the sum whose fp32 partials torch then adds
in order (``segments``). So every run gives the same bits.

The mean over counted tokens is torch's sum of the per-token losses (no atomics either) divided by
their count: nan when no token counts, as torch's cross-entropy.

Every tl.dot takes its input_precision from the constexpr DOT_PRECISION (``triton_utils.dot_precision``):
fp32 follows torch's own fp32 matmuls, full-precision "ieee" products by default, TF32 tensor cores
once ``torch.backends.cuda.matmul.allow_tf32`` is True (or ``torch.set_float32_matmul_precision("high")``),
which rounds hidden, weight and grad_logits to 10 mantissa bits inside each dot (up to 2^-11 = 4.9e-4
relative per operand); fp16/bf16 inputs use tensor cores either way.
"""
from typing import Optional

import torch
import triton
import triton.language as tl

from ... import backends
from ..triton_utils import check_dtype, dot_precision, warp_configs

# Output tiles (programs) a backward launch aims for before it splits its sum into segments: enough
# to fill a GPU's SMs several times over. A constant, not the device's SM count, so that the
# segments and hence the bits do not depend on the GPU. The interpreter's 16 makes its small tests
# cross segment boundaries.
_TARGET_PROGRAMS = 512


def forward_tiles(dtype: torch.dtype) -> dict:
    """The forward's logits tile, BLOCK_N tokens x BLOCK_V vocabulary entries, summed over the
    hidden dim in steps of BLOCK_D. The interpreter takes 16 so that its small tests cross every
    tile boundary. The GPU tiles are the largest whose cubins for sm_80 and sm_90 spill at most a
    few dozen bytes of registers at the better of 4 and 8 warps (cuobjdump -res-usage); fp32 dots
    in ieee precision (the default, ``dot_precision``) run on the FMA units, out of registers, so
    fp32 tiles are smaller."""
    if backends.triton_interpreted():
        return dict(BLOCK_N=16, BLOCK_V=16, BLOCK_D=16)
    if dtype == torch.float32:
        return dict(BLOCK_N=32, BLOCK_V=64, BLOCK_D=32)
    return dict(BLOCK_N=64, BLOCK_V=64, BLOCK_D=32)


def backward_tiles(dim: int, dtype: torch.dtype) -> dict:
    """The backward's logits tile as ``forward_tiles`` and BLOCK_OUT, the hidden features per
    program: its grad_hidden or grad_weight tile (BLOCK_N or BLOCK_V x BLOCK_OUT, fp32) lives in
    registers, and the dim / BLOCK_OUT programs that share a token (vocabulary) block each recompute
    its logits, so BLOCK_OUT is as wide as the registers allow (same spill bound as the forward)."""
    if backends.triton_interpreted():
        return dict(BLOCK_N=16, BLOCK_V=16, BLOCK_D=16, BLOCK_OUT=16)
    if dtype == torch.float32:
        tile = dict(BLOCK_N=32, BLOCK_V=32, BLOCK_D=16, BLOCK_OUT=64)
    else:
        tile = dict(BLOCK_N=64, BLOCK_V=64, BLOCK_D=32, BLOCK_OUT=128)
    tile["BLOCK_OUT"] = min(tile["BLOCK_OUT"], max(16, triton.next_power_of_2(dim)))
    return tile


def segments(n_blocks: int, programs: int) -> tuple[int, int]:
    """(blocks per segment, segments): how a sum over ``n_blocks`` tiles is cut so that
    ``programs`` output tiles times the segments reach _TARGET_PROGRAMS (16 interpreted)."""
    target = 16 if backends.triton_interpreted() else _TARGET_PROGRAMS
    wanted = max(1, min(n_blocks, triton.cdiv(target, programs)))
    per_segment = triton.cdiv(n_blocks, wanted)
    return per_segment, triton.cdiv(n_blocks, per_segment)


@triton.jit
def _logits_tile(Hidden, Weight, Bias, rows, rows_ok, cols, cols_ok, dim, stride_hn, stride_wv,
                 HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
                 DOT_PRECISION: tl.constexpr):
    """fp32 logits hidden[rows] @ weight[cols]^T + bias[cols] (BLOCK_N x BLOCK_V); -inf in the
    columns past the vocabulary, so that they vanish from every softmax."""
    offs_d = tl.arange(0, BLOCK_D)
    row_offsets = rows.to(tl.int64)[:, None] * stride_hn
    col_offsets = cols.to(tl.int64)[:, None] * stride_wv
    logits = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
    for start in range(0, dim, BLOCK_D):
        d = start + offs_d
        d_ok = d < dim
        h = tl.load(Hidden + row_offsets + d[None, :], mask=rows_ok[:, None] & d_ok[None, :], other=0.0)
        w = tl.load(Weight + col_offsets + d[None, :], mask=cols_ok[:, None] & d_ok[None, :], other=0.0)
        logits = tl.dot(h, tl.trans(w), logits, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        logits += tl.load(Bias + cols, mask=cols_ok, other=0.0).to(tl.float32)[None, :]
    return tl.where(cols_ok[None, :], logits, float("-inf"))


@triton.jit
def _grad_logits(logits, lse, cols, labels, softmax_scale, label_scale):
    """d loss / d logits of one tile: softmax * softmax_scale - one_hot(label) * label_scale per row."""
    p = tl.exp(logits - lse[:, None])
    return p * softmax_scale[:, None] - tl.where(cols[None, :] == labels[:, None], label_scale[:, None], 0.0)


@triton.autotune(configs=warp_configs(), key=["dim", "vocab_size", "HAS_BIAS", "BLOCK_N", "BLOCK_V", "BLOCK_D",
                                               "DOT_PRECISION"])
@triton.jit
def linear_cross_entropy_fwd_kernel(
    Hidden, Weight, Bias, Labels, Losses, Lse,
    stride_hn,  # Hidden: (N, D), D contiguous
    stride_wv,  # Weight: (V, D), D contiguous
    n_tokens, vocab_size, dim, ignore_index,
    HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_ok = rows < n_tokens
    labels = tl.load(Labels + rows, mask=rows_ok, other=ignore_index)
    m_i = tl.full([BLOCK_N], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_N], tl.float32)
    target = tl.zeros([BLOCK_N], tl.float32)
    for start in range(0, vocab_size, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        cols_ok = cols < vocab_size
        logits = _logits_tile(Hidden, Weight, Bias, rows, rows_ok, cols, cols_ok, dim, stride_hn, stride_wv,
                              HAS_BIAS, BLOCK_N, BLOCK_V, BLOCK_D, DOT_PRECISION)
        # online softmax: rescale the running sum to the new running max
        m_new = tl.maximum(m_i, tl.max(logits, axis=1))
        l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(logits - m_new[:, None]), axis=1)
        m_i = m_new
        target += tl.sum(tl.where(cols[None, :] == labels[:, None], logits, 0.0), axis=1)
    lse = m_i + tl.log(l_i)
    tl.store(Lse + rows, lse, mask=rows_ok)
    tl.store(Losses + rows, tl.where(labels != ignore_index, lse - target, 0.0), mask=rows_ok)


@triton.autotune(configs=warp_configs(), key=["dim", "vocab_size", "HAS_BIAS", "BLOCK_N", "BLOCK_V", "BLOCK_D",
                                               "BLOCK_OUT", "DOT_PRECISION"])
@triton.jit
def linear_cross_entropy_grad_hidden_kernel(
    Hidden, Weight, Bias, Labels, Lse, SoftmaxScale, LabelScale, GradScale, GradHidden,
    stride_hn,  # Hidden: (N, D), D contiguous
    stride_wv,  # Weight: (V, D), D contiguous
    stride_gs, stride_gn,  # GradHidden: (segments, N, D), D contiguous
    n_tokens, vocab_size, dim, blocks_per_segment,
    HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_OUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """grad_hidden[rows, out] = sum over this segment's vocabulary tiles of grad_logits @ weight[:, out]."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_ok = rows < n_tokens
    out = tl.program_id(1) * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
    out_ok = out < dim
    segment = tl.program_id(2)
    labels = tl.load(Labels + rows, mask=rows_ok, other=-1)
    # lse = inf gives the rows past the end a softmax of 0 whatever their logits (the bias alone)
    lse = tl.load(Lse + rows, mask=rows_ok, other=float("inf"))
    softmax_scale = tl.load(SoftmaxScale + rows, mask=rows_ok, other=0.0)
    label_scale = tl.load(LabelScale + rows, mask=rows_ok, other=0.0)
    acc = tl.zeros([BLOCK_N, BLOCK_OUT], tl.float32)
    first = segment * blocks_per_segment * BLOCK_V
    last = tl.minimum(first + blocks_per_segment * BLOCK_V, vocab_size)
    for start in range(first, last, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        cols_ok = cols < vocab_size
        logits = _logits_tile(Hidden, Weight, Bias, rows, rows_ok, cols, cols_ok, dim, stride_hn, stride_wv,
                              HAS_BIAS, BLOCK_N, BLOCK_V, BLOCK_D, DOT_PRECISION)
        grad_logits = _grad_logits(logits, lse, cols, labels, softmax_scale, label_scale)
        w = tl.load(Weight + cols.to(tl.int64)[:, None] * stride_wv + out[None, :],
                    mask=cols_ok[:, None] & out_ok[None, :], other=0.0)
        acc = tl.dot(grad_logits.to(w.dtype), w, acc, input_precision=DOT_PRECISION)
    acc *= tl.load(GradScale)
    tl.store(GradHidden + segment.to(tl.int64) * stride_gs + rows.to(tl.int64)[:, None] * stride_gn + out[None, :],
             acc, mask=rows_ok[:, None] & out_ok[None, :])


@triton.autotune(configs=warp_configs(), key=["dim", "vocab_size", "HAS_BIAS", "BLOCK_N", "BLOCK_V", "BLOCK_D",
                                               "BLOCK_OUT", "DOT_PRECISION"])
@triton.jit
def linear_cross_entropy_grad_weight_kernel(
    Hidden, Weight, Bias, Labels, Lse, SoftmaxScale, LabelScale, GradScale, GradWeight, GradBias,
    stride_hn,  # Hidden: (N, D), D contiguous
    stride_wv,  # Weight: (V, D), D contiguous
    stride_gs, stride_gv,  # GradWeight: (segments, V, D), D contiguous
    stride_bs,  # GradBias: (segments, V)
    n_tokens, vocab_size, dim, blocks_per_segment,
    HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_OUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """grad_weight[cols, out] = sum over this segment's token blocks of grad_logits^T @ hidden[:, out];
    grad_bias[cols], the column sums of grad_logits, comes from the programs of the first out tile."""
    cols = tl.program_id(0) * BLOCK_V + tl.arange(0, BLOCK_V)
    cols_ok = cols < vocab_size
    out_tile = tl.program_id(1)
    out = out_tile * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
    out_ok = out < dim
    segment = tl.program_id(2)
    acc = tl.zeros([BLOCK_V, BLOCK_OUT], tl.float32)
    bias_acc = tl.zeros([BLOCK_V], tl.float32)
    first = segment * blocks_per_segment * BLOCK_N
    last = tl.minimum(first + blocks_per_segment * BLOCK_N, n_tokens)
    for start in range(first, last, BLOCK_N):
        rows = start + tl.arange(0, BLOCK_N)
        rows_ok = rows < n_tokens
        labels = tl.load(Labels + rows, mask=rows_ok, other=-1)
        # lse = inf gives the rows past the end a softmax of 0: a bias past exp's range must not
        # turn their zero hidden rows into 0 * inf in the sums over tokens
        lse = tl.load(Lse + rows, mask=rows_ok, other=float("inf"))
        softmax_scale = tl.load(SoftmaxScale + rows, mask=rows_ok, other=0.0)
        label_scale = tl.load(LabelScale + rows, mask=rows_ok, other=0.0)
        logits = _logits_tile(Hidden, Weight, Bias, rows, rows_ok, cols, cols_ok, dim, stride_hn, stride_wv,
                              HAS_BIAS, BLOCK_N, BLOCK_V, BLOCK_D, DOT_PRECISION)
        grad_logits = _grad_logits(logits, lse, cols, labels, softmax_scale, label_scale)
        h = tl.load(Hidden + rows.to(tl.int64)[:, None] * stride_hn + out[None, :],
                    mask=rows_ok[:, None] & out_ok[None, :], other=0.0)
        acc = tl.dot(tl.trans(grad_logits.to(h.dtype)), h, acc, input_precision=DOT_PRECISION)
        bias_acc += tl.sum(grad_logits, axis=0)
    grad_scale = tl.load(GradScale)
    tl.store(GradWeight + segment.to(tl.int64) * stride_gs + cols.to(tl.int64)[:, None] * stride_gv + out[None, :],
             acc * grad_scale, mask=cols_ok[:, None] & out_ok[None, :])
    tl.store(GradBias + segment.to(tl.int64) * stride_bs + cols, bias_acc * grad_scale, mask=cols_ok & (out_tile == 0))


def _segment_sums(n_segments: int, shape: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The (segments, *shape) buffer the backward kernels write: fp32 partial sums that torch adds
    in order afterwards, or, with one segment, the gradient itself in its own dtype (no fp32 copy
    of a vocab x dim gradient)."""
    return torch.empty(n_segments, *shape, dtype=torch.float32 if n_segments > 1 else dtype, device=device)


def _add_segments(partial: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return partial[0] if partial.shape[0] == 1 else partial.sum(0).to(dtype)


def _bias_arg(bias: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """The bias, or a 1-element dummy that HAS_BIAS=False never reads."""
    return like.new_zeros(1) if bias is None else bias.contiguous()


def row_scales(grad_losses: torch.Tensor, grad_lse: torch.Tensor, labels: torch.Tensor,
               ignore_index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token (softmax_scale, label_scale) (N,) fp32 of d loss / d logits from the gradients of
    the forward's losses and lse, and the 0-d grad_scale they are divided by: the scales both
    backward ops take, computed once per backward. Dividing keeps grad_logits near softmax -
    one_hot, which 16-bit floats hold at full precision, where softmax / n_tokens (the mean's
    gradient) would underflow fp16; the kernels multiply grad_scale back into their fp32 sums."""
    label_scale = torch.where(labels != ignore_index, grad_losses.float(), 0.0)
    softmax_scale = label_scale + grad_lse.float()
    if labels.numel() == 0:  # no token (a shape, no host read): amax has no value to give
        return softmax_scale, label_scale, softmax_scale.new_ones(())
    grad_scale = torch.maximum(label_scale.abs().amax(), softmax_scale.abs().amax())
    grad_scale = torch.where(grad_scale > 0, grad_scale, 1.0)
    return (softmax_scale / grad_scale).contiguous(), (label_scale / grad_scale).contiguous(), grad_scale


@torch.library.custom_op("reformer_kernels::triton_linear_cross_entropy_fwd", mutates_args=())
def linear_cross_entropy_fwd(
    hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], labels: torch.Tensor, ignore_index: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token losses (N,) fp32, 0 where the label is ignore_index, and lse (N,) fp32."""
    hidden, weight, labels = hidden.contiguous(), weight.contiguous(), labels.contiguous()
    (n_tokens, dim), vocab_size = hidden.shape, weight.shape[0]
    losses = torch.empty(n_tokens, dtype=torch.float32, device=hidden.device)
    lse = torch.empty_like(losses)
    if n_tokens == 0:
        return losses, lse
    tile = forward_tiles(hidden.dtype)
    linear_cross_entropy_fwd_kernel[(triton.cdiv(n_tokens, tile["BLOCK_N"]),)](
        hidden, weight, _bias_arg(bias, weight), labels, losses, lse,
        hidden.stride(0), weight.stride(0),
        n_tokens, vocab_size, dim, ignore_index,
        HAS_BIAS=bias is not None, DOT_PRECISION=dot_precision(hidden.dtype), **tile,
    )
    return losses, lse


@linear_cross_entropy_fwd.register_fake
def _linear_cross_entropy_fwd_fake(hidden, weight, bias, labels, ignore_index):
    losses = hidden.new_empty(hidden.shape[0], dtype=torch.float32)
    return losses, torch.empty_like(losses)


@torch.library.custom_op("reformer_kernels::triton_linear_cross_entropy_grad_hidden", mutates_args=())
def linear_cross_entropy_grad_hidden(
    softmax_scale: torch.Tensor, label_scale: torch.Tensor, grad_scale: torch.Tensor, hidden: torch.Tensor,
    weight: torch.Tensor, bias: Optional[torch.Tensor], labels: torch.Tensor, lse: torch.Tensor,
) -> torch.Tensor:
    """d hidden (N, D) in hidden's dtype from the scales of d loss / d logits (``row_scales``)."""
    hidden, weight, labels, lse = hidden.contiguous(), weight.contiguous(), labels.contiguous(), lse.contiguous()
    (n_tokens, dim), vocab_size = hidden.shape, weight.shape[0]
    if n_tokens == 0:
        return torch.empty_like(hidden)
    tile = backward_tiles(dim, hidden.dtype)
    row_blocks, out_blocks = triton.cdiv(n_tokens, tile["BLOCK_N"]), triton.cdiv(dim, tile["BLOCK_OUT"])
    per_segment, n_segments = segments(triton.cdiv(vocab_size, tile["BLOCK_V"]), row_blocks * out_blocks)
    partial = _segment_sums(n_segments, (n_tokens, dim), hidden.dtype, hidden.device)
    linear_cross_entropy_grad_hidden_kernel[(row_blocks, out_blocks, n_segments)](
        hidden, weight, _bias_arg(bias, weight), labels, lse, softmax_scale, label_scale, grad_scale, partial,
        hidden.stride(0), weight.stride(0), partial.stride(0), partial.stride(1),
        n_tokens, vocab_size, dim, per_segment,
        HAS_BIAS=bias is not None, DOT_PRECISION=dot_precision(hidden.dtype), **tile,
    )
    return _add_segments(partial, hidden.dtype)


@linear_cross_entropy_grad_hidden.register_fake
def _linear_cross_entropy_grad_hidden_fake(softmax_scale, label_scale, grad_scale, hidden, weight, bias, labels, lse):
    return torch.empty_like(hidden, memory_format=torch.contiguous_format)


@torch.library.custom_op("reformer_kernels::triton_linear_cross_entropy_grad_weight", mutates_args=())
def linear_cross_entropy_grad_weight(
    softmax_scale: torch.Tensor, label_scale: torch.Tensor, grad_scale: torch.Tensor, hidden: torch.Tensor,
    weight: torch.Tensor, bias: Optional[torch.Tensor], labels: torch.Tensor, lse: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(d weight (V, D), d bias (V,)) in weight's dtype from the scales of d loss / d logits
    (``row_scales``); d bias is what a bias would get, also when there is none."""
    hidden, weight, labels, lse = hidden.contiguous(), weight.contiguous(), labels.contiguous(), lse.contiguous()
    (n_tokens, dim), vocab_size = hidden.shape, weight.shape[0]
    if n_tokens == 0:
        return torch.zeros_like(weight), weight.new_zeros(vocab_size)
    tile = backward_tiles(dim, hidden.dtype)
    col_blocks, out_blocks = triton.cdiv(vocab_size, tile["BLOCK_V"]), triton.cdiv(dim, tile["BLOCK_OUT"])
    per_segment, n_segments = segments(triton.cdiv(n_tokens, tile["BLOCK_N"]), col_blocks * out_blocks)
    partial = _segment_sums(n_segments, (vocab_size, dim), weight.dtype, weight.device)
    partial_bias = _segment_sums(n_segments, (vocab_size,), weight.dtype, weight.device)
    linear_cross_entropy_grad_weight_kernel[(col_blocks, out_blocks, n_segments)](
        hidden, weight, _bias_arg(bias, weight), labels, lse, softmax_scale, label_scale, grad_scale, partial,
        partial_bias,
        hidden.stride(0), weight.stride(0), partial.stride(0), partial.stride(1), partial_bias.stride(0),
        n_tokens, vocab_size, dim, per_segment,
        HAS_BIAS=bias is not None, DOT_PRECISION=dot_precision(hidden.dtype), **tile,
    )
    return _add_segments(partial, weight.dtype), _add_segments(partial_bias, weight.dtype)


@linear_cross_entropy_grad_weight.register_fake
def _linear_cross_entropy_grad_weight_fake(softmax_scale, label_scale, grad_scale, hidden, weight, bias, labels, lse):
    return torch.empty_like(weight, memory_format=torch.contiguous_format), weight.new_empty(weight.shape[0])


def _setup_context(ctx, inputs, output):
    hidden, weight, bias, labels, ignore_index = inputs
    _, lse = output
    ctx.save_for_backward(hidden, weight, bias, labels, lse)
    ctx.ignore_index = ignore_index


def _backward(ctx, grad_losses, grad_lse):
    hidden, weight, bias, labels, lse = ctx.saved_tensors
    # autograd passes None for an output whose gradient nobody asked for
    grad_losses = torch.zeros_like(lse) if grad_losses is None else grad_losses
    grad_lse = torch.zeros_like(lse) if grad_lse is None else grad_lse
    grads = (*row_scales(grad_losses, grad_lse, labels, ctx.ignore_index), hidden, weight, bias, labels, lse)
    grad_hidden = linear_cross_entropy_grad_hidden(*grads) if ctx.needs_input_grad[0] else None
    grad_weight = grad_bias = None
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        grad_weight, grad_bias = linear_cross_entropy_grad_weight(*grads)
    return grad_hidden, grad_weight, None if bias is None else grad_bias, None, None


linear_cross_entropy_fwd.register_autograd(_backward, setup_context=_setup_context)


def linear_cross_entropy(hidden, weight, bias, labels, chunk_size=0, ignore_index=-100):
    """The "linear_cross_entropy" impl of the triton backend: the mean loss, a 0-d fp32 tensor.
    ``chunk_size`` sizes the PyTorch path's chunks; a program here holds one BLOCK_N x BLOCK_V
    logits tile whatever it is."""
    check_dtype("linear_cross_entropy", hidden)
    losses, _ = linear_cross_entropy_fwd(hidden, weight, bias, labels, ignore_index)
    # torch's sum reduces in a fixed order (no atomics), so the mean is deterministic too
    return losses.sum() / (labels != ignore_index).sum()


backends.register("linear_cross_entropy", "triton", linear_cross_entropy)
