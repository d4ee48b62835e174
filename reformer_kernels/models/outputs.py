"""Model outputs: dataclasses with attribute access, indexable like transformers' ModelOutput
(``outputs[0]`` is the first field that is not None)."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .generation import ReformerDecodingCache


class ModelOutput:
    def to_tuple(self) -> tuple:
        return tuple(v for v in (getattr(self, f.name) for f in dataclasses.fields(self)) if v is not None)

    def __getitem__(self, index: int | str):
        return getattr(self, index) if isinstance(index, str) else self.to_tuple()[index]

    def __contains__(self, name: str) -> bool:
        return getattr(self, name, None) is not None


@dataclasses.dataclass
class ReformerModelOutput(ModelOutput):
    """last_hidden_state (B, L, 2 * hidden): the final LayerNorm of concat(y1, y2);
    hidden_states: x2 before each layer and after the last, each (B, L, hidden), when asked;
    attentions: each layer's attention probabilities, when asked;
    past_buckets_states: the ReformerDecodingCache, with use_cache (see ReformerModel.forward)."""

    last_hidden_state: torch.Tensor
    past_buckets_states: ReformerDecodingCache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclasses.dataclass
class ReformerModelWithLMHeadOutput(ModelOutput):
    """loss: next-token cross-entropy when labels were given; logits (B, L, vocab) when asked;
    past_buckets_states: the cache, with use_cache."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    past_buckets_states: ReformerDecodingCache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclasses.dataclass
class MaskedLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclasses.dataclass
class SequenceClassifierOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclasses.dataclass
class QuestionAnsweringModelOutput(ModelOutput):
    loss: torch.Tensor | None = None
    start_logits: torch.Tensor | None = None
    end_logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
