"""Axial positional encodings: the position grid n1 x n2 x ... gets one learned vector per
coordinate of each axis, and a position's encoding is the concatenation of its coordinates'
vectors (so a table of sum(n_i * d_i) entries covers prod(n_i) positions)."""
import torch


def axial_position_encodings(weights: list[torch.Tensor] | tuple[torch.Tensor, ...], position_ids: torch.Tensor) -> torch.Tensor:
    """Encodings of ``position_ids`` (B, L) int64, each in [0, prod(n_i)).

    weights[i]: (1, ..., n_i, ..., 1, d_i), n_i at dimension i of the k-axis grid, the layout of
    transformers' AxialPositionEmbeddings.weights. Position p has the row-major grid coordinates
    of p over (n_1, ..., n_k). Returns (B, L, d_1 + ... + d_k) in the weights' dtype.
    """
    axis_sizes = [w.shape[i] for i, w in enumerate(weights)]
    encodings = []
    stride = 1
    for axis in reversed(range(len(weights))):
        coordinate = (position_ids // stride) % axis_sizes[axis]
        table = weights[axis].reshape(axis_sizes[axis], weights[axis].shape[-1])
        encodings.append(table[coordinate])
        stride *= axis_sizes[axis]
    return torch.cat(encodings[::-1], dim=-1)
