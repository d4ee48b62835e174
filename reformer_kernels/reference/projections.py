"""The attention layers' input projections split into heads."""
from __future__ import annotations

import torch


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, L, H * d) -> (B, H, L, d)."""
    return x.unflatten(-1, (n_heads, -1)).transpose(1, 2)


def head_projections(x: torch.Tensor, weights: list[torch.Tensor], heads: int) -> list[torch.Tensor]:
    """x (B, L, D) times each weight (H * d, D) transposed, split into heads: (B, H, L, d) each
    (head-split views of the (B, L, H * d) products)."""
    return [split_heads(x @ weight.t(), heads) for weight in weights]
