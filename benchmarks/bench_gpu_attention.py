"""The causal LSH layer on a GPU, L = 4K ... 64K: our Triton kernels against transformers'
LSHSelfAttention, dense causal SDPA (FlashAttention in fp16) and our PyTorch reference, forward,
forward + backward and peak memory. GPU only: Triton's interpreter times nothing useful.

    python -m benchmarks --suite gpu_attention [--dtype float16|bfloat16|float32] [--out DIR]

Writes gpu_attention.csv/.json to bench-results/<gpu-name>/ (or --out) and prints the table.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import warnings

import torch

from . import competitors as c
from . import report
from .harness import Case, Settings, add_speedups, run_cases

SUITE = "gpu_attention"
LENGTHS = [4096 * 2**i for i in range(5)]
SHAPE = dict(batch=1, heads=8, head_dim=64, n_hashes=4, chunk_len=64)


def cases(dtype: torch.dtype, device: torch.device) -> list[Case]:
    result = []
    for seq_len in LENGTHS:
        config = dict(dtype=dtype, seq_len=seq_len, causal=True, **SHAPE)
        tokens = config["batch"] * seq_len
        competitors = [
            ("reformer_kernels", "triton", functools.partial(c.ours_lsh_layer, config, device, "triton")),
            ("reformer_kernels", "reference", functools.partial(c.ours_lsh_layer, config, device, "reference")),
            ("transformers", "pytorch", functools.partial(c.transformers_lsh_layer, config, device)),
            ("torch-sdpa", c.sdpa_backend_name(config, device), functools.partial(c.sdpa_layer, config, device, n_projections=2)),
        ]
        result += [Case(SUITE, "lsh_layer", name, backend, config, build, tokens=tokens) for name, backend, build in competitors]
    # Series by competitor, lengths ascending: a series stops after an out-of-memory or a slow call.
    return sorted(result, key=lambda case: (case.competitor, case.backend, case.config["seq_len"]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks --suite {SUITE}", description=__doc__.splitlines()[0])
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    p.add_argument("--out", default=None, help="output folder (default: bench-results/<gpu-name>/, untracked)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"{SUITE}: needs a CUDA GPU (torch.cuda.is_available() is False); "
              "on a CPU run `python -m benchmarks --suite scaling` instead", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    out_dir = args.out or report.default_out_dir(device)
    env = report.environment(device)
    rows: list[dict] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peers' deprecation noise; each row names what ran
        run_cases(cases(getattr(torch, args.dtype), device), Settings(device=device, warmup=3, repeats=10, max_call_s=30.0),
                  on_row=lambda row: (rows.append(row), report.write_suite(out_dir, SUITE, rows, env)))
    add_speedups(rows)
    report.write_suite(out_dir, SUITE, rows, env)
    columns = ("competitor", "backend", "seq_len", "fwd_ms", "fwd_bwd_ms", "peak_mem_mb", "speedup_vs_transformers", "status")
    print(" ".join(f"{name:>16}" for name in columns))
    for row in rows:
        print(" ".join(f"{str(row[name]):>16}" for name in columns))
    print(f"wrote {os.path.join(out_dir, SUITE + '.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
