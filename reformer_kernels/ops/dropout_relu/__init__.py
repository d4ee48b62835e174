"""dropout_relu: relu(dropout(x + bias, p)), the feed-forward's bias, dropout and relu activation
(transformers' Linear -> dropout -> relu) in one pass after a bias-free matrix product (the public
function, with its checks, is ``reformer_kernels.functional.dropout_relu``).

Every backend impl takes (x, bias, p, training=True, generator=None), bias (x.shape[-1],) of x's
dtype or None, and draws the mask as ``dropout_add`` draws it for x alone: one Philox key (``philox_seed_offset``) from ``generator``
or the default generator of x's device, the keep decisions the Philox stream of that key over x's
row-major elements, so a generator in one state gives the mask of ``functional.dropout`` and the
reversible backward's replay regenerates the forward's. "reference" composes torch's relu with the
reference dropout; "cpu" (the C++ ops reformer_kernels::dropout_relu and dropout_relu_backward,
csrc/cpu/dropout.cpp) and "triton" (``triton_kernels.py``, the same schemas) are one kernel each
way, and the backward needs no mask: an output element is positive exactly where x was kept and
positive, so grad_x = grad_out / (1 - p) there and 0 elsewhere, from the saved output (which relu
would have saved anyway); grad_bias is grad_x summed over all but the last dimension.
"""
import torch

from ... import _extension, backends
from ..dropout_add import dropout_add_reference, philox_seed_offset


def _biased(x, bias):
    return x if bias is None else x + bias


def dropout_relu_reference(x, bias, p, training=True, generator=None, grad_in_place=False):
    """relu(dropout(x + bias)), the dropout mask drawn by the reference dropout_add (its backward is
    autograd's: ``grad_in_place`` changes nothing)."""
    return torch.relu(dropout_add_reference(None, _biased(x, bias), p, training=training, generator=generator))


def _setup_context(ctx, inputs, output):
    ctx.p = inputs[2]
    ctx.bias_shape = None if inputs[1] is None else inputs[1].shape
    ctx.save_for_backward(output)


def register(op, backward_op) -> None:
    """Make ``op`` (x, bias, p, seed, philox_offset) differentiable by ``backward_op`` (grad_out, out, p)."""

    def _backward(ctx, grad_out):
        (out,) = ctx.saved_tensors
        grad_x = backward_op(grad_out, out, ctx.p)
        grad_bias = grad_x.sum_to_size(ctx.bias_shape) if ctx.needs_input_grad[1] else None
        return grad_x, grad_bias, None, None, None

    torch.library.register_autograd(op, _backward, setup_context=_setup_context)


def _fake(x, bias, p, seed, philox_offset):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _fake_backward(grad_out, out, p):
    return torch.empty_like(out, memory_format=torch.contiguous_format)


class _GradInPlace(torch.autograd.Function):
    """The CPU op whose backward writes its result over the incoming gradient (when that is
    contiguous and of the output's dtype), for an output whose gradient nothing else reads: the
    feed-forward's activations, read only by its second Linear, whose backward hands over a fresh
    gradient. One (..., d_ff) tensor fewer at the backward's peak, and one pass fewer over it."""

    @staticmethod
    def forward(ctx, x, bias, p, seed, philox_offset):
        out = torch.ops.reformer_kernels.dropout_relu(x, bias, p, seed, philox_offset)
        _setup_context(ctx, (x, bias, p), out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        (out,) = ctx.saved_tensors
        if grad_out.is_contiguous() and grad_out.dtype == out.dtype:
            torch.ops.reformer_kernels.dropout_relu_backward_(grad_out, out, ctx.p)
            grad_x = grad_out
        else:
            grad_x = torch.ops.reformer_kernels.dropout_relu_backward(grad_out, out, ctx.p)
        grad_bias = grad_x.sum_to_size(ctx.bias_shape) if ctx.needs_input_grad[1] else None
        return grad_x, grad_bias, None, None, None


def fused(op, in_place_function=None):
    """The "dropout_relu" backend impl of a fused ``op`` of the dropout_relu schema; a call with
    ``grad_in_place=True`` takes ``in_place_function`` (an autograd Function over the same op whose
    backward overwrites the incoming gradient) where there is one, outside torch.compile (whose
    graphs take the op); elsewhere the flag changes nothing."""

    def dropout_relu(x, bias, p, training=True, generator=None, grad_in_place=False):
        # no dropout (eval, or p = 0): the same single pass with p = 0, which keeps every element and
        # draws no key (torch's x + bias then relu would be two passes over x)
        key = (0.0, 0, 0) if not training or p == 0.0 else (p, *philox_seed_offset(x.device, generator))
        if grad_in_place and in_place_function is not None and not torch.compiler.is_compiling():
            return in_place_function.apply(x, bias, *key)
        return op(x, bias, *key)

    return dropout_relu


backends.register("dropout_relu", "reference", dropout_relu_reference)
if _extension.loaded():
    torch.library.register_fake("reformer_kernels::dropout_relu", _fake)
    torch.library.register_fake("reformer_kernels::dropout_relu_backward", _fake_backward)
    torch.library.register_fake("reformer_kernels::dropout_relu_backward_", lambda grad, out, p: None)
    register(torch.ops.reformer_kernels.dropout_relu.default, torch.ops.reformer_kernels.dropout_relu_backward.default)
    backends.register("dropout_relu", "cpu", fused(torch.ops.reformer_kernels.dropout_relu, _GradInPlace))
