"""The `reformer-kernels` command."""
from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys


def _bench(argv: list[str]) -> int:
    """``python -m benchmarks ARGS`` run in the source checkout this package was imported from: the
    suite lives next to the package, not in the wheel, and ``python -m`` finds it in its working
    folder. An ``--out`` relative to the caller's folder is made absolute first, so that the results
    land where the caller meant."""
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.isfile(os.path.join(checkout, "benchmarks", "__main__.py")):
        raise SystemExit(
            f"reformer-kernels bench: {checkout} has no benchmarks/ folder: the suite ships with the source, not the wheel; "
            "run it from a source checkout (pip install -e '.[bench]')"
        )
    args = []
    for arg in argv:
        if args[-1:] == ["--out"]:
            arg = os.path.abspath(arg)
        elif arg.startswith("--out="):
            arg = "--out=" + os.path.abspath(arg[len("--out="):])
        args.append(arg)
    with subprocess.Popen([sys.executable, "-m", "benchmarks", *args], cwd=checkout) as suite:
        while True:
            try:
                return suite.wait()
            except KeyboardInterrupt:
                # The suite got the same Ctrl-C: it keeps the rows it finished and exits 130.
                continue


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def _add_train_arguments(train: argparse.ArgumentParser) -> None:
    """Options left unset take the data source's defaults (reformer_kernels.training) or, with
    --resume, the checkpoint's values."""
    data = train.add_mutually_exclusive_group()
    data.add_argument("--text", metavar="FILE", help="train a language model on this UTF-8 text file")
    data.add_argument("--task", choices=["duplication"], help="the paper's duplication task (sequences 0 w 0 w)")
    train.add_argument("--out", metavar="DIR", required=True, help="checkpoint folder (new, or the run to --resume)")
    train.add_argument("--resume", action="store_true", help="continue the run saved in DIR (up to --steps)")
    train.add_argument("--tokenizer", help="'byte' (default), 'sentencepiece' (trained on --text) or a saved ReformerTokenizer folder")
    train.add_argument("--vocab-size", type=_positive_int, help="sentencepiece pieces (8000), or the task's symbols (32)")
    train.add_argument("--seq-len", type=_positive_int, help="tokens per training sequence (text 256, task 64)")
    train.add_argument("--batch-size", type=_positive_int, help="sequences per step (text 8, task 16)")
    train.add_argument("--steps", type=_positive_int, help="total optimizer steps (text 1000, task 300)")
    train.add_argument("--lr", type=float, help="AdamW learning rate (1e-3)")
    train.add_argument("--heads", type=_positive_int, help="attention heads (text 4, task 2)")
    train.add_argument("--head-dim", type=_positive_int, help="size of a head (32)")
    train.add_argument("--chunk-len", type=_positive_int, help="attention chunk length (text 32, task 8)")
    train.add_argument("--layers", type=lambda s: tuple(s.split(",")), dest="attn_layers", metavar="KINDS",
                       help="comma-separated attention kinds, one per layer (text local,lsh,local,lsh; task lsh,lsh)")
    train.add_argument("--num-hashes", type=_positive_int, help="LSH hash rounds in training (2)")
    train.add_argument("--seed", type=int, help="seed of the weights, the data and the hashing (0)")
    train.add_argument("--device", default="auto", help="'auto' (CUDA when present), 'cpu' or 'cuda'")
    train.add_argument("--save-every", type=int, default=0, metavar="N", help="also save every N steps (default: at the end and on Ctrl-C)")
    train.add_argument("--eval-sequences", type=_positive_int, default=1024, metavar="N",
                       help="fresh sequences of the task's final accuracy evaluation (1024)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_generate_arguments(generate: argparse.ArgumentParser) -> None:
    generate.add_argument("dir", metavar="DIR", help="a checkpoint folder of reformer-kernels train")
    prompt = generate.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="the text to continue (a task's model: token ids, e.g. '0 5 3'); printed before the continuation")
    prompt.add_argument("--prompt-file", metavar="PATH",
                        help="a UTF-8 file holding the text to continue (a long context: up to the model's positions); "
                        "only the continuation is printed")
    generate.add_argument("--max-new-tokens", type=_positive_int, default=20, help="tokens to add (20)")
    generate.add_argument("--do-sample", action="store_true", help="sample instead of the greedy argmax")
    generate.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (1.0)")
    generate.add_argument("--top-k", type=_positive_int, help="sample from the k most likely tokens")
    generate.add_argument("--top-p", type=float, help="sample from the nucleus of probability p")
    generate.add_argument("--seed", type=int, default=0,
                          help="seed of the sampling and, for a model trained without a fixed hash_seed, of its LSH rotations (0)")
    generate.add_argument("--device", default="auto", help="'auto' (CUDA when present), 'cpu' or 'cuda'")
    generate.add_argument("--threads", type=_positive_int, help="CPU threads for torch (default: torch's; 1 is faster on a busy machine)")


def _train(args: argparse.Namespace) -> int:
    from . import training

    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(training.TrainingArguments)}
    try:
        result = training.train(training.TrainingArguments(**options), resume=args.resume, progress=not args.quiet)
    except (ValueError, OSError, training.DivergedError) as error:
        raise SystemExit(f"reformer-kernels train: {error}") from None
    except KeyboardInterrupt:  # the second Ctrl-C: the folder keeps its last checkpoint
        print(f"reformer-kernels train: interrupted without saving; --out {args.out!r} keeps its last checkpoint", file=sys.stderr)
        return 130
    loss = f", loss {result.losses[-1]:.4f}" if result.losses else ""
    if result.interrupted:
        print(f"interrupted: saved step {result.step}{loss} to {result.out}; "
              f"continue with: reformer-kernels train --out {result.out} --resume")
        return 130  # the shell's code for a run ended by Ctrl-C: `train && generate` does not go on
    print(f"saved step {result.step}{loss} to {result.out}")
    if result.accuracy is not None:
        print("accuracy on the second half of fresh 0w0w sequences:")
        print("| eval hashes | accuracy |\n|---|---|")
        for n, value in result.accuracy.items():
            print(f"| {n} | {value:.4f} |")
    return 0


def _generate(args: argparse.Namespace) -> int:
    """Print the continuation as its tokens come (stdout, flushed per piece), then the prompt's
    prefill time and the decoding rate (stderr, so that stdout holds only the text)."""
    import torch

    from . import training

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        stream = training.generate_stream(
            args.dir, args.prompt, args.max_new_tokens, prompt_file=args.prompt_file, do_sample=args.do_sample,
            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed, device=args.device,
        )
    except (ValueError, OSError) as error:
        raise SystemExit(f"reformer-kernels generate: {error}") from None
    if args.prompt is not None:
        print(stream.prompt_text, end="", flush=True)
    interrupted = False
    try:
        for piece in stream:
            print(piece, end="", flush=True)
    except KeyboardInterrupt:
        interrupted = True
    print(flush=True)
    report = f"prompt {stream.prompt_tokens} tokens"
    if stream.new_tokens:
        report += (f": prefill {stream.prefill_s:.2f} s ({stream.prompt_tokens / stream.prefill_s:.0f} tokens/s)"
                   f"; {stream.new_tokens} new tokens")
    if stream.decode_tokens_per_s is not None:
        report += f": decoding {stream.decode_tokens_per_s:.1f} tokens/s"
    print(report + (" (interrupted)" if interrupted else ""), file=sys.stderr, flush=True)
    return 130 if interrupted else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="reformer-kernels", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions, devices, backends and the ops each implements")
    commands.add_parser("bench", help="benchmark ops and models against transformers, reformer-pytorch and SDPA "
                        "(python -m benchmarks in the source checkout; bench --help lists its options)")
    _add_train_arguments(commands.add_parser("train", help="train a causal Reformer LM on a text file or the duplication task"))
    _add_generate_arguments(commands.add_parser("generate", help="continue a prompt with a model saved by train"))
    argv = sys.argv[1:] if argv is None else argv
    # The suite parses its own options (benchmarks/run.py), in its own process.
    if argv[:1] == ["bench"]:
        return _bench(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "info":
        from . import info

        print(info())
    elif args.command == "train":
        return _train(args)
    elif args.command == "generate":
        return _generate(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
