"""dropout_add in Triton: out = residual ± dropout(x), the residual connection of a reversible half, one pass.

Forward (y = x + dropout(f)) and the backward's reconstruction (x = y - dropout(f)) are the same
kernel with a sign. The dropout mask is never stored: element i's keep decision is a pure function
of (seed, philox_offset, i), so the backward regenerates it from two saved ints and the same kernel
computes grad_x = ±dropout(grad_out) (grad_residual is grad_out itself).

Random numbers, laid out as torch's CUDA kernels draw them: Philox4x32-10 keyed by ``seed`` with
the counter (philox_offset / 4, i // 4), word i % 4 of its output, made uniform in [0, 1); the
element is kept when that number is >= p and then scaled by 1 / (1 - p). The four words are the
first curand4 draw of a thread that called curand_init(seed, i // 4, philox_offset), so one call
owns the generator offsets [philox_offset, philox_offset + 4) and no other op of the generator
reuses its numbers.

Where (seed, philox_offset) come from (``philox_seed_offset``), at call time, from ``generator`` or
else the default generator of the tensors' device, which is then advanced, so that restoring the
generator state (torch.cuda.set_rng_state, as the reversible backward does) regenerates the mask:
- CUDA: the generator's own Philox seed and offset (host values: no device sync), offset += 4.
  Not inside CUDA-graph capture (a captured launch would replay one mask forever): that raises.
- CPU (Triton's interpreter): its Mersenne twister has no offset, so a 63-bit seed is drawn from
  it, offset 0.
Reading the generator is Python that torch.compile cannot trace; the op itself, given (seed,
philox_offset), compiles with fullgraph=True.
"""
from typing import Optional

import torch
import triton
import triton.language as tl

from ... import backends
from ..triton_utils import check_dtype

# Generator offsets one call reserves: 4 numbers per Philox counter, one counter per thread.
PHILOX_OFFSET_STEP = 4
BLOCK = 1024


@triton.jit
def _keep_mask(seed, philox_offset, thread, p):
    """Keep decisions of elements 4 * thread + w (w = 0..3) as a (threads, 4) tile: w picks the
    word of the Philox output for the counter (philox_offset / 4, thread)."""
    counter = philox_offset.to(tl.int64) // 4
    zero = tl.zeros(thread.shape, tl.uint32)
    r0, r1, r2, r3 = tl.philox(seed, zero + (counter & 0xFFFFFFFF).to(tl.uint32), zero + (counter >> 32).to(tl.uint32),
                               thread.to(tl.uint32), (thread >> 32).to(tl.uint32))
    # a select, not a reshape of the four words: each thread keeps its elements in registers
    word = tl.arange(0, 4)[None, :]
    words = tl.where(word == 0, r0[:, None], tl.where(word == 1, r1[:, None], tl.where(word == 2, r2[:, None], r3[:, None])))
    return tl.uint_to_uniform_float(words) >= p


@triton.jit(do_not_specialize=["seed", "philox_offset"])
def _dropout_add_kernel(
    Residual, X, Out, n_elements, seed, philox_offset, p, scale, sign,
    HAS_RESIDUAL: tl.constexpr, DROPOUT: tl.constexpr, BLOCK: tl.constexpr,
):
    # BLOCK elements as BLOCK / 4 Philox threads of 4 consecutive elements each
    thread = tl.program_id(0).to(tl.int64) * (BLOCK // 4) + tl.arange(0, BLOCK // 4)
    idx = thread[:, None] * 4 + tl.arange(0, 4)[None, :]
    in_range = idx < n_elements
    x = tl.load(X + idx, mask=in_range, other=0.0).to(tl.float32)
    if DROPOUT:
        x = tl.where(_keep_mask(seed, philox_offset, thread, p), x * scale, 0.0)
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
    # p = 1 keeps nothing: no 1 / (1 - p) to take
    scale = 1.0 / (1.0 - p) if p < 1.0 else 0.0
    _dropout_add_kernel[(triton.cdiv(x.numel(), BLOCK),)](
        x if residual is None else residual.contiguous(), x, out, x.numel(), seed, philox_offset, p, scale,
        -1.0 if subtract else 1.0,
        HAS_RESIDUAL=residual is not None, DROPOUT=p > 0.0, BLOCK=BLOCK, num_warps=4,
    )
    return out


@dropout_add_op.register_fake
def _dropout_add_fake(residual, x, p, seed, philox_offset, subtract, dtype):
    return x.new_empty(x.shape, dtype=dtype)


def _setup_context(ctx, inputs, output):
    residual, x, ctx.p, ctx.seed, ctx.philox_offset, ctx.subtract, _ = inputs
    # Only ints are kept: the backward regenerates the mask.
    ctx.has_residual, ctx.x_dtype = residual is not None, x.dtype


def _backward(ctx, grad_out):
    grad_x = dropout_add_op(None, grad_out, ctx.p, ctx.seed, ctx.philox_offset, ctx.subtract, ctx.x_dtype)
    return grad_out if ctx.has_residual else None, grad_x, None, None, None, None, None


dropout_add_op.register_autograd(_backward, setup_context=_setup_context)


def philox_seed_offset(device: torch.device, generator: Optional[torch.Generator] = None) -> tuple[int, int]:
    """(seed as int64, philox_offset) for one call on ``device``, reserved by advancing
    ``generator`` (default: the device's default generator); see the module docstring."""
    if device.type == "cuda":
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                "dropout_add: the triton backend reads its Philox seed and offset on the host, so a CUDA graph would "
                "replay one dropout mask; capture with training=False or p=0, or use backend='reference' (torch's "
                "graph-safe dropout)"
            )
        if generator is None:
            generator = torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
        seed, philox_offset = generator.initial_seed(), generator.get_offset()
        generator.set_offset(philox_offset + PHILOX_OFFSET_STEP)
        return (seed - 2**64 if seed >= 2**63 else seed), philox_offset
    return int(torch.randint(2**63 - 1, (), generator=generator)), 0


def dropout_add(residual, x, p, training=True, subtract=False, generator=None):
    """The "dropout_add" backend impl: residual ± dropout(x, p) in their promoted dtype."""
    check_dtype("dropout_add", residual)
    check_dtype("dropout_add", x)
    dtype = torch.promote_types(residual.dtype, x.dtype)
    if not training or p == 0.0:
        return dropout_add_op(residual, x, 0.0, 0, 0, subtract, dtype)
    return dropout_add_op(residual, x, p, *philox_seed_offset(x.device, generator), subtract, dtype)


backends.register("dropout_add", "triton", dropout_add)
