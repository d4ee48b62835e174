"""Bridges to transformers' Reformer (transformers is needed only by the caller, never imported here).

``patch_hf_reformer(model)`` swaps our attention ops into a transformers Reformer in place: each
``LSHSelfAttention``/``LocalSelfAttention`` module keeps its weights and state-dict keys but runs
its forward through ``reformer_kernels.nn`` (hence the functional ops and their backends).
Calls that need what the fused ops do not produce (``output_attentions``, cached decoding) run
transformers' original forward. A side effect: rotations are re-drawn from the replayed seed in
transformers' reversible backward and ``hash_seed`` no longer reseeds the global RNG, so dropout
masks match between its forward and backward.

``from_hf(model)`` converts a transformers Reformer into the equivalent model of ours.
"""
from __future__ import annotations

import sys

from torch import nn

from .. import models
from ..models.modeling import self_attention_from_config
from ..nn import LSHSelfAttention

_PATCHED = "_reformer_kernels_patched"


def _ours_for(module: nn.Module, config) -> nn.Module:
    """Our module for a transformers attention module, sharing (not copying) its projections."""
    if type(module).__name__ == "LSHSelfAttention":
        ours = self_attention_from_config(config, "lsh")
        ours.query_key, ours.value = module.query_key, module.value
    else:
        ours = self_attention_from_config(config, "local")
        ours.query, ours.key, ours.value = module.query, module.key, module.value
    return ours


def _patch(module: nn.Module, config) -> None:
    ours = _ours_for(module, config)
    original = module.forward
    is_lsh = isinstance(ours, LSHSelfAttention)
    # transformers' own output tuples, from the module that defines the patched class.
    modeling = sys.modules[type(module).__module__]
    output_type = modeling.LSHSelfAttentionOutput if is_lsh else modeling.LocalSelfAttentionOutput

    def forward(hidden_states, attention_mask=None, num_hashes=None, buckets=None, past_buckets_states=None,
                use_cache=False, output_attentions=False, **kwargs):
        if output_attentions or past_buckets_states is not None:
            return original(hidden_states, attention_mask=attention_mask, num_hashes=num_hashes, buckets=buckets,
                            past_buckets_states=past_buckets_states, use_cache=use_cache,
                            output_attentions=output_attentions, **kwargs)
        ours.train(module.training)
        if is_lsh:
            return output_type(hidden_states=ours(hidden_states, attention_mask, num_hashes), attention_probs=(), buckets=None)
        return output_type(hidden_states=ours(hidden_states, attention_mask), attention_probs=())

    # An instance attribute, not a submodule: the state dict keeps transformers' keys.
    module.forward = forward
    setattr(module, _PATCHED, True)


def patch_hf_reformer(model: nn.Module) -> nn.Module:
    """Run every LSH/local self-attention of transformers' Reformer ``model`` on our ops, in place.

    Works on any transformers Reformer class (base model or with a head); patching twice is a
    no-op. Returns ``model``.
    """
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != "reformer":
        raise TypeError(f"patch_hf_reformer: expected a transformers Reformer model, got {type(model).__name__}")
    for module in model.modules():
        if type(module).__name__ in ("LSHSelfAttention", "LocalSelfAttention") and type(module).__module__.startswith("transformers.") \
                and not getattr(module, _PATCHED, False):
            _patch(module, config)
    return model


def from_hf(model: nn.Module) -> models.ReformerPreTrainedModel:
    """Our model of the same class, config and weights as transformers' Reformer ``model``."""
    name = type(model).__name__
    if getattr(getattr(model, "config", None), "model_type", None) != "reformer" or not hasattr(models, name):
        raise TypeError(f"from_hf: expected one of transformers' Reformer model classes, got {name}")
    ours = getattr(models, name)(models.ReformerConfig.from_dict(model.config.to_dict()))
    ours.load_state_dict(model.state_dict(), strict=True)
    return ours
