"""The reversible residual layer (RevNet, the paper's section 3), with plain autograd.

y1 = x1 + f(x2), y2 = x2 + g(y1); the inputs are recovered exactly from the outputs, which is
what lets a reversible stack skip storing activations. This is the oracle for the fused layer.
"""
from typing import Callable

import torch

Block = Callable[[torch.Tensor], torch.Tensor]


def reversible_forward(x1: torch.Tensor, x2: torch.Tensor, f: Block, g: Block) -> tuple[torch.Tensor, torch.Tensor]:
    """(x1, x2) -> (y1, y2) = (x1 + f(x2), x2 + g(y1)); f is attention, g the feed-forward."""
    y1 = x1 + f(x2)
    y2 = x2 + g(y1)
    return y1, y2


def reversible_inverse(y1: torch.Tensor, y2: torch.Tensor, f: Block, g: Block) -> tuple[torch.Tensor, torch.Tensor]:
    """(y1, y2) -> (x1, x2) = (y1 - f(x2), y2 - g(y1)), undoing ``reversible_forward``."""
    x2 = y2 - g(y1)
    x1 = y1 - f(x2)
    return x1, x2


def dropout_add(
    residual: torch.Tensor | None, x: torch.Tensor, dropout_mask: torch.Tensor | None = None, *, subtract: bool = False
) -> torch.Tensor:
    """residual + x * dropout_mask (``subtract``: residual - x * dropout_mask), the residual connection
    of a reversible half and, subtracted, its inverse; residual None: ±x * dropout_mask alone (plain
    dropout). ``dropout_mask``: the keep-mask scaled by 1 / (1 - p), shaped like x, or None for no
    dropout."""
    dropped = x if dropout_mask is None else x * dropout_mask
    if residual is None:
        return -dropped if subtract else dropped
    return residual - dropped if subtract else residual + dropped
