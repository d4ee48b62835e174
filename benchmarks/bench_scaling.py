"""Question 3, scaling: time and peak memory of a causal LSH layer (forward + backward) against
sequence length, for ours ("auto"), transformers, reformer-pytorch and dense SDPA; plotted log-log.

Run alone: ``python -m benchmarks --suite scaling [--size small|full] [--device cpu|cuda]``.
"""
from __future__ import annotations

import torch

from .competitors import layer_cases
from .harness import Case
from .sizes import attention_shape, dtypes, lengths

SUITE = "scaling"


def cases(size: str, device: torch.device) -> list[Case]:
    result = []
    for dtype in dtypes(size, device):
        for seq_len in lengths(size, device, SUITE):
            config = dict(dtype=dtype, seq_len=seq_len, causal=True, **attention_shape(size, device))
            result += layer_cases(SUITE, "lsh_layer", config, device, backends_of_ours=False)
    return sorted(result, key=lambda case: (case.competitor, case.backend, case.config["seq_len"]))
