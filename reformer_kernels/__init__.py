"""reformer_kernels: fused Triton/CUDA and C++ CPU kernels for the Reformer, behind PyTorch autograd.

The public surface: ``reformer_kernels.functional`` (ops), ``reformer_kernels.nn`` (modules),
``reformer_kernels.models`` (HF-compatible Reformer models), the tokenizers, backend selection
(``use_backend``) and ``info()``.
"""
from . import _extension, backends, functional
from ._info import info
from .backends import current_backend, use_backend
from . import models, nn
from .models import (
    ReformerConfig,
    ReformerForMaskedLM,
    ReformerForQuestionAnswering,
    ReformerForSequenceClassification,
    ReformerModel,
    ReformerModelWithLMHead,
)

__version__ = "0.1.0"

__all__ = ["__version__", "backends", "current_backend", "functional", "info", "use_backend"]
__all__ += ["models", "nn", "ReformerConfig", "ReformerForMaskedLM", "ReformerForQuestionAnswering",
            "ReformerForSequenceClassification", "ReformerModel", "ReformerModelWithLMHead"]
