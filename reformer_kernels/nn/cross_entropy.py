"""Linear projection to the vocabulary + cross-entropy, computed in chunks of tokens.

A language-model head on N tokens with a vocabulary of V would hold an N x V logit tensor (and
autograd its softmax) for backward; here only ``chunk_size`` x V logits exist at a time, in the
forward and again, recomputed, in the backward. What is kept for backward is the inputs plus one
log-sum-exp per token.
"""
from __future__ import annotations

from typing import Any

import torch

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


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    chunk_size: int = 0,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T + bias`` against ``labels`` over the tokens whose
    label is not ``ignore_index``, without materializing the (N, V) logits.

    hidden: (N, D) float; weight: (V, D); bias: (V,) or None; labels: (N,) int64 in [0, V) or
    ``ignore_index``. ``chunk_size``: tokens per chunk (0: as many as fit in 2^22 logits).
    Returns a 0-d tensor, at least fp32 (nan when no label counts, as torch's mean cross-entropy).
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"linear_cross_entropy: hidden must be (N, D) and weight (V, D), got {tuple(hidden.shape)} and {tuple(weight.shape)}"
        )
    if labels.shape != hidden.shape[:1] or labels.dtype != torch.int64:
        raise ValueError(f"linear_cross_entropy: labels must be int64 of shape ({hidden.shape[0]},), got {labels.dtype} {tuple(labels.shape)}")
    counted = labels[labels != ignore_index]
    if counted.numel() and (counted.min() < 0 or counted.max() >= weight.shape[0]):
        raise ValueError(
            f"linear_cross_entropy: labels span [{counted.min().item()}, {counted.max().item()}] outside [0, vocab_size="
            f"{weight.shape[0]}); use {ignore_index} for tokens without a label"
        )
    if chunk_size <= 0:
        chunk_size = max(1, DEFAULT_CHUNK_ELEMENTS // weight.shape[0])
    return _LinearCrossEntropy.apply(hidden, weight, bias, labels, chunk_size, ignore_index)
