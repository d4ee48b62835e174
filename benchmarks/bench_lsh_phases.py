"""Where the CPU LSH layer's time goes: each phase of one fwd+bwd step of the issue's layer, with
its achieved GFLOP/s and the fraction of the machine's peak.

    python -m benchmarks --suite lsh_phases [--size small|full] [--repeats N] [--peak-gflops X] [--out DIR]

The layer: ``reformer_kernels.nn.LSHSelfAttention(256, 4, 64, num_hashes=4, chunk_len=64,
causal=True)`` on x of (1, L, 256), float32, L = 4K and 16K (--size small: 4K). Phases, each timed
alone on the tensors the step itself sees: the two head projections (forward), hashing, the bucket sort,
the attention forward and backward (the C++ ops), the projections' backward (input and weight
gradients), and the whole module step for comparison (its time minus the phases' sum is the
autograd and Python overhead). Times are the minimum of --repeats calls after one warm-up.

FLOPs follow benchmarks/flops.py: only matrix products, the attention over the full window of
every query (so skipped causal blocks count as done work: GFLOP/s is the useful rate), backward
as twice the forward. The peak is threads x clock x FLOPs per cycle per core; the clock is read
from /proc/cpuinfo and FLOPs per cycle default to 32 (two 256-bit FMA pipes, as AMD Zen 4 runs
AVX-512; 64 on cores with two 512-bit FMA units): pass --peak-gflops for another machine.
Writes lsh_phases.csv/.json to benchmarks/results/<cpu-name>/ and prints the table.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from reformer_kernels import functional
from reformer_kernels.nn import LSHSelfAttention

from . import flops, report

SUITE = "lsh_phases"
LENGTHS = {"small": [4096], "full": [4096, 16384]}
HIDDEN, HEADS, HEAD_DIM, N_HASHES, CHUNK_LEN = 256, 4, 64, 4, 64
COLUMNS = ("seq_len", "phase", "ms", "ms_median", "gflop", "gflop_per_s", "fraction_of_peak")
CPU = torch.device("cpu")


def clock_mhz() -> float | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return float(line.split(":", 1)[1])
    except OSError:
        pass
    return None


def min_and_median_ms(fn, repeats: int) -> tuple[float, float]:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return times[0], times[len(times) // 2]


def phases(seq_len: int) -> list[tuple[str, object, float]]:
    """(phase, callable, FLOPs) for one step of the layer at ``seq_len``."""
    torch.manual_seed(0)
    layer = LSHSelfAttention(HIDDEN, HEADS, HEAD_DIM, num_hashes=N_HASHES, chunk_len=CHUNK_LEN, causal=True)
    x = torch.randn(1, seq_len, HIDDEN, requires_grad=True)
    n_buckets = functional.default_num_buckets(seq_len, CHUNK_LEN, layer.max_position_embeddings)
    rotations = layer.draw_rotations(N_HASHES, n_buckets, x)
    weights = [layer.query_key.weight.detach(), layer.value.weight.detach()]
    inputs = x.detach()
    qk, v = functional.head_projections(inputs, weights, HEADS)
    buckets, num_keys = functional.lsh_hash(qk, rotations, n_buckets, backend="cpu")
    sorted_idx, _ = functional.bucket_sort(buckets, num_keys, backend="cpu")
    ops = torch.ops.reformer_kernels
    window = (CHUNK_LEN, 1, 0, True, None, 0.0)
    out, lse = ops.lsh_attention_fwd(qk, v, sorted_idx, N_HASHES, *window)
    grad_out = torch.randn_like(out)
    grad_heads = [torch.randn_like(qk), torch.randn_like(v)]

    def projections_backward():
        ops.head_projections_grad_input(grad_heads, weights)
        ops.head_projections_grad_weights(grad_heads, inputs)

    def step():
        x.grad = None
        layer.zero_grad(set_to_none=True)
        layer(x).sum().backward()

    linear = flops.linear(seq_len, HIDDEN, HEADS * HEAD_DIM)
    attention = flops.chunked_attention(1, HEADS, seq_len, HEAD_DIM, CHUNK_LEN, 1, 0, N_HASHES)
    hashing = flops.hashing(1, HEADS, seq_len, HEAD_DIM, N_HASHES, n_buckets)
    _, step_flops = flops.lsh_layer(1, HEADS, seq_len, HEAD_DIM, HIDDEN, N_HASHES, n_buckets, CHUNK_LEN, 1, 0)
    return [
        ("projections fwd", lambda: ops.head_projections(inputs, weights, HEADS), 2 * linear),
        ("hash", lambda: functional.lsh_hash(qk, rotations, n_buckets, backend="cpu"), hashing),
        ("sort", lambda: functional.bucket_sort(buckets, num_keys, backend="cpu"), 0.0),
        ("attention fwd", lambda: ops.lsh_attention_fwd(qk, v, sorted_idx, N_HASHES, *window), attention),
        ("attention bwd", lambda: ops.lsh_attention_bwd(grad_out, None, qk, v, sorted_idx, out, lse, N_HASHES, *window),
         2 * attention),
        ("projections bwd", projections_backward, 4 * linear),
        ("module step", step, step_flops),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks --suite {SUITE}", description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(LENGTHS), default="full")
    p.add_argument("--lengths", type=int, nargs="+", default=None, help="sequence lengths (overrides --size)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--peak-gflops", type=float, default=None, help="the machine's fp32 peak (default: from the clock)")
    p.add_argument("--flops-per-cycle", type=float, default=32.0, help="fp32 FLOPs per cycle per core (default 32)")
    p.add_argument("--out", default=None, help="output folder (default: bench-results/<cpu-name>/, not tracked by git)")
    args = p.parse_args(argv)
    threads = torch.get_num_threads()
    mhz = clock_mhz()
    peak = args.peak_gflops
    if peak is None and mhz is not None:
        peak = threads * mhz * 1e-3 * args.flops_per_cycle
    env = dict(report.environment(CPU), threads=threads, clock_mhz=mhz, peak_gflops=peak,
               flops_per_cycle=None if args.peak_gflops else args.flops_per_cycle)
    print(f"peak: {peak if peak is None else round(peak, 1)} GFLOP/s ({threads} threads, {mhz} MHz)")
    print(" ".join(f"{name:>16}" for name in COLUMNS), flush=True)
    rows = []
    for seq_len in args.lengths or LENGTHS[args.size]:
        measured = []
        for phase, fn, work in phases(seq_len):
            best, median = min_and_median_ms(fn, args.repeats)
            rate = work / (best / 1e3) / 1e9 if work else None
            row = dict(seq_len=seq_len, phase=phase, ms=round(best, 2), ms_median=round(median, 2),
                       gflop=round(work / 1e9, 3), gflop_per_s=None if rate is None else round(rate, 2),
                       fraction_of_peak=None if rate is None or peak is None else round(rate / peak, 3))
            measured.append(row)
            print(" ".join(f"{str(row[name]):>16}" for name in COLUMNS), flush=True)
        phase_sum = sum(row["ms"] for row in measured if row["phase"] != "module step")
        print(f"{'':>16} {'sum of phases':>16} {phase_sum:>16.2f}")
        rows.extend(measured)
    out_dir = args.out or report.default_out_dir(CPU)
    report.write_suite(out_dir, SUITE, rows, env, columns=COLUMNS, rows_key="phases")
    print(f"wrote {os.path.join(out_dir, SUITE + '.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
