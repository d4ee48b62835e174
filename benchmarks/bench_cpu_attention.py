"""One causal LSH attention layer and one local attention layer on the CPU, forward + backward:
our C++ kernels (backend "cpu") against transformers' LSHSelfAttention / LocalSelfAttention,
reformer-pytorch's LSHAttention (lucidrains' local_attention for the local layer) and dense SDPA.

    python -m benchmarks --suite cpu_attention [--size small|full] [--repeats N] [--out DIR]

Shape: batch 1, hidden 256 = 4 heads of 64, 4 hashes, chunk 64, one chunk before, causal, float32;
L = 4K, 8K, 16K (--size small: 4K). Each case runs in a fresh subprocess, so that its peak memory
is the peak resident set size of that process (Linux VmHWM, reset right before a measured call
that follows one warm-up call) minus its resident size just before: this sees every allocation,
the C++ kernels' scratch included, which torch's profiler would miss. Time is the median of
--repeats further calls. Writes cpu_attention.csv/.json to bench-results/<cpu-name>/ (or --out) and prints the table.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import warnings

import torch

from . import competitors as c
from . import report
from .harness import Case, add_speedups
from .workers import measure_step, per_case_environment, run_in_fresh_process

SUITE = "cpu_attention"
LENGTHS = {"small": [4096], "full": [4096, 8192, 16384]}
SHAPE = dict(batch=1, heads=4, head_dim=64, n_hashes=4, chunk_len=64, causal=True, dtype=torch.float32)
CPU = torch.device("cpu")

# op -> [(competitor, backend, builder(config, device) -> Prepared)]
COMPETITORS = {
    "lsh_layer": [
        ("reformer_kernels", "cpu", functools.partial(c.ours_lsh_layer, backend="cpu")),
        ("transformers", "pytorch", c.transformers_lsh_layer),
        ("reformer-pytorch", "pytorch", c.reformer_pytorch_lsh_layer),
        ("torch-sdpa", "default", functools.partial(c.sdpa_layer, n_projections=2)),
    ],
    "local_layer": [
        ("reformer_kernels", "cpu", functools.partial(c.ours_local_layer, backend="cpu")),
        ("transformers", "pytorch", c.transformers_local_layer),
        ("local-attention", "pytorch", c.local_attention_package_layer),
        ("torch-sdpa", "default", functools.partial(c.sdpa_layer, n_projections=3)),
    ],
}


def _builder(op: str, competitor: str, backend: str):
    return next(build for name, kind, build in COMPETITORS[op] if (name, kind) == (competitor, backend))


def worker(op: str, competitor: str, backend: str, seq_len: int, repeats: int) -> dict:
    """Measure one case in this (fresh) process; the row's measured fields, as the parent wants them."""
    config = dict(SHAPE, seq_len=seq_len, layers=1)
    case = Case(SUITE, op, competitor, backend, config, build=lambda: None, tokens=seq_len)
    return measure_step(case, lambda: _builder(op, competitor, backend)(config, CPU), CPU, repeats)


def run_case(op: str, competitor: str, backend: str, seq_len: int, repeats: int) -> dict:
    case = Case(SUITE, op, competitor, backend, dict(SHAPE, seq_len=seq_len, layers=1), build=lambda: None)
    return run_in_fresh_process("benchmarks.bench_cpu_attention",
                                [op, competitor, backend, str(seq_len), "--repeats", str(repeats)], case)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks --suite {SUITE}", description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(LENGTHS), default="full")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None, help="output folder (default: bench-results/<cpu-name>/, untracked)")
    p.add_argument("--worker", nargs=4, metavar=("OP", "COMPETITOR", "BACKEND", "SEQ_LEN"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        op, competitor, backend, seq_len = args.worker
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peers' deprecation noise; the row names what ran
            print(json.dumps(worker(op, competitor, backend, int(seq_len), args.repeats)))
        return 0
    env = per_case_environment("bench_cpu_attention")
    if env is None:
        return 2
    out_dir = args.out or report.default_out_dir(CPU)
    rows: list[dict] = []
    columns = ("op", "competitor", "seq_len", "fwd_bwd_ms", "peak_mem_mb", "speedup_vs_transformers", "status")
    print(" ".join(f"{name:>18}" for name in columns), flush=True)
    for op, entries in COMPETITORS.items():
        for seq_len in LENGTHS[args.size]:
            for competitor, backend, _ in entries:
                row = run_case(op, competitor, backend, seq_len, args.repeats)
                rows.append(row)
                report.write_suite(out_dir, SUITE, rows, env)
                print(" ".join(f"{str(row[name]):>18}" for name in columns), flush=True)
    add_speedups(rows)
    report.write_suite(out_dir, SUITE, rows, env)
    print("\nmemory ratio = transformers peak / this peak:")
    baseline = {(r["op"], r["seq_len"]): r for r in rows if r["competitor"] == "transformers" and r["status"] == "ok"}
    for row in rows:
        base = baseline.get((row["op"], row["seq_len"]))
        if base is not None and row["status"] == "ok" and row["peak_mem_mb"]:
            print(f"  {row['op']:>12} {row['competitor']:>18} L={row['seq_len']:>6}: "
                  f"{base['fwd_bwd_ms'] / row['fwd_bwd_ms']:6.2f}x faster, "
                  f"{base['peak_mem_mb'] / max(row['peak_mem_mb'], 0.1):6.2f}x less memory")
    print(f"wrote {os.path.join(out_dir, SUITE + '.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
