"""Axial position encodings against transformers' AxialPositionEmbeddings and a direct loop."""
import itertools

import pytest
import torch

from transformers import ReformerConfig  # noqa: E402
from transformers.models.reformer.modeling_reformer import AxialPositionEmbeddings  # noqa: E402

from reformer_kernels import reference  # noqa: E402


def transformers_axial(shape: tuple[int, int], dims: tuple[int, int], dtype: torch.dtype) -> AxialPositionEmbeddings:
    config = ReformerConfig(
        hidden_size=sum(dims),
        axial_pos_shape=list(shape),
        axial_pos_embds_dim=list(dims),
        attn_layers=["local"],
        local_attn_chunk_length=shape[1],
        hidden_dropout_prob=0.0,
    )
    module = AxialPositionEmbeddings(config).to(dtype)
    for weight in module.weights:
        torch.nn.init.normal_(weight)
    return module


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seq_len", [1, 11, 32])
def test_axial_matches_transformers_eval(dtype, seq_len):
    module = transformers_axial((4, 8), (6, 10), dtype).eval()
    position_ids = torch.stack([torch.randperm(32)[:seq_len] for _ in range(3)])
    with torch.no_grad():
        expected = module(position_ids)
        ours = reference.axial_position_encodings(list(module.weights), position_ids)
    assert torch.equal(ours, expected)


def test_axial_matches_transformers_train():
    # transformers' training mode ignores position_ids and lays out positions 0..prod(shape)-1.
    module = transformers_axial((4, 8), (6, 10), torch.float64).train()
    position_ids = torch.arange(32).expand(2, 32)
    with torch.no_grad():
        expected = module(position_ids)
        ours = reference.axial_position_encodings(list(module.weights), position_ids)
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("shape,dims", [((2, 3, 4), (3, 5, 2)), ((3, 2, 2, 5), (1, 2, 3, 4))])
def test_axial_many_factors_match_a_loop(shape, dims):
    weights = []
    for axis, (size, dim) in enumerate(zip(shape, dims)):
        layout = [1] * len(shape) + [dim]
        layout[axis] = size
        weights.append(torch.randn(layout, dtype=torch.float64))
    n_positions = 1
    for size in shape:
        n_positions *= size
    position_ids = torch.randint(0, n_positions, (2, 9))
    ours = reference.axial_position_encodings(weights, position_ids)

    coordinates_of = list(itertools.product(*(range(size) for size in shape)))  # row-major order
    for b, i in itertools.product(range(2), range(9)):
        coordinates = coordinates_of[position_ids[b, i].item()]
        expected = torch.cat([weights[axis].reshape(shape[axis], -1)[c] for axis, c in enumerate(coordinates)])
        assert torch.equal(ours[b, i], expected)
