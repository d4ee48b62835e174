"""Question 1, op level: hash, sort, LSH attention (forward and backward), local attention, the
reversible block and the LM head's loss (vocabulary 32000): ours per backend vs transformers'
modules vs reformer-pytorch vs dense SDPA.

Run alone: ``python -m benchmarks.bench_ops [--size small|full] [--device cpu|cuda]``.
"""
from __future__ import annotations

import functools
import sys

import torch

from . import competitors as c
from .harness import Case
from .sizes import attention_shape, dtypes, lengths

SUITE = "ops"


def _ours(suite: str, op: str, builder, config: dict, device: torch.device) -> list[Case]:
    return [
        Case(suite, op, "reformer_kernels", c.backend_label(op, backend, device), config, functools.partial(builder, config, device, backend),
             tokens=config["batch"] * config["seq_len"])
        for backend in c.our_backends(device)
    ]


def _peer(suite: str, op: str, competitor: str, backend: str, builder, config: dict, device: torch.device) -> Case:
    return Case(suite, op, competitor, backend, config, functools.partial(builder, config, device), tokens=config["batch"] * config["seq_len"])


def lsh_layer_cases(suite: str, config: dict, device: torch.device, backends_of_ours: bool = True) -> list[Case]:
    """The LSH layer's competitors on one configuration (shared with the scaling suite)."""
    ours = _ours(suite, "lsh_layer", c.ours_lsh_layer, config, device)
    return (ours if backends_of_ours else ours[:1]) + [
        _peer(suite, "lsh_layer", "transformers", "pytorch", c.transformers_lsh_layer, config, device),
        _peer(suite, "lsh_layer", "reformer-pytorch", "pytorch", c.reformer_pytorch_lsh_layer, config, device),
        _peer(suite, "lsh_layer", "torch-sdpa", c.sdpa_backend_name(config, device), functools.partial(c.sdpa_layer, n_projections=2), config, device),
    ]


def local_layer_cases(suite: str, config: dict, device: torch.device, backends_of_ours: bool = True) -> list[Case]:
    ours = _ours(suite, "local_layer", c.ours_local_layer, config, device)
    return (ours if backends_of_ours else ours[:1]) + [
        _peer(suite, "local_layer", "transformers", "pytorch", c.transformers_local_layer, config, device),
        _peer(suite, "local_layer", "reformer-pytorch", "local_attention", c.local_attention_package_layer, config, device),
        _peer(suite, "local_layer", "torch-sdpa", c.sdpa_backend_name(config, device), functools.partial(c.sdpa_layer, n_projections=3), config, device),
    ]


def cases(size: str, device: torch.device) -> list[Case]:
    result = []
    shape = attention_shape(size, device)
    # Causal and not at full size; the causal (language model) case only when the run must be short.
    causal_values = (False, True) if size == "full" else (True,)
    for dtype in dtypes(size, device):
        for seq_len in lengths(size, device, SUITE):
            # Hashing and sorting do not depend on the mask: once per length.
            config = dict(dtype=dtype, seq_len=seq_len, causal=False, **shape)
            result += _ours(SUITE, "lsh_hash", c.ours_hash, config, device)
            result.append(_peer(SUITE, "lsh_hash", "transformers", "pytorch", c.transformers_hash, config, device))
            result.append(_peer(SUITE, "lsh_hash", "reformer-pytorch", "pytorch", c.reformer_pytorch_hash, config, device))
            result += _ours(SUITE, "bucket_sort", c.ours_sort, config, device)
            result.append(_peer(SUITE, "bucket_sort", "transformers", "pytorch", c.transformers_sort, config, device))
            result += _ours(SUITE, "lm_head_loss", c.ours_lm_head_loss, config, device)
            result.append(_peer(SUITE, "lm_head_loss", "transformers", "pytorch", c.transformers_lm_head_loss, config, device))
            for causal in causal_values:
                config = dict(dtype=dtype, seq_len=seq_len, causal=causal, **shape)
                result += _ours(SUITE, "lsh_attention", c.ours_lsh_attention, config, device)
                result += lsh_layer_cases(SUITE, config, device)
                result += local_layer_cases(SUITE, config, device)
                result += _ours(SUITE, "reversible_block", c.ours_reversible_block, config, device)
                result.append(_peer(SUITE, "reversible_block", "transformers", "pytorch", c.transformers_reversible_block, config, device))
    # Grouped by series, lengths ascending, so that a series can stop after an out-of-memory.
    return sorted(result, key=lambda case: (case.op, case.config["causal"], case.competitor, case.backend, case.config["seq_len"]))


if __name__ == "__main__":
    from .run import main

    sys.exit(main(["--suite", SUITE, *sys.argv[1:]]))
