"""The registry of suites: one line per question the benchmarks answer, and the module that answers
it, imported only when the suite runs (``python -m benchmarks --suite NAME``; ``--list`` prints this
table).

Two kinds of suite. A CASES suite's module lists harness cases (``cases(size, device)``); the entry
point measures them with the shared options (--size, --device, --out, --threads, --no-progress) and
writes one summary.md over all of them. A SCRIPT suite measures in its own way (fresh processes,
phases, generation, tokenizers) and has its own options: its module's ``main(argv)`` gets every
argument besides --suite.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

CASES, SCRIPT = "cases", "script"


@dataclass(frozen=True)
class Suite:
    name: str
    kind: str  # CASES or SCRIPT
    description: str
    module: str
    default: bool = False  # run by `python -m benchmarks` (and `make bench`) without --suite

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


def _suite(name: str, kind: str, description: str, default: bool = False) -> Suite:
    return Suite(name, kind, description, f"benchmarks.bench_{name}", default)


SUITES = {suite.name: suite for suite in (
    # The four questions of DESIGN.md, in its order: the default run.
    _suite("ops", CASES, "op level: hash, sort, LSH/local attention, reversible block, LM-head loss; ours per backend vs peers",
           default=True),
    _suite("model", CASES, "model level: training-step tokens/s and peak memory of a causal Reformer LM, 2-12 layers",
           default=True),
    _suite("scaling", CASES, "time and peak memory of a causal LSH layer against sequence length, plotted log-log",
           default=True),
    _suite("quality", CASES, "the paper's duplication task (0w0w): accuracy against the number of hashes", default=True),
    _suite("cpu_attention", SCRIPT, "CPU LSH and local layers fwd+bwd at 4K-16K, a fresh process per case (peak RSS)"),
    _suite("lsh_phases", SCRIPT, "where the CPU LSH layer's step goes: time, GFLOP/s and fraction of peak per phase"),
    _suite("reversible", SCRIPT, "reversible vs plain autograd vs transformers: training-step time and memory over depth"),
    _suite("fsdp", SCRIPT, "FSDP2 (fully_shard per layer + model) over 1, 2, 4 CPU processes: memory per rank"),
    _suite("generate", SCRIPT, "ms per new token of cached greedy decoding at 1K-128K contexts: ours vs transformers"),
    _suite("tokenizer", SCRIPT, "batch encoding speed: ours vs transformers' slow and fast tokenizers"),
    _suite("real_configs", SCRIPT, "the published configurations (crime-and-punishment, enwik8): train and infer, fp32 and bf16, vs transformers"),
    _suite("gpu_attention", SCRIPT, "the causal LSH layer on a GPU at 4K-64K: Triton vs transformers vs SDPA (GPU only)"),
    _suite("traffic", SCRIPT, "bytes and FLOPs per token-head of every GPU kernel and their H100 time estimate, without a GPU"),
)}
DEFAULT = tuple(name for name, suite in SUITES.items() if suite.default)
