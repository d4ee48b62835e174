"""Generation speed: milliseconds per new token of greedy ``generate``, ours with the cache
(use_cache=True), ours with a full forward per token (use_cache=False) and transformers'
ReformerModelWithLMHead.generate (its own cached decoding), all with the same weights.

    python -m benchmarks --suite generate [--size small|full] [--repeats N] [--out DIR]

Model: hidden 256 = 4 heads of 64, feed-forward 1024, vocab 320, 4 layers local/LSH/local/LSH,
2 hashes, chunk 64, causal, axial positions (64, 64), dropout 0, eval, float32, on the CPU.
--size small: prompts of 256 and 1024 tokens; full: 1024 and 3072; batch 1 and 4; 32 new tokens.

Each repeat runs the three generators one after another on the same prompt (interleaved, so the
machine's drift is shared), after one uncounted warm-up round, and the table shows each one's
median time per new token, the prompt's forward included (every generator runs one). "same_tokens_as_full_forwards"
says whether the tokens equal ours with use_cache=False (a model with an LSH layer below another
layer is not prefix-stable beyond one chunk, so cached greedy tokens may differ from recompute
ones there; see ReformerModel.forward). "cache_mb" is our ReformerDecodingCache's size, allocated
once for prompt + new tokens. Writes bench-results/<device-name>/generate.csv (or --out).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import torch

from reformer_kernels import models

from .report import default_out_dir, environment, write_table

SIZES = {"small": [256, 1024], "full": [1024, 3072]}
BATCHES, NEW_TOKENS = (1, 4), 32
CONFIG = dict(
    hidden_size=256, num_attention_heads=4, attention_head_size=64, feed_forward_size=1024, vocab_size=320,
    attn_layers=["local", "lsh", "local", "lsh"], num_hashes=2, lsh_attn_chunk_length=64, local_attn_chunk_length=64,
    is_decoder=True, axial_pos_shape=[64, 64], axial_pos_embds_dim=[64, 192], max_position_embeddings=4096,
    hidden_dropout_prob=0.0, lsh_attention_probs_dropout_prob=0.0, local_attention_probs_dropout_prob=0.0, hash_seed=0,
    pad_token_id=0, eos_token_id=None,
)
COLUMNS = (
    "generator", "batch", "prompt_len", "new_tokens", "ms_per_token", "speedup_vs_full_forwards",
    "speedup_vs_transformers", "same_tokens_as_full_forwards", "cache_mb", "repeats",
    "device", "cpu", "threads", "torch", "transformers", "commit", "date_utc",
)


def cache_megabytes(model, prompt: torch.Tensor) -> float:
    with torch.no_grad():
        cache = models.ReformerDecodingCache(capacity=prompt.shape[1] + NEW_TOKENS)
        model(input_ids=prompt, past_buckets_states=cache, use_cache=True)
    tensors = [cache.attention_mask] + [t for layer in cache.layers for t in (layer.keys, layer.values)]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks --suite generate", description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=SIZES, default="small", help="small: prompts 256, 1024; full: 1024, 3072")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds per case (median)")
    p.add_argument("--out", default=None, help="output folder (default: bench-results/<device-name>/, not tracked by git)")
    args = p.parse_args(argv)
    cpu = torch.device("cpu")
    env = environment(cpu)
    shared = {"device": "cpu", "cpu": env["cpu"], "threads": torch.get_num_threads(), "torch": env["torch"],
              "transformers": env["transformers"], "commit": env["reformer_kernels_commit"], "date_utc": env["date_utc"]}
    torch.manual_seed(0)
    ours = models.ReformerModelWithLMHead(models.ReformerConfig(**CONFIG)).eval()
    generators = {
        "ours use_cache=True": lambda ids: ours.generate(ids, NEW_TOKENS, use_cache=True),
        "ours use_cache=False": lambda ids: ours.generate(ids, NEW_TOKENS, use_cache=False),
    }
    try:
        import transformers
    except ImportError:
        print("transformers is not installed: measuring ours only")
    else:
        transformers.utils.logging.set_verbosity_error()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = transformers.ReformerModelWithLMHead(transformers.ReformerConfig(**CONFIG)).eval()
        theirs.load_state_dict(ours.state_dict(), strict=False)
        generators["transformers"] = lambda ids: theirs.generate(
            ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, use_cache=True, pad_token_id=0,
        )

    rows = []
    for prompt_len in SIZES[args.size]:
        for batch in BATCHES:
            prompt = torch.randint(1, CONFIG["vocab_size"], (batch, prompt_len))
            times = {name: [] for name in generators}
            tokens = {}
            for round_ in range(args.repeats + 1):  # round 0 warms up and is not counted
                for name, generate in generators.items():
                    start = time.perf_counter()
                    with torch.no_grad():
                        tokens[name] = generate(prompt)
                    if round_:
                        times[name].append(time.perf_counter() - start)
            reference = tokens["ours use_cache=False"]
            case = []
            for name in generators:
                ms = statistics.median(times[name]) * 1e3 / NEW_TOKENS
                case.append({
                    "generator": name, "batch": batch, "prompt_len": prompt_len, "new_tokens": NEW_TOKENS,
                    "ms_per_token": round(ms, 2), "same_tokens_as_full_forwards": bool(torch.equal(tokens[name], reference)),
                    "cache_mb": round(cache_megabytes(ours, prompt), 2) if name == "ours use_cache=True" else "",
                    "repeats": args.repeats, **shared,
                })
            by_name = {row["generator"]: row["ms_per_token"] for row in case}
            for row in case:
                row["speedup_vs_full_forwards"] = round(by_name["ours use_cache=False"] / row["ms_per_token"], 2)
                row["speedup_vs_transformers"] = round(by_name["transformers"] / row["ms_per_token"], 2) if "transformers" in by_name else ""
                print(f"  L={prompt_len:<5} B={batch}  {row['generator']:<22} {row['ms_per_token']:9.2f} ms/token")
            rows.extend(case)

    shown = ("generator", "batch", "prompt_len", "ms_per_token", "speedup_vs_full_forwards", "speedup_vs_transformers",
             "same_tokens_as_full_forwards", "cache_mb")
    header = [f"cpu: {env['cpu']} ({shared['threads']} threads), torch {env['torch']}, transformers {env['transformers']}, "
              f"commit {shared['commit']}; {NEW_TOKENS} new tokens, median of {args.repeats} interleaved rounds"]
    write_table(args.out or default_out_dir(cpu), "generate", COLUMNS, rows, shown, header)
    return 0

if __name__ == "__main__":
    sys.exit(main())
