"""dropout_relu: relu(dropout(x, p)), the feed-forward's dropout and relu activation (transformers'
Linear -> dropout -> relu) in one pass (the public function, with its checks, is
``reformer_kernels.functional.dropout_relu``).

Every backend impl takes (x, p, training=True, generator=None) and draws the mask as
``dropout_add`` draws it for x alone: one Philox key (``philox_seed_offset``) from ``generator``
or the default generator of x's device, the keep decisions the Philox stream of that key over x's
row-major elements, so a generator in one state gives the mask of ``functional.dropout`` and the
reversible backward's replay regenerates the forward's. "reference" composes torch's relu with the
reference dropout; "cpu" (the C++ ops reformer_kernels::dropout_relu and dropout_relu_backward,
csrc/cpu/dropout.cpp) and "triton" (``triton_kernels.py``, the same schemas) are one kernel each
way, and the backward needs no mask: an output element is positive exactly where x was kept and
positive, so grad_x = grad_out / (1 - p) there and 0 elsewhere, from the saved output (which relu
would have saved anyway).
"""
import torch

from ... import _extension, backends
from ..dropout_add import dropout_add_reference, philox_seed_offset


def dropout_relu_reference(x, p, training=True, generator=None):
    """relu(dropout(x)), the dropout mask drawn by the reference dropout_add."""
    return torch.relu(dropout_add_reference(None, x, p, training=training, generator=generator))


def _setup_context(ctx, inputs, output):
    ctx.p = inputs[1]
    ctx.save_for_backward(output)


def register(op, backward_op) -> None:
    """Make ``op`` (x, p, seed, philox_offset) differentiable by ``backward_op`` (grad_out, out, p)."""

    def _backward(ctx, grad_out):
        (out,) = ctx.saved_tensors
        return backward_op(grad_out, out, ctx.p), None, None, None

    torch.library.register_autograd(op, _backward, setup_context=_setup_context)


def _fake(x, p, seed, philox_offset):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _fake_backward(grad_out, out, p):
    return torch.empty_like(out, memory_format=torch.contiguous_format)


def fused(op):
    """The "dropout_relu" backend impl of a fused ``op`` of the dropout_relu schema."""

    def dropout_relu(x, p, training=True, generator=None):
        # no dropout: torch's own relu, which draws nothing
        if not training or p == 0.0:
            return torch.relu(x)
        return op(x, p, *philox_seed_offset(x.device, generator))

    return dropout_relu


backends.register("dropout_relu", "reference", dropout_relu_reference)
if _extension.loaded():
    torch.library.register_fake("reformer_kernels::dropout_relu", _fake)
    torch.library.register_fake("reformer_kernels::dropout_relu_backward", _fake_backward)
    register(torch.ops.reformer_kernels.dropout_relu.default, torch.ops.reformer_kernels.dropout_relu_backward.default)
    backends.register("dropout_relu", "cpu", fused(torch.ops.reformer_kernels.dropout_relu))
