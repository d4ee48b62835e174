"""reformer_kernels: fused Triton/CUDA and C++ CPU kernels for the Reformer, behind PyTorch autograd.

The public surface: ``reformer_kernels.functional`` (ops), ``reformer_kernels.nn`` (modules),
``reformer_kernels.models`` (HF-compatible Reformer models), the tokenizers, backend selection
(``use_backend``), the debug checks on GPU tensors (``set_debug_checks``), ``info()``, and the
CPU memory pool the reversible layers train in (``cpu_memory_pool``, ``empty_cpu_memory_pool``,
``cpu_memory_pool_stats``).
"""
from . import _extension, backends, functional, models, nn, ops
from ._extension import cpu_memory_pool, cpu_memory_pool_stats, empty_cpu_memory_pool
from ._info import info
from .backends import current_backend, use_backend
from .functional import debug_checks, set_debug_checks
from .models import (
    ReformerConfig,
    ReformerForMaskedLM,
    ReformerForQuestionAnswering,
    ReformerForSequenceClassification,
    ReformerModel,
    ReformerModelWithLMHead,
)
from .tokenization import ByteTokenizer, ReformerTokenizer

# Every op registered its kernels when ``ops`` was imported above; look the installation up now
# rather than at the first op call, which may be inside torch.compile, where an import or a call
# into _C breaks the graph.
backends._installation()

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "backends",
    "cpu_memory_pool",
    "cpu_memory_pool_stats",
    "current_backend",
    "debug_checks",
    "empty_cpu_memory_pool",
    "functional",
    "info",
    "models",
    "nn",
    "set_debug_checks",
    "use_backend",
    "ByteTokenizer",
    "ReformerConfig",
    "ReformerForMaskedLM",
    "ReformerForQuestionAnswering",
    "ReformerForSequenceClassification",
    "ReformerModel",
    "ReformerModelWithLMHead",
    "ReformerTokenizer",
]
