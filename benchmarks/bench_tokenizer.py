"""Tokenizer speed: batch encoding of a block of text, ours vs transformers' slow and fast tokenizers.

    python -m benchmarks --suite tokenizer [--size small|full] [--out DIR]

The text is English prose that ships with Python (pydoc_data's language-reference topics),
followed by the standard library's own sources until the size is reached (small: 1 MB, full:
10 MB), split at blank lines into texts. A BPE sentencepiece model is trained on its start with
``ReformerTokenizer.train`` and saved; every tokenizer loads that same spiece.model:

- ours: ``reformer_kernels.ReformerTokenizer`` (sentencepiece, batched over all cores);
- transformers fast: ``transformers.ReformerTokenizer`` (tokenizers, Rust, parallel);
- transformers slow: ``SentencePieceBackend`` (Python + sentencepiece, one text at a time), the
  slow path transformers v5 keeps for sentencepiece models;
- ours ByteTokenizer (enwik8 scheme), for scale.

Two modes: "lists" (one call on all texts, ids as lists) and "tensors" (batches of 256 texts,
padding=True, truncation to 1024, return_tensors="pt"). Prints a table and writes
bench-results/<device-name>/tokenizer.csv (or --out).
"""
from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import sysconfig
import tempfile
import time

import torch

from reformer_kernels.tokenization import ByteTokenizer, ReformerTokenizer

from .report import default_out_dir, environment, version, write_table

# A full-size call takes seconds, so one is enough there; small calls take the median of three.
SIZES = {"small": dict(megabytes=1, vocab_size=4000, repeats=3), "full": dict(megabytes=10, vocab_size=16000, repeats=1)}
BATCH, MAX_LENGTH = 256, 1024
COLUMNS = (
    "tokenizer", "mode", "text_mb", "texts", "seconds", "mb_per_s", "tokens", "tokens_per_s",
    "speedup_vs_transformers_fast", "same_ids_as_transformers_fast",
    "device", "cpu", "threads", "python", "torch", "transformers", "tokenizers", "sentencepiece", "commit", "date_utc",
)


def corpus(megabytes: float) -> list[str]:
    """Texts (paragraphs) of about ``megabytes`` MB of UTF-8: English prose first, then Python sources."""
    import pydoc_data.topics

    budget = int(megabytes * 1e6)
    blocks = [pydoc_data.topics.topics[key] for key in sorted(pydoc_data.topics.topics)]
    stdlib = sysconfig.get_paths()["stdlib"]
    sources = (p for p in sorted(glob.glob(os.path.join(stdlib, "**", "*.py"), recursive=True)) if "site-packages" not in p)
    texts, size = [], 0
    while size < budget:
        if not blocks:
            with open(next(sources), encoding="utf-8", errors="replace") as f:
                blocks.append(f.read())
        block = blocks.pop(0)
        for paragraph in block.split("\n\n"):
            if paragraph.strip() and size < budget:
                texts.append(paragraph)
                size += len(paragraph.encode("utf-8"))
    return texts


def competitors(folder: str) -> dict:
    """name -> tokenizer; the transformers ones only when transformers is installed."""
    found = {"ours": ReformerTokenizer.from_pretrained(folder, pad_token="<pad>")}
    try:
        import transformers
        from transformers.tokenization_utils_sentencepiece import SentencePieceBackend
    except ImportError:
        print("transformers is not installed: measuring ours only (pip install transformers protobuf)")
    else:
        found["transformers fast"] = transformers.ReformerTokenizer.from_pretrained(folder, pad_token="<pad>")
        found["transformers slow"] = SentencePieceBackend(
            vocab_file=os.path.join(folder, "spiece.model"), eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
        )
    found["ours ByteTokenizer"] = ByteTokenizer()
    return found


def encode_lists(tok, texts):
    return tok(texts)["input_ids"]


def encode_tensors(tok, texts):
    return [
        tok(texts[i : i + BATCH], padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")["input_ids"]
        for i in range(0, len(texts), BATCH)
    ]


def measure(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks --suite tokenizer", description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=SIZES, default="small", help="small: 1 MB (< 1 min on 2 cores); full: 10 MB")
    p.add_argument("--out", default=None, help="output folder (default: bench-results/<device-name>/, untracked)")
    args = p.parse_args(argv)
    size = SIZES[args.size]
    cpu = torch.device("cpu")
    env = environment(cpu)
    shared = {
        "device": "cpu", "cpu": env["cpu"], "threads": os.cpu_count(), "python": env["python"], "torch": env["torch"],
        "transformers": env["transformers"], "tokenizers": version("tokenizers"),
        "sentencepiece": version("sentencepiece"), "commit": env["reformer_kernels_commit"], "date_utc": env["date_utc"],
    }

    texts = corpus(size["megabytes"])
    megabytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    print(f"{megabytes:.2f} MB in {len(texts)} texts; training a {size['vocab_size']}-piece BPE model ...")
    lines = (line for t in texts[: len(texts) // 2] for line in t.splitlines())
    trained = ReformerTokenizer.train(lines, vocab_size=size["vocab_size"], progress=False, input_sentence_size=200_000)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        trained.save_pretrained(folder)
        tokenizers = competitors(folder)
        reference = {}
        for mode, fn in (("lists", encode_lists), ("tensors", encode_tensors)):
            for name, tok in tokenizers.items():
                seconds, out = measure(lambda: fn(tok, texts), size["repeats"])
                if mode == "lists":
                    tokens = sum(map(len, out))
                    reference.setdefault(name, out)
                else:
                    tokens = int(sum(int(t.ne(tok.pad_token_id).sum()) for t in out))
                rows.append({
                    "tokenizer": name, "mode": mode, "text_mb": round(megabytes, 3), "texts": len(texts),
                    "seconds": round(seconds, 4), "mb_per_s": round(megabytes / seconds, 3), "tokens": tokens,
                    "tokens_per_s": round(tokens / seconds), **shared,
                })
                print(f"  {mode:<8} {name:<20} {seconds:8.3f} s")
    fast = reference.get("transformers fast")
    for row in rows:
        base = next((r for r in rows if r["mode"] == row["mode"] and r["tokenizer"] == "transformers fast"), None)
        row["speedup_vs_transformers_fast"] = round(base["seconds"] / row["seconds"], 2) if base else ""
        ids = reference[row["tokenizer"]]
        same = fast is not None and "Byte" not in row["tokenizer"]
        row["same_ids_as_transformers_fast"] = round(sum(a == b for a, b in zip(ids, fast)) / len(fast), 4) if same else ""

    shown = ("tokenizer", "mode", "seconds", "mb_per_s", "tokens_per_s", "speedup_vs_transformers_fast", "same_ids_as_transformers_fast")
    header = [
        f"cpu: {env['cpu']} ({os.cpu_count()} threads), torch {env['torch']}, transformers {env['transformers']}, "
        f"tokenizers {shared['tokenizers']}, sentencepiece {shared['sentencepiece']}, commit {shared['commit']}",
        f"text: {megabytes:.2f} MB, {len(texts)} texts; tensors mode: batches of {BATCH}, max_length {MAX_LENGTH}",
    ]
    write_table(args.out or default_out_dir(cpu), "tokenizer", COLUMNS, rows, shown, header)
    return 0

if __name__ == "__main__":
    sys.exit(main())
