"""Question 1, op level: hash, sort, LSH attention (forward and backward), local attention, the
reversible block and the LM head's loss (vocabulary 32000): ours per backend vs transformers'
modules vs reformer-pytorch vs dense SDPA.

Run alone: ``python -m benchmarks --suite ops [--size small|full] [--device cpu|cuda]``.
"""
from __future__ import annotations

import torch

from . import competitors as c
from .harness import Case
from .sizes import attention_shape, dtypes, lengths

SUITE = "ops"


def cases(size: str, device: torch.device) -> list[Case]:
    result = []
    shape = attention_shape(size, device)
    # Causal and not at full size; the causal (language model) case only when the run must be short.
    causal_values = (False, True) if size == "full" else (True,)
    for dtype in dtypes(size, device):
        for seq_len in lengths(size, device, SUITE):
            # Hashing and sorting do not depend on the mask: once per length.
            config = dict(dtype=dtype, seq_len=seq_len, causal=False, **shape)
            result += c.ours_cases(SUITE, "lsh_hash", c.ours_hash, config, device)
            result.append(c.peer_case(SUITE, "lsh_hash", "transformers", "pytorch", c.transformers_hash, config, device))
            result.append(c.peer_case(SUITE, "lsh_hash", "reformer-pytorch", "pytorch", c.reformer_pytorch_hash, config, device))
            result += c.ours_cases(SUITE, "bucket_sort", c.ours_sort, config, device)
            result.append(c.peer_case(SUITE, "bucket_sort", "transformers", "pytorch", c.transformers_sort, config, device))
            result += c.ours_cases(SUITE, "lsh_hash_sort", c.ours_hash_sort, config, device)
            result += c.ours_cases(SUITE, "lm_head_loss", c.ours_lm_head_loss, config, device)
            result.append(c.peer_case(SUITE, "lm_head_loss", "transformers", "pytorch", c.transformers_lm_head_loss, config, device))
            for causal in causal_values:
                config = dict(dtype=dtype, seq_len=seq_len, causal=causal, **shape)
                result += c.ours_cases(SUITE, "lsh_attention", c.ours_lsh_attention, config, device)
                result += c.layer_cases(SUITE, "lsh_layer", config, device)
                result += c.layer_cases(SUITE, "local_layer", config, device)
                result += c.ours_cases(SUITE, "reversible_block", c.ours_reversible_block, config, device)
                result.append(c.peer_case(SUITE, "reversible_block", "transformers", "pytorch", c.transformers_reversible_block, config, device))
    # Grouped by series, lengths ascending, so that a series can stop after an out-of-memory.
    return sorted(result, key=lambda case: (case.op, case.config["causal"], case.competitor, case.backend, case.config["seq_len"]))
