"""What the reversible layers cost and save: training-step time and peak memory of a causal Reformer
LM at 1, 2, 6 and 12 layers, ours with the reversible backward (the default), ours with plain autograd
through the same blocks, and transformers' ReformerModelWithLMHead, all three with the same weights.

    python -m benchmarks --suite reversible [--size small|full] [--repeats N] [--device cpu|cuda] [--out DIR]
                                            [--competitors NAME ...]

Model: hidden 256 = 4 heads of 64, feed-forward 1024, vocab 320, layers alternating LSH / local,
2 hashes, chunk 64, causal (is_decoder), axial positions, dropout 0, batch 1, float32, on the CPU
(default) or the GPU (--device cuda: our Triton/CUDA kernels, transformers in PyTorch).
--size full: 1, 2, 6, 12 layers at L = 4096; --size small: 1, 2 and 6 layers at L = 1024. (With one
layer there is nothing to recompute: the reversible and plain rows run the same plain autograd.)

A training step is forward + loss + backward + AdamW step; its time is the median of --repeats
calls after warm-up. Each case runs in a fresh subprocess. On the CPU its peak memory is the peak
resident set size one step adds (benchmarks/workers.py, as for cpu_attention), so every byte counts, the
optimizer's and the C++ kernels' scratch included; on the GPU it is the peak of the CUDA caching
allocator's bytes in use during one step (max_memory_allocated), which counts every tensor.

Two memory rows per case, because glibc's malloc keeps freed blocks resident: op "train_step" is
the step above under the default malloc (the RSS a user sees: ours runs its reversible layers in
its CPU memory pool, which reuses each layer's blocks for the next, see reformer_kernels.nn.reversible;
the measured step starts with the pool emptied, so the blocks it needs are counted), op
"train_step_live_memory" is the same step, untimed, in a process run with
MALLOC_MMAP_THRESHOLD_=131072, where every block of 128 KiB or more is its own mapping, unmapped
when freed, so the peak RSS follows the bytes actually alive at once (CPU only: the GPU's peak
already counts live bytes). And one time row per mode of ours, op "train_step_interleaved":
reversible and plain-autograd steps of one model alternated in the parent process, whose ratio is
the reversible overhead with the machine's drift shared.

The non-reversible row: the model has no config switch for plain autograd; its encoder *is* a
ReversibleSequence, whose public ``reversible`` attribute selects the mode, so the row sets
``model.reformer.encoder.reversible = False`` on an otherwise identical model.

Writes reversible.csv/.json to bench-results/<cpu-or-gpu-name>/ (or --out), prints the table, the
reversible overhead (reversible time / non-reversible time) and how peak memory grows with depth.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import torch

from . import competitors as c
from . import report
from .harness import Case, add_speedups, blank_row, record_failure, record_times, time_ms
from .workers import LIVE_MEMORY_ENV, measure_step, per_case_environment, run_in_fresh_process

SUITE = "reversible"
TIMED_OP, LIVE_MEMORY_OP, INTERLEAVED_OP = "train_step", "train_step_live_memory", "train_step_interleaved"
SIZES = {"small": (1024, [1, 2, 6]), "full": (4096, [1, 2, 6, 12])}
SHAPE = dict(batch=1, heads=4, head_dim=64, n_hashes=2, chunk_len=64, causal=True, dtype=torch.float32)
VOCAB = 320
# (competitor, backend): the backend column names the kernels ours runs with ("auto": the C++ ones).
REVERSIBLE, PLAIN, TRANSFORMERS = ("reformer_kernels", "auto"), ("reformer_kernels-plain-autograd", "auto"), ("transformers", "pytorch")
ROWS = (REVERSIBLE, PLAIN, TRANSFORMERS)


def _config(seq_len: int, layers: int) -> dict:
    return dict(SHAPE, seq_len=seq_len, layers=layers)


def _settings(config: dict) -> dict:
    # The model suite's model, with this benchmark's vocabulary and an LSH layer first.
    return dict(c.lm_settings(config, VOCAB), attn_layers=(["lsh", "local"] * config["layers"])[:config["layers"]])


def build(competitor: str, config: dict, device: torch.device):
    """The Prepared training step of one row on ``device``, and its model."""
    from reformer_kernels.models import ReformerConfig, ReformerModelWithLMHead

    theirs = c.transformers_lm_model(_settings(config)).train()
    input_ids = torch.randint(3, VOCAB, (config["batch"], config["seq_len"]), generator=c.generator_for(config, torch.device("cpu")))
    if competitor == TRANSFORMERS[0]:
        model = theirs
    else:
        model = ReformerModelWithLMHead(ReformerConfig(**_settings(config)))
        model.load_state_dict(theirs.state_dict())
        del theirs  # only its weights were wanted; freed before anything is measured
        model.reformer.encoder.reversible = competitor == REVERSIBLE[0]
    model, input_ids = model.to(device), input_ids.to(device)
    return c.adamw_training(model, lambda: model(input_ids, labels=input_ids).loss), model


def worker(op: str, competitor: str, backend: str, seq_len: int, layers: int, repeats: int,
           device: torch.device = torch.device("cpu")) -> dict:
    """Measure one case in this (fresh) process and return its row (``op`` LIVE_MEMORY_OP: memory only)."""
    config = _config(seq_len, layers)
    case = Case(SUITE, op, competitor, backend, config, build=lambda: None, tokens=seq_len)
    return measure_step(case, lambda: build(competitor, config, device)[0], device, repeats, timed=op == TIMED_OP)


def run_case(op: str, competitor: str, backend: str, seq_len: int, layers: int, repeats: int,
             device: torch.device) -> dict:
    case = Case(SUITE, op, competitor, backend, _config(seq_len, layers), build=lambda: None)
    return run_in_fresh_process("benchmarks.bench_reversible",
                                [op, competitor, backend, str(seq_len), str(layers), "--repeats", str(repeats),
                                 "--device", device.type], case,
                                env=LIVE_MEMORY_ENV if op == LIVE_MEMORY_OP else None)


def interleaved_rows(seq_len: int, layers: int, repeats: int, device: torch.device = torch.device("cpu")) -> list[dict]:
    """Our reversible and plain-autograd training steps on one model, alternated in this process, so
    that both see the same state of the machine (fresh-process rows taken minutes apart on a shared
    machine do not): the reversible overhead is the ratio of these two rows' times."""
    config = _config(seq_len, layers)
    cases = [(Case(SUITE, INTERLEAVED_OP, name, backend, config, build=lambda: None), name == REVERSIBLE[0])
             for name, backend in (REVERSIBLE, PLAIN)]
    rows = [blank_row(case) for case, _ in cases]
    try:
        prepared, model = build(REVERSIBLE[0], config, device)
        times: dict[bool, list[float]] = {True: [], False: []}

        def step(reversible: bool) -> None:
            model.reformer.encoder.reversible = reversible
            prepared.train_step()

        for reversible in times:  # warm-up; the first step also builds the optimizer state
            step(reversible)
        for _ in range(repeats):
            for reversible in times:
                times[reversible] += time_ms(lambda: step(reversible), device, warmup=0, repeats=1)
        for row, (_, reversible) in zip(rows, cases):
            record_times(row, "fwd_bwd", times[reversible])
            row.update(tokens_per_s=round(seq_len / (row["fwd_bwd_ms"] / 1e3), 1), status="ok")
    except Exception as error:  # a failure is a result, not a crash
        for row in rows:
            record_failure(row, error)
    return rows


def summarize(rows: list[dict]) -> None:
    for op, how in ((TIMED_OP, "fresh processes"), (INTERLEAVED_OP, "alternated in one process")):
        ok = {(r["competitor"], r["layers"]): r for r in rows if r["status"] == "ok" and r["op"] == op}
        print(f"\nreversible overhead = reversible time / non-reversible time ({op}, {how}):")
        for (competitor, layers), row in ok.items():
            plain = ok.get((PLAIN[0], layers))
            if competitor == REVERSIBLE[0] and plain is not None:
                print(f"  {layers:>2} layers: {row['fwd_bwd_ms'] / plain['fwd_bwd_ms']:.2f}x")
    for op in (TIMED_OP, LIVE_MEMORY_OP):
        print(f"{op}: peak memory growth with depth (MB per added layer, from the fewest to the most layers):")
        for competitor, _ in ROWS:
            depths = sorted((r["layers"], r["peak_mem_mb"]) for r in rows
                            if r["status"] == "ok" and r["op"] == op and r["competitor"] == competitor)
            if len(depths) >= 2:
                (l0, m0), (l1, m1) = depths[0], depths[-1]
                print(f"  {competitor:>32}: {m0} MB at {l0} -> {m1} MB at {l1} layers, {(m1 - m0) / (l1 - l0):+.1f} MB/layer, "
                      f"{m1 / m0:.2f}x")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks --suite {SUITE}", description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="full")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the models train (default: cpu)")
    p.add_argument("--competitors", nargs="+", choices=[name for name, _ in ROWS], default=[name for name, _ in ROWS],
                   help="rows to run (default: all; the alternated rows need both of ours)")
    p.add_argument("--out", default=None, help="output folder (default: bench-results/<cpu-or-gpu-name>/, untracked)")
    p.add_argument("--worker", nargs=5, metavar=("OP", "COMPETITOR", "BACKEND", "SEQ_LEN", "LAYERS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats < 3:
        p.error("--repeats must be at least 3 (the time is a median)")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False; use --device cpu")
    if args.worker:
        op, competitor, backend, seq_len, layers = args.worker
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peers' deprecation noise; the row names what ran
            print(json.dumps(worker(op, competitor, backend, int(seq_len), int(layers), args.repeats, device)))
        return 0
    if device.type == "cuda":
        env, ops = report.environment(device), (TIMED_OP,)
    else:
        env, ops = per_case_environment("bench_reversible"), (TIMED_OP, LIVE_MEMORY_OP)
        if env is None:
            return 2
    out_dir = args.out or report.default_out_dir(device)
    seq_len, depths = SIZES[args.size]
    rows: list[dict] = []
    for layers in depths:
        for competitor, backend in (row for row in ROWS if row[0] in args.competitors):
            for op in ops:
                rows.append(run_case(op, competitor, backend, seq_len, layers, args.repeats, device))
                report.write_suite(out_dir, SUITE, rows, env)  # every finished row is on disk
                print(f"  {competitor} {op} {layers} layers: {rows[-1]['status']}", flush=True)
        if {REVERSIBLE[0], PLAIN[0]} <= set(args.competitors):
            rows += interleaved_rows(seq_len, layers, args.repeats, device)
            report.write_suite(out_dir, SUITE, rows, env)
            print(f"  ours reversible and plain autograd alternated, {layers} layers: {rows[-1]['status']}", flush=True)
    add_speedups(rows)
    report.write_suite(out_dir, SUITE, rows, env)
    columns = ("competitor", "op", "layers", "seq_len", "fwd_bwd_ms", "peak_mem_mb", "speedup_vs_transformers", "status")
    print("\n" + " ".join(f"{name:>32}" if name == "competitor" else f"{name:>12}" for name in columns))
    for row in rows:
        print(" ".join(f"{str(row[n]):>32}" if n == "competitor" else f"{str(row[n]):>12}" for n in columns))
    summarize(rows)
    print(f"wrote {os.path.join(out_dir, SUITE + '.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
