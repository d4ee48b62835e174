"""The Reformer feed-forward sub-layer, applied in chunks along the sequence (the paper's section 4)."""
from __future__ import annotations

import torch
from torch import nn

from .. import functional
from ._checks import check_int, check_positive_float, check_probability

ACTIVATIONS = {
    "relu": nn.functional.relu,
    "gelu": nn.functional.gelu,
    "gelu_new": lambda x: nn.functional.gelu(x, approximate="tanh"),
    "silu": nn.functional.silu,
    "swish": nn.functional.silu,
    "tanh": torch.tanh,
}


def _plain_linear(module: nn.Module) -> bool:
    """An nn.Linear itself (not a subclass, not replaced) without forward hooks."""
    return type(module) is nn.Linear and not module._forward_hooks and not module._forward_pre_hooks


class _Dense(nn.Module):
    """Linear -> dropout -> activation, the order (and parameter names) of transformers."""

    def __init__(self, hidden_size: int, feed_forward_size: int, hidden_act: str, dropout: float):
        super().__init__()
        if hidden_act not in ACTIVATIONS:
            raise ValueError(f"ChunkedFeedForward: hidden_act {hidden_act!r} is not supported: choose one of {sorted(ACTIVATIONS)}")
        self.dense = nn.Linear(hidden_size, feed_forward_size)
        self.act_fn = ACTIVATIONS[hidden_act]
        self.dropout = dropout

    def _plain_dense(self) -> bool:
        return _plain_linear(self.dense) and self.dense.bias is not None

    def forward(self, x: torch.Tensor, *, grad_in_place: bool = False) -> torch.Tensor:
        # functional.dropout: drawn in the kernel from a Philox key, no mask kept for the backward.
        # With relu, functional.dropout_relu adds the bias, drops and applies relu in one pass each
        # way after a bias-free product (the same mask; addmm would first copy the bias into its output).
        # Only for a plain nn.Linear without hooks: a replaced or hooked submodule (an adapter, a
        # quantized Linear, a forward hook) is called as it is, and its output goes through the same op.
        if self.act_fn is nn.functional.relu:
            if self._plain_dense():
                product = nn.functional.linear(x, self.dense.weight)
                return functional.dropout_relu(product, self.dropout, bias=self.dense.bias.to(product.dtype),
                                               training=self.training, grad_in_place=grad_in_place)
            return functional.dropout_relu(self.dense(x), self.dropout, training=self.training)
        return self.act_fn(functional.dropout(self.dense(x), self.dropout, training=self.training))


class _Output(nn.Module):
    """The second Linear (transformers' dropout after it is the residual's: ReversibleBlock's ``dropout``)."""

    def __init__(self, feed_forward_size: int, hidden_size: int):
        super().__init__()
        self.dense = nn.Linear(feed_forward_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


class ChunkedFeedForward(nn.Module):
    """LayerNorm -> Linear -> dropout -> activation -> Linear, on ``chunk_size`` positions at a time.

    (B, L, hidden_size) -> (B, L, hidden_size). Chunking bounds the (chunk, feed_forward_size)
    intermediate; ``chunk_size=0`` processes the whole sequence at once. Any L works (the last chunk
    may be shorter). The dropout on the output belongs to the residual connection
    (``ReversibleBlock(..., dropout=)``, fused with the residual add), not to this module. With
    relu the first Linear's parameters are used directly (``functional.dropout_relu`` adds its bias)
    while it is a plain ``nn.Linear`` without hooks; a replaced or hooked submodule is called.
    """

    def __init__(
        self,
        hidden_size: int,
        feed_forward_size: int,
        *,
        hidden_act: str = "relu",
        dropout: float = 0.0,
        chunk_size: int = 0,
        layer_norm_eps: float = 1e-12,
    ):
        super().__init__()
        check_int("ChunkedFeedForward", "hidden_size", hidden_size, 1)
        check_int("ChunkedFeedForward", "feed_forward_size", feed_forward_size, 1)
        check_int("ChunkedFeedForward", "chunk_size", chunk_size, 0)
        check_probability("ChunkedFeedForward", "dropout", dropout)
        check_positive_float("ChunkedFeedForward", "layer_norm_eps", layer_norm_eps)
        self.chunk_size = chunk_size
        self.layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dense = _Dense(hidden_size, feed_forward_size, hidden_act, dropout)
        self.output = _Output(feed_forward_size, hidden_size)

    def forward_chunk(self, x: torch.Tensor) -> torch.Tensor:
        # The activations' gradient comes only from a plain second Linear, fresh: the backward of
        # dropout_relu may write over it (functional.dropout_relu's grad_in_place).
        fresh = _plain_linear(self.output.dense) and not self.output._forward_hooks and not self.output._forward_pre_hooks
        return self.output(self.dense(self.layer_norm(x), grad_in_place=fresh))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.chunk_size == 0 or hidden_states.shape[1] <= self.chunk_size:
            return self.forward_chunk(hidden_states)
        return torch.cat([self.forward_chunk(chunk) for chunk in hidden_states.split(self.chunk_size, dim=1)], dim=1)
