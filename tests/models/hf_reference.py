"""Shared helpers for the tests that compare our models with transformers' (the oracle)."""
import warnings

import torch
import transformers

from reformer_kernels import models

transformers.utils.logging.set_verbosity_error()

TINY = dict(
    hidden_size=16,
    attention_head_size=8,
    num_attention_heads=2,
    feed_forward_size=32,
    vocab_size=50,
    max_position_embeddings=128,
    axial_pos_shape=[8, 16],
    axial_pos_embds_dim=[8, 8],
    lsh_attn_chunk_length=8,
    local_attn_chunk_length=8,
    hidden_dropout_prob=0.0,
    lsh_attention_probs_dropout_prob=0.0,
    local_attention_probs_dropout_prob=0.0,
)


def head_class(config_kwargs: dict) -> str:
    return "ReformerModelWithLMHead" if config_kwargs.get("is_decoder") else "ReformerForMaskedLM"


def model_pair(config_kwargs: dict, class_name: str | None = None):
    """(transformers model, our model) of one class with the same weights."""
    class_name = class_name or head_class(config_kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = getattr(transformers, class_name)(transformers.ReformerConfig(**config_kwargs))
    ours = getattr(models, class_name)(models.ReformerConfig(**config_kwargs))
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (the comparison rule of the issue)."""
    assert actual.shape == expected.shape, (tuple(actual.shape), tuple(expected.shape))
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max().clamp_min(1e-30)).item()
