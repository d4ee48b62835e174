"""dropout_add: residual ± dropout(x), the residual connection of a reversible half and, with a
minus, its inverse (the public function, with its checks, is
``reformer_kernels.functional.dropout_add``).

Every backend impl takes (residual, x, p, training=True, subtract=False, generator=None), residual
None for plain dropout (``functional.dropout``), and draws one Philox key (``philox_seed_offset``) from ``generator`` or the default generator of the
inputs' device; the keep decisions are the Philox stream of that key over x's row-major elements
(``reference/dropout.py``), the same bits on every backend. "reference" builds the mask with
torch ops and lets autograd keep it; "cpu" (the C++ op reformer_kernels::dropout_add, csrc/cpu/
dropout.cpp) and "triton" (``triton_kernels.py``, the same schema) are one fused kernel that
stores no mask: its backward is the same op on the upstream gradient, which regenerates it from
the two saved ints.
"""
from typing import Optional

import torch

from ... import _extension, backends, reference
from ...reference.dropout import dropout_keep

# Generator offsets one call reserves on CUDA: 4 numbers per Philox counter (torch's unit).
PHILOX_OFFSET_STEP = 4


def philox_seed_offset(device: torch.device, generator: Optional[torch.Generator] = None) -> tuple[int, int]:
    """(seed as int64, philox_offset) that key one dropout call on ``device``, reserved by
    advancing ``generator`` (default: the device's default generator), so that restoring the
    generator's state (as the reversible backward does) gives the same key again:
    - CUDA: the generator's own Philox seed and offset (host values: no device sync), offset += 4,
      the numbering of torch's CUDA kernels. Not inside CUDA-graph capture (a captured launch
      would replay one mask forever): that raises.
    - CPU: its Mersenne twister has no offset, so a 63-bit seed is drawn from it (one
      torch.randint), offset 0.
    Reading the generator is Python that torch.compile cannot trace; the ops themselves, given
    (seed, offset), compile with fullgraph=True."""
    if device.type == "cuda":
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                "dropout: the kernels read their Philox seed and offset on the host, so a CUDA graph would replay one "
                "dropout mask; capture with training=False or p=0"
            )
        if generator is None:
            generator = torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
        seed, philox_offset = generator.initial_seed(), generator.get_offset()
        generator.set_offset(philox_offset + PHILOX_OFFSET_STEP)
        return (seed - 2**64 if seed >= 2**63 else seed), philox_offset
    return int(torch.randint(2**63 - 1, (), generator=generator)), 0


def dropout_add_reference(residual, x, p, training=True, subtract=False, generator=None):
    """residual ± x * mask, the mask built from the Philox stream with torch ops."""
    if not training or p == 0.0:
        return reference.dropout_add(residual, x, None, subtract=subtract)
    seed, philox_offset = philox_seed_offset(x.device, generator)
    keep = dropout_keep(tuple(x.shape), p, seed, philox_offset, x.device)
    # p = 1 keeps nothing: no 1 / (1 - p) to take
    mask = keep.to(x.dtype) * (1.0 / (1.0 - p)) if p < 1.0 else torch.zeros(x.shape, dtype=x.dtype, device=x.device)
    return reference.dropout_add(residual, x, mask, subtract=subtract)


def _setup_context(ctx, inputs, output):
    residual, x, ctx.p, ctx.seed, ctx.philox_offset, ctx.subtract, _ = inputs
    # Only ints are kept: the backward regenerates the mask.
    ctx.has_residual, ctx.x_dtype = residual is not None, x.dtype


def register(op) -> None:
    """Make ``op`` (of the dropout_add schema: residual, x, p, seed, philox_offset, subtract, dtype)
    differentiable through itself: grad_x = ±dropout(grad_out) with the same key, grad_residual =
    grad_out."""

    def _backward(ctx, grad_out):
        grad_x = op(None, grad_out, ctx.p, ctx.seed, ctx.philox_offset, ctx.subtract, ctx.x_dtype)
        return grad_out if ctx.has_residual else None, grad_x, None, None, None, None, None

    torch.library.register_autograd(op, _backward, setup_context=_setup_context)


def _fake(residual, x, p, seed, philox_offset, subtract, dtype):
    return x.new_empty(x.shape, dtype=dtype)


def fused(op):
    """The "dropout_add" backend impl of a fused ``op`` of the dropout_add schema."""

    def dropout_add(residual, x, p, training=True, subtract=False, generator=None):
        # no dropout: torch's own add, whose backward passes the gradient through without a kernel
        if not training or p == 0.0:
            return reference.dropout_add(residual, x, None, subtract=subtract)
        dtype = x.dtype if residual is None else torch.promote_types(residual.dtype, x.dtype)
        return op(residual, x, p, *philox_seed_offset(x.device, generator), subtract, dtype)

    return dropout_add


backends.register("dropout_add", "reference", dropout_add_reference)
if _extension.loaded():
    torch.library.register_fake("reformer_kernels::dropout_add", _fake)
    register(torch.ops.reformer_kernels.dropout_add.default)
    backends.register("dropout_add", "cpu", fused(torch.ops.reformer_kernels.dropout_add))
