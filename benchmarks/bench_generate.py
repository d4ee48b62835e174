"""Cached decoding over long contexts: milliseconds per new token of greedy decoding after a prompt
(the prompt's forward excluded), ours (``use_cache=True``) and transformers' ReformerModelWithLMHead
(its own cached decoding), with the same weights.

    python -m benchmarks --suite generate [--size small|full] [--contexts N ...] [--batches B ...]
                                          [--new-tokens N] [--repeats R] [--threads T] [--no-transformers] [--out DIR]
    python -m benchmarks --suite generate --merge RUN1/generate.csv RUN2/generate.csv ... --out DIR

Model: the crime-and-punishment configuration (6 layers local/LSH, hidden 256 = 2 heads of 64,
feed-forward 512, vocab 320, 1 hash, num_buckets [64, 128], chunks of 64, axial positions
(512, 1024)), random weights, hash_seed 0, dropout 0, eval, float32, on the CPU.
--size small: contexts 1K and 4K; full: 1K, 8K, 32K, 128K; batches 1 and 8.

Each case runs the prompt once with the cache (``prefill_s``), then greedy steps one token at a time
through the cache, as ``generate`` does: 2 uncounted, then ``new_tokens`` timed one by one; with
--repeats R, R such rounds per case, the generators interleaved (so the machine's drift is shared).
``ms_per_token`` is the median wall time of the timed steps, ``cpu_ms_per_token`` the process's CPU time per token
(steadier on a shared machine), ``tokens_per_s`` = batch * 1000 / ms_per_token. ``growth_vs_first``:
ms_per_token over this generator's and batch's at the smallest context (the target: <= 1.5 at 128K vs
1K); ``speedup_vs_transformers``: their ms_per_token over ours. ``cache_mb_per_layer``: the bytes of
one layer's cache after the prompt, averaged over the layers (ours: keys, values and, for LSH layers,
the bucket order, allocated for prompt + new tokens; transformers: buckets and hidden states).
Writes bench-results/<device-name>/generate.csv (or --out) and generate_ms_per_token.png, its log-log
plot: wall and CPU ms per token against the context, one line per generator and batch.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
import warnings

import torch

from reformer_kernels import models

from .plots import plot_generate
from .report import default_out_dir, environment, write_table

SIZES = {"small": [1024, 4096], "full": [1024, 8192, 32768, 131072]}
BATCHES, NEW_TOKENS, WARMUP_TOKENS = (1, 8), 16, 2
CONFIG = dict(
    attn_layers=["local", "lsh", "local", "lsh", "local", "lsh"], hidden_size=256, num_attention_heads=2,
    attention_head_size=64, feed_forward_size=512, vocab_size=320, num_hashes=1, num_buckets=[64, 128],
    lsh_attn_chunk_length=64, local_attn_chunk_length=64, is_decoder=True, axial_pos_shape=[512, 1024],
    axial_pos_embds_dim=[64, 192], max_position_embeddings=524288, hidden_dropout_prob=0.0,
    lsh_attention_probs_dropout_prob=0.0, local_attention_probs_dropout_prob=0.0, hash_seed=0, pad_token_id=0,
    eos_token_id=None,
)
COLUMNS = (
    "generator", "batch", "context", "new_tokens", "ms_per_token", "cpu_ms_per_token", "tokens_per_s", "growth_vs_first",
    "speedup_vs_transformers", "cache_mb_per_layer", "prefill_s", "device", "cpu", "threads", "torch", "transformers",
    "commit", "date_utc",
)


def tensor_bytes(obj: object) -> int:
    """Bytes of the tensors an object holds (in its attributes, lists and tuples, recursively)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(item) for item in obj)
    if hasattr(obj, "__dict__"):
        return sum(tensor_bytes(value) for value in vars(obj).values())
    return 0


def cache_mb_per_layer(cache: object) -> float:
    """One layer's cache in MiB, averaged over the layers: ours keeps a list of layer caches,
    transformers' a list of buckets and one of hidden states."""
    if isinstance(cache, models.ReformerDecodingCache):
        layers = len(cache.layers)
        total = tensor_bytes(cache.layers)
    else:
        layers = len(cache.states_cache)
        total = tensor_bytes(cache.buckets_cache) + tensor_bytes(cache.states_cache)
    return total / layers / 2**20


def decode(model, prompt: torch.Tensor, new_tokens: int, cache: object) -> tuple[float, list[float], list[float], object]:
    """Greedy cached decoding: (prompt seconds, wall and CPU seconds of each timed step, the cache after the prompt)."""
    start = time.perf_counter()
    out = model(input_ids=prompt, past_buckets_states=cache, use_cache=True)
    prefill = time.perf_counter() - start
    cache, filled = out.past_buckets_states, cache_mb_per_layer(out.past_buckets_states)
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    wall, cpu = [], []
    for step in range(WARMUP_TOKENS + new_tokens):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = model(input_ids=token, past_buckets_states=cache, use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        if step >= WARMUP_TOKENS:
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        cache = out.past_buckets_states
    return prefill, wall, cpu, filled


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks --suite generate", description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=SIZES, default="small", help="small: contexts 1K, 4K; full: 1K, 8K, 32K, 128K")
    p.add_argument("--contexts", type=int, nargs="+", default=None, help="prompt lengths (instead of --size)")
    p.add_argument("--batches", type=int, nargs="+", default=None, help=f"batch sizes (default {' '.join(map(str, BATCHES))})")
    p.add_argument("--new-tokens", type=int, default=None, help=f"timed new tokens per case (default {NEW_TOKENS})")
    p.add_argument("--repeats", type=int, default=1, help="rounds (prompt + steps) per case, generators interleaved")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--no-transformers", action="store_true", help="measure ours only")
    p.add_argument("--out", default=None, help="output folder (default: bench-results/<device-name>/, not tracked by git)")
    p.add_argument("--merge", nargs="+", metavar="CSV", default=None,
                   help="measure nothing: write the rows of these generate.csv files (separate runs) as one CSV and plot into --out")
    args = p.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out or default_out_dir(torch.device("cpu")))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    contexts = args.contexts or SIZES[args.size]
    new_tokens = args.new_tokens or NEW_TOKENS
    limit = CONFIG["max_position_embeddings"]
    if max(contexts) + WARMUP_TOKENS + new_tokens > limit:
        p.error(f"--contexts: {max(contexts)} + {WARMUP_TOKENS + new_tokens} tokens > the model's {limit} positions")
    cpu = torch.device("cpu")
    env = environment(cpu)
    shared = {"device": "cpu", "cpu": env["cpu"], "threads": torch.get_num_threads(), "torch": env["torch"],
              "transformers": env["transformers"], "commit": env["reformer_kernels_commit"], "date_utc": env["date_utc"]}
    torch.manual_seed(0)
    generators = {"ours": (models.ReformerModelWithLMHead(models.ReformerConfig(**CONFIG)).eval(), models.ReformerDecodingCache)}
    if not args.no_transformers:
        try:
            import transformers
        except ImportError:
            print("transformers is not installed: measuring ours only")
        else:
            transformers.utils.logging.set_verbosity_error()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                theirs = transformers.ReformerModelWithLMHead(transformers.ReformerConfig(**CONFIG)).eval()
            theirs.load_state_dict(generators["ours"][0].state_dict(), strict=False)
            generators["transformers"] = (theirs, lambda capacity: None)

    rows = []
    for batch in args.batches or BATCHES:
        for context in sorted(contexts):
            prompt = torch.randint(1, CONFIG["vocab_size"], (batch, context))
            measured = {name: ([], [], [], 0.0) for name in generators}
            for _ in range(args.repeats):
                for name, (model, new_cache) in generators.items():
                    with torch.no_grad(), warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        prefill, wall, cpu_s, cache_mb = decode(model, prompt, new_tokens, new_cache(context + WARMUP_TOKENS + new_tokens))
                    prefills, walls, cpus, _ = measured[name]
                    measured[name] = (prefills + [prefill], walls + wall, cpus + cpu_s, cache_mb)
            case = []
            for name, (prefills, wall, cpu_s, cache_mb) in measured.items():
                ms, prefill = statistics.median(wall) * 1e3, statistics.median(prefills)
                case.append({
                    "generator": name, "batch": batch, "context": context, "new_tokens": new_tokens, "ms_per_token": round(ms, 3),
                    "cpu_ms_per_token": round(sum(cpu_s) * 1e3 / len(cpu_s), 3), "tokens_per_s": round(batch * 1e3 / ms, 1),
                    "cache_mb_per_layer": round(cache_mb, 3), "prefill_s": round(prefill, 2), **shared,
                })
                print(f"  B={batch} context={context:<7} {name:<13} {ms:9.2f} ms/token  prefill {prefill:.1f} s", flush=True)
            theirs_ms = next((row["ms_per_token"] for row in case if row["generator"] == "transformers"), None)
            for row in case:
                row["speedup_vs_transformers"] = round(theirs_ms / row["ms_per_token"], 2) if theirs_ms else ""
            rows.extend(case)
    add_growth(rows)
    write_results(rows, args.out or default_out_dir(cpu), [
        f"cpu: {env['cpu']} ({shared['threads']} threads), torch {env['torch']}, transformers {env['transformers']}, "
        f"commit {shared['commit']}; median of {args.repeats} x {new_tokens} greedy cached steps after {WARMUP_TOKENS} uncounted, "
        "the prompt's forward excluded"])
    return 0


def add_growth(rows: list[dict]) -> None:
    """growth_vs_first of every row: its ms_per_token over that of the smallest context measured for its generator and batch."""
    for row in rows:
        first = min((r for r in rows if r["generator"] == row["generator"] and int(r["batch"]) == int(row["batch"])),
                    key=lambda r: int(r["context"]))
        row["growth_vs_first"] = round(float(row["ms_per_token"]) / float(first["ms_per_token"]), 2)


def write_results(rows: list[dict], out_dir: str, header: list[str]) -> None:
    """generate.csv, the table printed, and the plot."""
    shown = ("generator", "batch", "context", "ms_per_token", "cpu_ms_per_token", "tokens_per_s", "growth_vs_first",
             "speedup_vs_transformers", "cache_mb_per_layer", "prefill_s")
    write_table(out_dir, "generate", COLUMNS, rows, shown, header)
    print(f"wrote {plot_generate(rows, out_dir)}")


def merge(paths: list[str], out_dir: str) -> int:
    """One generate.csv and plot of the rows of earlier runs (each run keeps its own date, commit and
    threads columns): a case too big to share a process with the others is run alone, then merged."""
    rows = []
    for path in paths:
        if not os.path.isfile(path):
            raise SystemExit(f"--merge {path!r} is not a file: pass the generate.csv files of earlier runs")
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != COLUMNS:
                raise SystemExit(f"--merge {path!r}: not a generate.csv of this version (columns {reader.fieldnames}); rerun it")
            rows.extend(reader)
    rows.sort(key=lambda r: (int(r["batch"]), int(r["context"]), r["generator"]))
    add_growth(rows)
    write_results(rows, out_dir, [f"merged from {', '.join(paths)}"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
