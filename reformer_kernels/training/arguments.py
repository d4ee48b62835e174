"""The arguments of a run (``TrainingArguments``): the defaults of each data source, the checks
that name the flag at fault, what a resumed run may change, and the device. Separate so that every
"--flag value: pass ..." message of ``reformer-kernels train`` is in one place.
"""
from __future__ import annotations

import dataclasses
import os

import torch

TASKS = ("duplication",)
TOKENIZERS = ("byte", "sentencepiece")

# Defaults per data source; the duplication ones are the size that reaches >= 95 % in minutes on
# two CPU cores (README, "Training").
_DUPLICATION_DEFAULTS = dict(
    vocab_size=32, seq_len=64, batch_size=16, steps=300, lr=1e-3, heads=2, head_dim=32, chunk_len=8,
    attn_layers=("lsh", "lsh"), num_hashes=2,
)
_TEXT_DEFAULTS = dict(
    vocab_size=8000, seq_len=256, batch_size=8, steps=1000, lr=1e-3, heads=4, head_dim=32, chunk_len=32,
    attn_layers=("local", "lsh", "local", "lsh"), num_hashes=2,
)
# What a resumed run may change; every other argument is fixed by the checkpoint.
_RESUMABLE = ("out", "steps", "device", "save_every", "eval_sequences")


@dataclasses.dataclass
class TrainingArguments:
    """One training run. ``None`` means the default of the data source (``_TEXT_DEFAULTS`` or
    ``_DUPLICATION_DEFAULTS``); on resume, the checkpoint's value.

    out: the checkpoint folder. text: a UTF-8 text file, or task: "duplication" (exactly one of
    the two). tokenizer: "byte" (default), "sentencepiece" (trained on ``text`` with
    ``vocab_size`` pieces) or the folder of a saved ReformerTokenizer. vocab_size: sentencepiece
    pieces, or the duplication task's number of symbols (0 is the separator). steps: the total
    number of optimizer steps (a resumed run goes on up to it). device: "auto" (CUDA when
    present) or a torch device. save_every: also save a checkpoint every that many steps (0: only
    at the end and on Ctrl-C). eval_sequences: fresh sequences of the task's final evaluation.
    """

    out: str
    text: str | None = None
    task: str | None = None
    tokenizer: str | None = None
    vocab_size: int | None = None
    seq_len: int | None = None
    batch_size: int | None = None
    steps: int | None = None
    lr: float | None = None
    heads: int | None = None
    head_dim: int | None = None
    chunk_len: int | None = None
    attn_layers: tuple[str, ...] | None = None
    num_hashes: int | None = None
    seed: int | None = None
    device: str = "auto"
    save_every: int = 0
    eval_sequences: int = 1024


def given_arguments(args: TrainingArguments) -> dict:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if getattr(args, f.name) is not None}


def resolve_arguments(args: TrainingArguments) -> TrainingArguments:
    """Check a new run's arguments and fill in the defaults of its data source."""
    if (args.text is None) == (args.task is None):
        raise ValueError("pass exactly one of --text FILE (train on a text file) and --task duplication (the paper's task)")
    if args.task is not None:
        if args.task not in TASKS:
            raise ValueError(f"--task {args.task!r} is not a task: pass one of {', '.join(TASKS)}")
        if args.tokenizer is not None:
            raise ValueError(f"--tokenizer {args.tokenizer!r} does not apply to --task {args.task}: its tokens are symbol ids")
        defaults = _DUPLICATION_DEFAULTS
    else:
        if not os.path.isfile(args.text):
            raise ValueError(f"--text {args.text!r} is not a file: pass the path of a UTF-8 text file")
        tokenizer = "byte" if args.tokenizer is None else args.tokenizer
        if tokenizer not in TOKENIZERS and not os.path.isdir(tokenizer):
            raise ValueError(
                f"--tokenizer {tokenizer!r}: pass 'byte', 'sentencepiece' (trained on the text) or the folder of a saved ReformerTokenizer"
            )
        defaults = dict(_TEXT_DEFAULTS, tokenizer=tokenizer)
    values = {**defaults, "seed": 0, **given_arguments(args)}
    values["attn_layers"] = tuple(values["attn_layers"])
    resolved = TrainingArguments(**values)
    for name in ("vocab_size", "seq_len", "batch_size", "steps", "heads", "head_dim", "chunk_len", "num_hashes"):
        value = getattr(resolved, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"--{name.replace('_', '-')} {value!r}: pass a positive integer")
    if not (isinstance(resolved.lr, (int, float)) and resolved.lr > 0):
        raise ValueError(f"--lr {resolved.lr!r}: pass a positive learning rate")
    if resolved.task is not None and (resolved.vocab_size < 2 or resolved.seq_len < 4 or resolved.seq_len % 2):
        raise ValueError(
            f"--task duplication needs --vocab-size >= 2 and an even --seq-len >= 4, got {resolved.vocab_size} and {resolved.seq_len}"
        )
    if resolved.seq_len < resolved.chunk_len:
        raise ValueError(f"--seq-len {resolved.seq_len} < --chunk-len {resolved.chunk_len}: the sequence must hold one chunk")
    check_seed(resolved.seed)
    bad = [k for k in resolved.attn_layers if k not in ("lsh", "local")]
    if bad or not resolved.attn_layers:
        raise ValueError(f"--layers {','.join(resolved.attn_layers)!r}: pass a comma-separated list of 'lsh' and 'local'")
    return resolved



def resumed_arguments(args: TrainingArguments, saved: dict, step: int) -> TrainingArguments:
    given = given_arguments(args)
    for name, value in given.items():
        if name in _RESUMABLE:
            continue
        old = saved[name]
        if (list(value) if name == "attn_layers" else value) != old:
            flag = "--layers" if name == "attn_layers" else f"--{name.replace('_', '-')}"
            raise ValueError(
                f"{flag} {value!r} differs from the checkpoint's {old!r}: drop it to resume, or train into a new --out"
            )
    values = {**saved, **{k: v for k, v in given.items() if k in _RESUMABLE}}
    values["attn_layers"] = tuple(values["attn_layers"])
    if not (isinstance(values["steps"], int) and values["steps"] > step):
        raise ValueError(f"--steps {values['steps']!r}: the checkpoint is at step {step}; pass a larger --steps to train further")
    if values["text"] is not None and not os.path.isfile(values["text"]):
        raise ValueError(f"the run's --text {values['text']!r} is no longer a file: put it back to resume")
    return TrainingArguments(**values)


def check_new_out(out: str) -> None:
    """Check that a new run can make its checkpoint folder ``out``: empty or not there yet, and not
    under a file."""
    if os.path.isdir(out) and os.listdir(out):
        raise ValueError(f"--out {out!r} exists and is not empty: pass --resume to continue its run, or a new --out")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out!r} is a file: pass a folder path")
    above = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(above):
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise ValueError(f"--out {out!r} is under {above!r}, which is a file: pass a path under a folder")


def check_whole_chunks(args: TrainingArguments) -> None:
    """The model pads a sequence to whole chunks, but its positions (max_position_embeddings =
    --seq-len) stop before the padded length. Checked once the data is known (a text shorter than
    --seq-len says so first)."""
    if args.seq_len % args.chunk_len:
        below = args.seq_len - args.seq_len % args.chunk_len
        raise ValueError(
            f"--seq-len {args.seq_len} is not a multiple of --chunk-len {args.chunk_len}: pass --seq-len {below} "
            f"or {below + args.chunk_len}, or a --chunk-len that divides it"
        )


def check_seed(seed: object) -> None:
    """torch.manual_seed takes [-2**63, 2**64) and maps negatives onto large seeds; a seed is an int
    in [0, 2**63 - 1], which every generator (CPU, CUDA) and the data order take as is."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= 2**63 - 1:
        raise ValueError(f"--seed {seed!r}: pass an integer in [0, 2**63 - 1]")


def check_run_options(args: TrainingArguments) -> None:
    """Check the options that a resumed run may change too."""
    if not isinstance(args.save_every, int) or isinstance(args.save_every, bool) or args.save_every < 0:
        raise ValueError(f"--save-every {args.save_every!r}: pass a number of steps, or 0 to save only at the end")
    if not isinstance(args.eval_sequences, int) or isinstance(args.eval_sequences, bool) or args.eval_sequences < 1:
        raise ValueError(f"--eval-sequences {args.eval_sequences!r}: pass a positive number of sequences")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device: pass 'auto', 'cpu' or 'cuda'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r}: no CUDA device is available; pass --device cpu")
    return device
