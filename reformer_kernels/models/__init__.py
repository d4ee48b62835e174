"""Reformer models with transformers' state-dict layout and config, without depending on transformers."""
from .config import ReformerConfig
from .generation import ReformerDecodingCache
from .modeling import (
    ReformerForMaskedLM,
    ReformerForQuestionAnswering,
    ReformerForSequenceClassification,
    ReformerModel,
    ReformerModelWithLMHead,
    ReformerPreTrainedModel,
)
from .outputs import (
    MaskedLMOutput,
    QuestionAnsweringModelOutput,
    ReformerModelOutput,
    ReformerModelWithLMHeadOutput,
    SequenceClassifierOutput,
)

__all__ = [
    "MaskedLMOutput",
    "QuestionAnsweringModelOutput",
    "ReformerConfig",
    "ReformerDecodingCache",
    "ReformerForMaskedLM",
    "ReformerForQuestionAnswering",
    "ReformerForSequenceClassification",
    "ReformerModel",
    "ReformerModelOutput",
    "ReformerModelWithLMHead",
    "ReformerModelWithLMHeadOutput",
    "ReformerPreTrainedModel",
    "SequenceClassifierOutput",
]
