"""Axial positional encodings (the paper's section 6, from Kitaev et al.'s trax code)."""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import functional
from ..functional import checks_values
from ..reference.axial import axial_position_encodings
from ._checks import check_int, check_probability


class AxialPositionEmbeddings(nn.Module):
    """Learned position encodings factored over a grid ``axial_pos_shape`` = (n1, ..., nk).

    Position p gets the concatenation of one ``axial_pos_embds_dim[i]``-vector per grid coordinate,
    so ``sum(n_i * d_i)`` parameters cover ``prod(n_i)`` positions. Any number of factors, any
    positions in [0, prod(n_i)), in training and eval alike (transformers needs L = prod in training
    and two factors in eval). ``weights.i`` has transformers' layout (1, .., n_i, .., 1, d_i).
    Dropout (training only) drops single entries of the encodings (``functional.dropout``: Philox,
    no mask kept for the backward).
    """

    def __init__(self, axial_pos_shape: tuple[int, ...] | list[int], axial_pos_embds_dim: tuple[int, ...] | list[int], dropout: float = 0.0):
        super().__init__()
        if len(axial_pos_shape) != len(axial_pos_embds_dim) or not axial_pos_shape:
            raise ValueError(
                f"AxialPositionEmbeddings: axial_pos_embds_dim {tuple(axial_pos_embds_dim)} needs one dim per factor of "
                f"axial_pos_shape {tuple(axial_pos_shape)}"
            )
        for name, values in (("axial_pos_shape", axial_pos_shape), ("axial_pos_embds_dim", axial_pos_embds_dim)):
            for value in values:
                check_int("AxialPositionEmbeddings", f"every entry of {name} {tuple(values)}", value, 1)
        check_probability("AxialPositionEmbeddings", "dropout", dropout)
        self.axial_pos_shape = tuple(axial_pos_shape)
        self.axial_pos_embds_dim = tuple(axial_pos_embds_dim)
        self.dropout = dropout
        self.weights = nn.ParameterList()
        for axis, dim in enumerate(self.axial_pos_embds_dim):
            shape = [1] * len(self.axial_pos_shape) + [dim]
            shape[axis] = self.axial_pos_shape[axis]
            self.weights.append(nn.Parameter(torch.ones(shape)))

    @property
    def max_positions(self) -> int:
        return math.prod(self.axial_pos_shape)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        """position_ids (B, L) int64 in [0, prod(axial_pos_shape)) -> (B, L, sum(axial_pos_embds_dim))."""
        if not isinstance(position_ids, torch.Tensor) or position_ids.dtype.is_floating_point or position_ids.dtype.is_complex \
                or position_ids.dtype == torch.bool:
            got = position_ids.dtype if isinstance(position_ids, torch.Tensor) else type(position_ids).__name__
            raise TypeError(f"AxialPositionEmbeddings: position_ids must be an integer tensor (int64), got {got}")
        if position_ids.numel() and checks_values(position_ids) and (position_ids.min() < 0 or position_ids.max() >= self.max_positions):
            raise ValueError(
                f"AxialPositionEmbeddings: position ids span [{position_ids.min().item()}, {position_ids.max().item()}] "
                f"but axial_pos_shape {self.axial_pos_shape} covers [0, {self.max_positions}): shorten the input or "
                "enlarge axial_pos_shape"
            )
        encodings = axial_position_encodings(list(self.weights), position_ids)
        return functional.dropout(encodings, self.dropout, training=self.training)
