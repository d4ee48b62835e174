"""Memory per rank of FSDP2 training against the number of processes: a causal Reformer LM with
``fully_shard`` on each reversible layer and on the model, trained with AdamW in 1, 2 and 4
processes on the CPU (gloo), beside the same model without FSDP in one process.

    python -m benchmarks --suite fsdp [--size small|full] [--steps N] [--out DIR]

Model: hidden 512 = 8 heads of 64, feed-forward 2048, 4 layers local/LSH alternating, L = 256
(--size small, 16M parameters); hidden 1024 = 16 heads of 64, feed-forward 4096, 8 layers, L = 1024
(--size full, 106M parameters). Vocab 2000, batch 1 per rank, float32, dropout 0, 2 hashes, chunk 64.
Parameters, gradients and the optimizer's two moments (16 bytes per parameter in all) outweigh the
activations, which the reversible layers keep small, and most parameters are in the layers, which
FSDP gathers one at a time (the model's own: embeddings, LM head, final LayerNorm, stay gathered
from its forward to the end of its backward, as FSDP does for the root).

Each rank builds the model on the meta device, shards it (each layer, then the model),
materializes only its shards and initializes them (``post_init``), so a whole copy of the model
never exists in any process; the one-process row without FSDP builds it on the CPU directly.

Per row, the largest over the ranks: state_mb, the bytes the rank holds of parameters, gradients
and AdamW's moments after the last step (exact: the local shards' sizes); peak_rss_mb, the peak
resident memory that building the model and training it --steps steps adds to the process, measured
on a second build after a first one (workers.peak_rss_bytes: Linux VmHWM, reset before it, so every
byte counts, gloo's buffers and the gathered layers included); live_peak_mb, the same in processes
run with MALLOC_MMAP_THRESHOLD_=131072, where the resident memory follows the bytes alive at once
(glibc's default keeps freed blocks resident); step_ms, the median step time. Each process runs
cores / processes threads (at least one), so step times are no speedup measure on a small machine.
Writes fsdp.csv/.json to bench-results/<cpu-name>/ (or --out) and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from unittest import mock

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from . import report
from .workers import CPU, LIVE_MEMORY_ENV, peak_rss_bytes

SUITE = "fsdp"
SIZES = {
    "small": dict(hidden=512, heads=8, layers=4, vocab=2000, seq_len=256),
    "full": dict(hidden=1024, heads=16, layers=8, vocab=2000, seq_len=1024),
}
WORLD_SIZES = (1, 2, 4)
COLUMNS = ("mode", "world_size", "params", "state_mb", "peak_rss_mb", "live_peak_mb", "step_ms", "threads", "size",
           "layers", "hidden", "vocab", "seq_len", "steps")
SHOWN = ("mode", "world_size", "params", "state_mb", "peak_rss_mb", "live_peak_mb", "step_ms", "threads")


def config(size: str):
    from reformer_kernels.models import ReformerConfig

    shape = SIZES[size]
    hidden, layers = shape["hidden"], shape["layers"]
    return ReformerConfig(
        vocab_size=shape["vocab"], hidden_size=hidden, num_attention_heads=shape["heads"], attention_head_size=64,
        feed_forward_size=4 * hidden, attn_layers=(["local", "lsh"] * layers)[:layers], num_hashes=2,
        lsh_attn_chunk_length=64, local_attn_chunk_length=64, max_position_embeddings=shape["seq_len"],
        axial_pos_shape=[64, shape["seq_len"] // 64], axial_pos_embds_dim=[hidden // 4, hidden - hidden // 4],
        is_decoder=True, hidden_dropout_prob=0.0, lsh_attention_probs_dropout_prob=0.0,
        local_attention_probs_dropout_prob=0.0,
    )


def local_bytes(tensor: torch.Tensor) -> int:
    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return local.numel() * local.element_size()


def build(size: str, sharded: bool) -> torch.nn.Module:
    from reformer_kernels.models import ReformerModelWithLMHead

    torch.manual_seed(0)
    if not sharded:
        return ReformerModelWithLMHead(config(size)).train()
    with torch.device("meta"):
        model = ReformerModelWithLMHead(config(size))
    for layer in model.reformer.encoder.layers:
        fully_shard(layer)
    fully_shard(model)
    model.to_empty(device=CPU)
    with warnings.catch_warnings():
        # each rank draws its shards from its own generator: random weights all the same for memory
        warnings.filterwarnings("ignore", "DTensor random operators may not have complete support")
        model.post_init()
    return model.train()


def train(size: str, sharded: bool, steps: int, row: dict) -> None:
    """Build the model, train it ``steps`` steps, and fill ``row`` (see the module's docstring)."""
    model = build(size, sharded)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if sharded else (0, 1)
    shape = SIZES[size]
    ids = torch.randint(0, shape["vocab"], (1, shape["seq_len"]), generator=torch.Generator().manual_seed(rank))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        times.append((time.perf_counter() - start) * 1e3)
    params = list(model.parameters())
    state = params + [p.grad for p in params if p.grad is not None]
    state += [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    row.update(
        mode="fsdp" if sharded else "no fsdp", world_size=world_size, params=sum(p.numel() for p in params),
        state_mb=round(sum(local_bytes(t) for t in state) / 2**20, 1), step_ms=round(statistics.median(times), 1),
        threads=torch.get_num_threads(), size=size, layers=shape["layers"], hidden=shape["hidden"], vocab=shape["vocab"],
        seq_len=shape["seq_len"], steps=steps,
    )


def measure(size: str, sharded: bool, steps: int) -> dict:
    """This process's row; its peak is what building and training the model adds to the resident
    memory, taken on a second build (workers.peak_rss_bytes)."""
    row: dict = {}
    peak = peak_rss_bytes(lambda: train(size, sharded, steps, row))
    return row | {"peak_rss_mb": round(peak / 2**20, 1)}


def rank_process(rank: int, world_size: int, folder: str, size: str, steps: int, sharded: bool) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    if not sharded:
        row = measure(size, False, steps)
    else:
        dist.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank, world_size=world_size)
        try:
            row = measure(size, True, steps)
        finally:
            dist.destroy_process_group()
    with open(os.path.join(folder, f"rank{rank}.json"), "w") as f:
        json.dump(row, f)


def spawned_row(world_size: int, size: str, steps: int, sharded: bool, env: dict[str, str]) -> dict:
    """The row of ``world_size`` fresh processes started with ``env`` added to the environment:
    the rank with the largest peak, and the largest state."""
    with mock.patch.dict(os.environ, env), tempfile.TemporaryDirectory() as folder:
        mp.spawn(rank_process, args=(world_size, folder, size, steps, sharded), nprocs=world_size, join=True)
        ranks = []
        for rank in range(world_size):
            with open(os.path.join(folder, f"rank{rank}.json")) as f:
                ranks.append(json.load(f))
    return max(ranks, key=lambda row: row["peak_rss_mb"]) | {"state_mb": max(row["state_mb"] for row in ranks)}


def measured_row(world_size: int, size: str, steps: int, sharded: bool) -> dict:
    """One row: measured under the default malloc, then again for live_peak_mb."""
    measured = spawned_row(world_size, size, steps, sharded, {})
    return measured | {"live_peak_mb": spawned_row(world_size, size, steps, sharded, LIVE_MEMORY_ENV)["peak_rss_mb"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks --suite {SUITE}", description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="full")
    p.add_argument("--steps", type=int, default=3, help="training steps per row (default 3; step_ms is their median)")
    p.add_argument("--out", default=None, help="output folder (default: bench-results/<cpu-name>/, untracked)")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error(f"--steps must be at least 1, got {args.steps}")
    if not os.path.exists("/proc/self/clear_refs"):
        p.error("needs Linux (/proc/self/clear_refs) to measure the peak resident memory of each process")
    env = report.environment(CPU)
    out_dir = args.out or report.default_out_dir(CPU)
    rows: list[dict] = []
    for world_size, sharded in ((1, False), *((n, True) for n in WORLD_SIZES)):
        rows.append(measured_row(world_size, args.size, args.steps, sharded))
        report.write_suite(out_dir, SUITE, rows, env, columns=COLUMNS, rows_key=SUITE)  # every finished row is on disk
        print(f"  {rows[-1]['mode']}, {world_size} process(es): {rows[-1]['peak_rss_mb']} MB per rank", flush=True)
    report.write_table(out_dir, SUITE, COLUMNS, rows, SHOWN, [
        f"{SUITE} (--size {args.size}): {env['cpu']}, {os.cpu_count()} cores, torch {env['torch']}, "
        f"{args.steps} steps, {env['date_utc']} UTC; memory per rank, the largest over the ranks"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
