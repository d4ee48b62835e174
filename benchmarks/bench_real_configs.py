"""The whole model on the published Reformer configurations, as users run them: ours
(reformer_kernels.models.ReformerModelWithLMHead) vs transformers' ReformerModelWithLMHead vs
transformers' model with its attention layers patched onto our ops (integrations.hf.patch_hf_reformer),
all three with the same random weights, batch 1, on the CPU.

    python -m benchmarks --suite real_configs [--size tiny|small|full] [--dtypes fp32 bf16-autocast] [--repeats N]
        [--peak-gflops X] [--out DIR]

Configurations (transformers' ReformerConfig fields; ours takes the same ones):
  cnp (google/reformer-crime-and-punishment): 6 layers local/lsh alternating, hidden 256 = 2 heads of 64,
      1 hash, buckets [64, 128], lsh and local chunk 64 (one chunk before, none after), feed-forward 512
      relu, vocab 320, hidden dropout 0.05, local attention dropout 0.05, LSH attention dropout 0,
      axial positions (L/1024, 1024) (L < 1024: (L/64, 64)) with dims (64, 192), causal (is_decoder).
  enwik8 (google/reformer-enwik8): 12 layers local/lsh alternating, hidden 1024 = 8 heads of 128, 4 hashes,
      buckets 2L/256 (what transformers picks when num_buckets is None), lsh chunk 256, local chunk 128,
      feed-forward 4096 relu, vocab 258, axial positions (128, L/128) with dims (256, 768), causal.
      Dropouts: the installed transformers package does not carry the enwik8 config, so this suite uses
      hidden 0.2 and both attention dropouts 0.1 (stated here as an assumption, not read from the hub).
  max_position_embeddings = L in both.

Workloads: "train" is forward with labels + backward + AdamW step in train mode (the configs' dropout
on); "infer" is eval mode, no grad, the logits of the whole sequence. Dtypes: "fp32" and
"bf16-autocast" (the forward under torch.autocast("cpu", dtype=torch.bfloat16)).

Sizes: --size tiny (tests): cnp-shaped, 2 layers, L = 256, fp32, 1 repeat. --size small (default):
cnp at L = 1024, fp32, 1 repeat (a few minutes at most). --size full: cnp at 4K, 16K, 64K and enwik8
at 4K, 16K, both workloads, fp32 and bf16-autocast, 3 repeats: this takes hours on a 2-core CPU.
--dtypes replaces the size's dtypes (e.g. --size small --dtypes fp32 bf16-autocast: cnp at 1K in both).

Each case runs in a fresh process (benchmarks/workers.py): SETTLING_STEPS untimed steps (the steady
state of a training run: the CPU memory pool plans a step's blocks once the steps after the first
repeat), one more step, then one whose peak RSS is measured (workers.peak_rss_bytes: the resident
memory the step adds), then --repeats timed steps,
whose median is step_ms; minflt_per_step and sys_s_per_step are the minor page faults and the system
CPU time (getrusage ru_minflt, ru_stime) of the timed steps divided by their number: a step that
returns its memory to the system and faults it back in pays for it in both.

FLOPs (benchmarks/flops.reformer_lm): 2 x multiply-adds of every matrix product, per layer the attention
projections (LSH: shared qk + v; local: q, k, v), output projection, the two feed-forward products and
the attention window (4 x heads x L x keys-per-query x head_dim per hash round, keys-per-query =
chunk x (1 + chunks before + after)), plus the LM head (L x 2 hidden x vocab). A training step counts
3x the differentiable products (backward = 2x forward; hashing has no gradient); inference 1x.
gflop_per_s is that over step_ms, fraction_of_peak is it over --peak-gflops (default 234: DESIGN.md's
measured fp32 peak of 2 Zen 4 cores with AVX-512; pass the measured peak of your machine; bf16 rows are
compared with the same fp32 peak).

Columns: time_ratio_vs_transformers and rss_ratio_vs_transformers are this row's step time / peak RSS
over the transformers row's of the same configuration, workload, length and dtype (below 1: ours is
faster / smaller). Writes real_configs.csv/.json to bench-results/<cpu-name>/ (or --out) and prints them.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import warnings

import torch

from . import competitors as c
from . import flops, report
from .harness import ERROR, OK, Case, blank_row, record_failure, record_times, time_ms
from .workers import peak_rss_bytes, per_case_environment, run_in_fresh_process

SUITE = "real_configs"
CPU = torch.device("cpu")
OURS, TRANSFORMERS, PATCHED = "reformer_kernels", "transformers", "transformers+patch_hf_reformer"
COMPETITORS = (OURS, TRANSFORMERS, PATCHED)
WORKLOADS = ("train", "infer")
DTYPES = ("fp32", "bf16-autocast")
# Untimed steps before the peak-RSS step, after the first: with them and peak_rss_bytes' first call,
# that step is a training run's fourth, the first in which our CPU memory pool serves the plan it
# made from the second and third (the first also creates the optimizer's state). The peak-RSS step
# starts with freed memory handed back (malloc_trim, the pool emptied; its plan maps its range anew),
# so that step, not the timed ones after it, faults the pages of the steady state in.
SETTLING_STEPS = 2
PEAK_GFLOPS = 234.0  # DESIGN.md: fp32 register-only FMA loop on 2 Zen 4 cores (AVX-512)
# size -> ([(model, seq_len), ...], workloads, dtypes, default repeats, layers override)
SIZES = {
    "tiny": ([("cnp", 256)], WORKLOADS, ("fp32",), 1, 2),
    "small": ([("cnp", 1024)], WORKLOADS, ("fp32",), 1, None),
    "full": ([("cnp", 4096), ("cnp", 16384), ("cnp", 65536), ("enwik8", 4096), ("enwik8", 16384)], WORKLOADS, DTYPES, 3, None),
}
COLUMNS = (
    "suite", "model", "op", "competitor", "dtype", "batch", "heads", "head_dim", "seq_len", "n_hashes", "layers",
    "step_ms", "step_ms_min", "step_ms_max", "peak_rss_mb", "minflt_per_step", "sys_s_per_step", "gflop", "gflop_per_s",
    "fraction_of_peak", "time_ratio_vs_transformers", "rss_ratio_vs_transformers", "status", "error",
)
SHOWN = ("model", "seq_len", "op", "dtype", "competitor", "step_ms", "peak_rss_mb", "minflt_per_step", "sys_s_per_step", "gflop_per_s",
         "fraction_of_peak", "time_ratio_vs_transformers", "rss_ratio_vs_transformers", "status")


def settings(model: str, seq_len: int, layers: int | None = None) -> dict:
    """The ReformerConfig fields of a published configuration at length ``seq_len`` (``layers``: fewer layers)."""
    if model == "cnp":
        rows = seq_len // 1024 if seq_len >= 1024 else seq_len // 64
        fields = dict(vocab_size=320, hidden_size=256, num_attention_heads=2, attention_head_size=64,
                      feed_forward_size=512, num_hashes=1, num_buckets=[64, 128], lsh_attn_chunk_length=64,
                      local_attn_chunk_length=64, axial_pos_shape=[rows, seq_len // rows], axial_pos_embds_dim=[64, 192],
                      hidden_dropout_prob=0.05, local_attention_probs_dropout_prob=0.05,
                      lsh_attention_probs_dropout_prob=0.0, attn_layers=["local", "lsh"] * 3)
    elif model == "enwik8":
        fields = dict(vocab_size=258, hidden_size=1024, num_attention_heads=8, attention_head_size=128,
                      feed_forward_size=4096, num_hashes=4, num_buckets=max(2, 2 * seq_len // 256), lsh_attn_chunk_length=256,
                      local_attn_chunk_length=128, axial_pos_shape=[128, seq_len // 128], axial_pos_embds_dim=[256, 768],
                      hidden_dropout_prob=0.2, local_attention_probs_dropout_prob=0.1,
                      lsh_attention_probs_dropout_prob=0.1, attn_layers=["local", "lsh"] * 6)
    else:
        raise ValueError(f"unknown configuration {model!r}")
    if layers is not None:
        fields["attn_layers"] = fields["attn_layers"][:layers]
    return dict(fields, hidden_act="relu", lsh_num_chunks_before=1, lsh_num_chunks_after=0, local_num_chunks_before=1,
                local_num_chunks_after=0, is_decoder=True, max_position_embeddings=seq_len, pad_token_id=0, eos_token_id=2)


def model_flops(fields: dict, seq_len: int) -> tuple[float, float]:
    """(inference, training step) FLOPs of the model of ``fields`` on one sequence of ``seq_len``."""
    return flops.reformer_lm(
        1, seq_len, fields["hidden_size"], fields["num_attention_heads"], fields["attention_head_size"],
        fields["feed_forward_size"], fields["vocab_size"], fields["attn_layers"], fields["num_hashes"],
        tuple(fields["num_buckets"]) if isinstance(fields["num_buckets"], list) else fields["num_buckets"],
        fields["lsh_attn_chunk_length"], fields["lsh_num_chunks_before"], fields["lsh_num_chunks_after"],
        fields["local_attn_chunk_length"], fields["local_num_chunks_before"], fields["local_num_chunks_after"])


def build_model(competitor: str, fields: dict) -> torch.nn.Module:
    """The row's model: transformers' with seed-0 weights, patched onto our ops, or ours loading its state dict."""
    from reformer_kernels.integrations.hf import patch_hf_reformer
    from reformer_kernels.models import ReformerConfig, ReformerModelWithLMHead

    theirs = c.transformers_lm_model(fields)
    if competitor == TRANSFORMERS:
        return theirs
    if competitor == PATCHED:
        return patch_hf_reformer(theirs)
    ours = ReformerModelWithLMHead(ReformerConfig(**fields))
    ours.load_state_dict(theirs.state_dict())
    return ours


def step_fn(model: torch.nn.Module, workload: str, dtype: str, input_ids: torch.Tensor):
    """One step of ``workload``: a training step (c.adamw_training) or a no-grad eval forward returning logits."""
    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16-autocast" else contextlib.nullcontext()

    if workload == "train":
        def loss():
            with autocast():
                return model(input_ids, labels=input_ids).loss

        return c.adamw_training(model, loss).train_step
    model.eval()

    def infer():
        with torch.no_grad(), autocast():
            return model(input_ids).logits

    return infer


def _case(model: str, workload: str, competitor: str, dtype: str, seq_len: int, layers: int | None) -> Case:
    fields = settings(model, seq_len, layers)
    config = dict(dtype=dtype, batch=1, heads=fields["num_attention_heads"], head_dim=fields["attention_head_size"],
                  seq_len=seq_len, n_hashes=fields["num_hashes"], layers=len(fields["attn_layers"]))
    return Case(SUITE, workload, competitor, "", config, build=lambda: None, tokens=seq_len)


def worker(model: str, workload: str, competitor: str, dtype: str, seq_len: int, layers: int | None, repeats: int,
           peak_gflops: float) -> dict:
    """Measure one case in this (fresh) process and return its row."""
    row = dict(blank_row(_case(model, workload, competitor, dtype, seq_len, layers)), model=model)
    try:
        fields = settings(model, seq_len, layers)
        net = build_model(competitor, fields)
        input_ids = torch.randint(3, fields["vocab_size"], (1, seq_len), generator=torch.Generator().manual_seed(0))
        step = step_fn(net, workload, dtype, input_ids)
        # Steady state first: the CPU memory pool plans a training step's blocks once two steps after
        # the first (which also creates the optimizer's state) have repeated. Then peak_rss_bytes'
        # first call settles the heap, its second is the measured one.
        for _ in range(SETTLING_STEPS):
            step()
        row["peak_rss_mb"] = round(peak_rss_bytes(step) / 2**20, 1)
        start = resource.getrusage(resource.RUSAGE_SELF)
        times = time_ms(step, CPU, warmup=0, repeats=repeats)
        end = resource.getrusage(resource.RUSAGE_SELF)
        row["minflt_per_step"] = round((end.ru_minflt - start.ru_minflt) / len(times), 1)
        row["sys_s_per_step"] = round((end.ru_stime - start.ru_stime) / len(times), 3)
        record_times(row, "step", times)
        work = model_flops(fields, seq_len)[0 if workload == "infer" else 1]
        rate = work / (row["step_ms"] / 1e3) / 1e9
        row.update(gflop=round(work / 1e9, 3), gflop_per_s=round(rate, 2), fraction_of_peak=round(rate / peak_gflops, 4),
                   status=OK)
    except Exception as error:  # a competitor's failure is a result, not a crash
        record_failure(row, error)
    return row


def add_ratios(rows: list[dict]) -> None:
    """Fill the *_ratio_vs_transformers columns: this row's step time and peak RSS over the transformers row's."""
    def key(row):
        return row["model"], row["op"], row["dtype"], row["seq_len"], row["layers"]

    baselines = {key(row): row for row in rows if row["competitor"] == TRANSFORMERS and row["status"] == OK}
    for row in rows:
        base = baselines.get(key(row))
        if base is not None and row["status"] == OK:
            row["time_ratio_vs_transformers"] = round(row["step_ms"] / base["step_ms"], 3)
            if base["peak_rss_mb"]:
                row["rss_ratio_vs_transformers"] = round(row["peak_rss_mb"] / base["peak_rss_mb"], 3)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks --suite {SUITE}", description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=list(SIZES), default="small")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per case (default: 1 for tiny/small, 3 for full)")
    p.add_argument("--peak-gflops", type=float, default=PEAK_GFLOPS,
                   help=f"the machine's measured fp32 peak, for fraction_of_peak (default {PEAK_GFLOPS:g}: 2 Zen 4 cores)")
    p.add_argument("--competitors", nargs="+", choices=COMPETITORS, default=list(COMPETITORS))
    p.add_argument("--dtypes", nargs="+", choices=DTYPES, default=None, help="dtypes to run (default: the size's)")
    p.add_argument("--out", default=None, help="output folder (default: bench-results/<cpu-name>/, not tracked by git)")
    p.add_argument("--worker", nargs=6, metavar=("MODEL", "WORKLOAD", "COMPETITOR", "DTYPE", "SEQ_LEN", "LAYERS"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    lengths, workloads, dtypes, default_repeats, layers = SIZES[args.size]
    dtypes = args.dtypes or dtypes
    repeats = args.repeats or default_repeats
    if args.worker:
        model, workload, competitor, dtype, seq_len, worker_layers = args.worker
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peers' deprecation noise; the row names what ran
            print(json.dumps(worker(model, workload, competitor, dtype, int(seq_len),
                                    None if worker_layers == "all" else int(worker_layers), repeats, args.peak_gflops)))
        return 0
    env = per_case_environment("bench_real_configs")
    if env is None:
        return 2
    env["peak_gflops"] = args.peak_gflops
    out_dir = args.out or report.default_out_dir(CPU)
    rows: list[dict] = []
    for model, seq_len in lengths:
        for workload in workloads:
            for dtype in dtypes:
                for competitor in args.competitors:
                    case = _case(model, workload, competitor, dtype, seq_len, layers)
                    row = run_in_fresh_process("benchmarks.bench_real_configs", [
                        model, workload, competitor, dtype, str(seq_len), "all" if layers is None else str(layers),
                        "--size", args.size, "--repeats", str(repeats), "--peak-gflops", str(args.peak_gflops)], case)
                    row = {column: row.get(column, "") for column in COLUMNS}
                    row.update(model=model, status=row["status"] or ERROR)
                    rows.append(row)
                    add_ratios(rows)
                    report.write_suite(out_dir, SUITE, rows, env, columns=COLUMNS, rows_key=SUITE)  # every finished row is on disk
                    print(f"  {model} L={seq_len} {workload} {dtype} {competitor}: {row['status']} {row['step_ms']} ms",
                          flush=True)
    report.write_table(out_dir, SUITE, COLUMNS, rows, SHOWN, [
        f"{SUITE}: {env['cpu']}, {env['cpu_threads']} threads, torch {env['torch']}, transformers {env['transformers']}, "
        f"peak {args.peak_gflops:g} GFLOP/s, {repeats} repeat(s), {env['date_utc']} UTC"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
