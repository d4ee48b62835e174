"""linear_cross_entropy in PyTorch: the LM head projection + cross-entropy, computed in chunks of tokens.

A language-model head on N tokens with a vocabulary of V would hold an N x V logit tensor (and
autograd its softmax) for backward; here only ``chunk_size`` x V logits exist at a time, in the
forward and again, recomputed, in the backward. What is kept for backward is the inputs plus one
log-sum-exp per token. It runs on any device and in float64, so it is both the "cpu" backend and
the "reference" one; ``triton_cross_entropy`` is the GPU kernel.
"""
from __future__ import annotations

from typing import Any

import torch

from .. import backends

DEFAULT_CHUNK_ELEMENTS = 1 << 22  # logits per chunk when no chunk size is given: 16 MiB in fp32


def _accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    # At least fp32 softmax statistics, as transformers upcasts its logits (fp64 stays fp64).
    return torch.promote_types(dtype, torch.float32)


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.nn.functional.linear(hidden, weight, bias).to(_accumulate_dtype(hidden.dtype))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden, weight, bias, labels, chunk_size: int, ignore_index: int):
        valid = labels != ignore_index
        n_valid = valid.sum()
        dtype = _accumulate_dtype(hidden.dtype)
        lse = torch.empty(labels.shape, dtype=dtype, device=hidden.device)
        total = torch.zeros((), dtype=dtype, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            logits = _chunk_logits(hidden[rows], weight, bias)
            lse[rows] = torch.logsumexp(logits, dim=-1)
            target = logits.gather(1, labels[rows].clamp(min=0)[:, None]).squeeze(1)
            total += torch.where(valid[rows], lse[rows] - target, 0.0).sum()
        ctx.save_for_backward(hidden, weight, bias, labels, lse, n_valid)
        ctx.chunk_size, ctx.ignore_index = chunk_size, ignore_index
        return total / n_valid

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_loss: torch.Tensor):
        hidden, weight, bias, labels, lse, n_valid = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        dtype = lse.dtype
        grad_weight = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if ctx.needs_input_grad[1] else None
        grad_bias = torch.zeros(weight.shape[0], dtype=dtype, device=weight.device) if bias is not None and ctx.needs_input_grad[2] else None
        scale = grad_loss / n_valid
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            chunk_labels = labels[rows]
            valid = chunk_labels != ctx.ignore_index
            # d loss / d logits = (softmax - one_hot(label)) / n_valid on the counted tokens.
            grad_logits = torch.exp(_chunk_logits(hidden[rows], weight, bias) - lse[rows, None])
            grad_logits[torch.arange(grad_logits.shape[0], device=grad_logits.device), chunk_labels.clamp(min=0)] -= 1.0
            grad_logits = grad_logits * torch.where(valid, scale, 0.0)[:, None]
            if grad_hidden is not None:
                grad_hidden[rows] = (grad_logits @ weight.to(dtype)).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight += grad_logits.t() @ hidden[rows].to(dtype)
            if grad_bias is not None:
                grad_bias += grad_logits.sum(0)
        return (
            grad_hidden,
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype),
            None, None, None,
        )


def linear_cross_entropy_chunked(hidden, weight, bias, labels, chunk_size=0, ignore_index=-100):
    """The "linear_cross_entropy" impl of the cpu and reference backends: the mean loss, a 0-d
    tensor at least fp32. ``chunk_size`` 0 takes as many tokens as fit in 2^22 logits."""
    if chunk_size == 0:
        chunk_size = max(1, DEFAULT_CHUNK_ELEMENTS // weight.shape[0])
    return _LinearCrossEntropy.apply(hidden, weight, bias, labels, chunk_size, ignore_index)


backends.register("linear_cross_entropy", "cpu", linear_cross_entropy_chunked)
backends.register("linear_cross_entropy", "reference", linear_cross_entropy_chunked)
