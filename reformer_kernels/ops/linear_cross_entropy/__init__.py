"""linear_cross_entropy in PyTorch: the LM head projection + cross-entropy, computed in tiles.

A language-model head on N tokens with a vocabulary of V would hold an N x V logit tensor (and
autograd its softmax) for backward; here only one tile of tokens x vocabulary entries exists at a
time, in the forward (each token's log-sum-exp accumulated over the vocabulary tiles) and again,
recomputed, in the backward. What is kept for backward is the inputs plus one log-sum-exp per token.

Tiles are square-ish (up to 2048 tokens x as many entries as fit in 2^22 logits) rather than rows
of the whole vocabulary: the backward's two products then both sum over 2048 or more terms. With
rows of a 32K vocabulary only ~128 tokens fit, and the weight gradient became 250 passes over a
V x D accumulator (on 2 CPU cores: 4.3 s instead of 2.6 s for N = 4096, D = 512).

It runs on any device and in float64, so it is both the "cpu" backend and the "reference" one;
``triton_kernels.py`` is the GPU kernel, with the same arguments. The public function, with its
checks, is ``reformer_kernels.nn.linear_cross_entropy``.
"""
from __future__ import annotations

from typing import Any

import torch

from ... import backends

TILE_ELEMENTS = 1 << 22  # logits per tile: 16 MiB in fp32
DEFAULT_TILE_TOKENS = 2048


def _accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    # At least fp32 softmax statistics, as transformers upcasts its logits (fp64 stays fp64).
    return torch.promote_types(dtype, torch.float32)


def _tile_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, columns: slice) -> torch.Tensor:
    tile_bias = None if bias is None else bias[columns]
    return torch.nn.functional.linear(hidden, weight[columns], tile_bias).to(_accumulate_dtype(hidden.dtype))


def _labels_in_tile(labels: torch.Tensor, valid: torch.Tensor, columns: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token: whether its label is counted and falls in vocabulary ``columns`` (bool), and that
    label's column within the tile (int64, clamped into the tile where it does not fall there).
    Masks rather than the hit rows' indices, whose number depends on the labels' values: a
    data-dependent shape that torch.compile cannot keep in one graph."""
    hit = valid & (labels >= columns.start) & (labels < columns.stop)
    return hit, (labels - columns.start).clamp(0, columns.stop - columns.start - 1)


def _tiles(n_tokens: int, vocab: int, chunk_size: int) -> tuple[list[slice], list[slice]]:
    tokens = chunk_size or max(1, min(n_tokens, DEFAULT_TILE_TOKENS))
    entries = min(vocab, max(1, TILE_ELEMENTS // tokens))
    return ([slice(i, min(i + tokens, n_tokens)) for i in range(0, n_tokens, tokens)],
            [slice(j, min(j + entries, vocab)) for j in range(0, vocab, entries)])


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden, weight, bias, labels, chunk_size: int, ignore_index: int):
        valid = labels != ignore_index
        n_valid = valid.sum()
        dtype = _accumulate_dtype(hidden.dtype)
        lse = torch.full(labels.shape, float("-inf"), dtype=dtype, device=hidden.device)
        target = torch.zeros(labels.shape, dtype=dtype, device=hidden.device)
        token_tiles, vocab_tiles = _tiles(hidden.shape[0], weight.shape[0], chunk_size)
        for rows in token_tiles:
            for columns in vocab_tiles:
                logits = _tile_logits(hidden[rows], weight, bias, columns)
                lse[rows] = torch.logaddexp(lse[rows], torch.logsumexp(logits, dim=1))
                hit, column = _labels_in_tile(labels[rows], valid[rows], columns)
                target[rows] += torch.where(hit, logits.gather(1, column[:, None]).squeeze(1), 0.0)
        total = torch.where(valid, lse - target, 0.0).sum()
        ctx.save_for_backward(hidden, weight, bias, labels, lse, n_valid)
        ctx.chunk_size, ctx.ignore_index = chunk_size, ignore_index
        return total / n_valid

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_loss: torch.Tensor):
        hidden, weight, bias, labels, lse, n_valid = ctx.saved_tensors
        dtype = lse.dtype

        def zeros_if_needed(needed: bool, *shape: int) -> torch.Tensor | None:
            return torch.zeros(shape, dtype=dtype, device=hidden.device) if needed else None

        grad_hidden = zeros_if_needed(ctx.needs_input_grad[0], *hidden.shape)
        grad_weight = zeros_if_needed(ctx.needs_input_grad[1], *weight.shape)
        grad_bias = zeros_if_needed(bias is not None and ctx.needs_input_grad[2], weight.shape[0])
        valid = labels != ctx.ignore_index
        # d loss / d logits = (softmax - one_hot(label)) * grad_loss / n_valid on the counted tokens
        token_scale = torch.where(valid, grad_loss / n_valid, 0.0).to(dtype)
        token_tiles, vocab_tiles = _tiles(hidden.shape[0], weight.shape[0], ctx.chunk_size)
        for rows in token_tiles:
            tile_hidden = hidden[rows].to(dtype)
            for columns in vocab_tiles:
                grad_logits = _tile_logits(hidden[rows], weight, bias, columns).sub_(lse[rows, None]).exp_()
                hit, column = _labels_in_tile(labels[rows], valid[rows], columns)
                grad_logits.scatter_add_(1, column[:, None], -hit[:, None].to(dtype))
                grad_logits.mul_(token_scale[rows, None])
                if grad_hidden is not None:
                    grad_hidden[rows].addmm_(grad_logits, weight[columns].to(dtype))
                if grad_weight is not None:
                    grad_weight[columns].addmm_(grad_logits.t(), tile_hidden)
                if grad_bias is not None:
                    grad_bias[columns] += grad_logits.sum(0)
        return (
            None if grad_hidden is None else grad_hidden.to(hidden.dtype),
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype),
            None, None, None,
        )


def linear_cross_entropy_chunked(hidden, weight, bias, labels, chunk_size=0, ignore_index=-100):
    """The "linear_cross_entropy" impl of the cpu and reference backends: the mean loss, a 0-d
    tensor at least fp32. Tiles of ``chunk_size`` tokens (0: up to 2048) x as many vocabulary entries as
    fit in 2^22 logits (the whole vocabulary when the tokens alone take that many)."""
    return _LinearCrossEntropy.apply(hidden, weight, bias, labels, chunk_size, ignore_index)


backends.register("linear_cross_entropy", "cpu", linear_cross_entropy_chunked)
backends.register("linear_cross_entropy", "reference", linear_cross_entropy_chunked)
