"""The attention layers' input projections split into heads."""
from __future__ import annotations

import torch


def head_projections(x: torch.Tensor, weights: list[torch.Tensor], heads: int) -> list[torch.Tensor]:
    """x (B, L, D) times each weight (H * d, D) transposed, split into heads: (B, H, L, d) each
    (head-split views of the (B, L, H * d) products)."""
    return [(x @ weight.t()).unflatten(-1, (heads, -1)).transpose(1, 2) for weight in weights]
