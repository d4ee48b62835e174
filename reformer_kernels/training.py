"""Training a causal Reformer language model, as ``reformer-kernels train`` runs it.

Data is either a text file (tokenized with ``ByteTokenizer`` or a sentencepiece
``ReformerTokenizer``; every step trains on random windows of ``seq_len`` tokens) or the paper's
duplication task (section 5, "synthetic task": sequences 0 w 0 w of random symbols w; the second
w can only be predicted by attending to the first, which LSH attention finds when the hash puts
the matching positions into one bucket).

A checkpoint folder holds ``config.json`` + ``model.safetensors`` (``save_pretrained``, loadable
by transformers), the tokenizer's files, ``trainer_state.json`` (the run's arguments, step, loss
history, tokenizer kind) and ``optimizer.pt`` (AdamW state and the RNG states of the data and of
torch, which draws the hashing rotations), so that a resumed run continues bit for bit as the
uninterrupted one would. ``loss.png`` plots the loss curve when matplotlib is installed.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import threading
import time
from typing import Callable

import torch
from tqdm import tqdm

from .functional import default_num_buckets
from .models import ReformerConfig, ReformerModelWithLMHead
from .tokenization import ByteTokenizer, ReformerTokenizer

TASKS = ("duplication",)
TOKENIZERS = ("byte", "sentencepiece")
EVAL_HASHES = (1, 2, 4, 8)
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
LOSS_PLOT = "loss.png"
ACCURACY_FILE = "accuracy.csv"
# The kind of a task's "tokenizer": the prompt and the output are token ids written as numbers.
IDS = "ids"

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


def _given(args: TrainingArguments) -> dict:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if getattr(args, f.name) is not None}


def _resolve(args: TrainingArguments) -> TrainingArguments:
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
    values = {**defaults, "seed": 0, **_given(args)}
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
    bad = [k for k in resolved.attn_layers if k not in ("lsh", "local")]
    if bad or not resolved.attn_layers:
        raise ValueError(f"--layers {','.join(resolved.attn_layers)!r}: pass a comma-separated list of 'lsh' and 'local'")
    return resolved


# ---- the duplication task -------------------------------------------------------------------


def duplication_batch(batch: int, seq_len: int, vocab_size: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, seq_len) int64 sequences 0 w 0 w, the symbols of w drawn from 1..vocab_size-1 with
    ``generator`` (on its device)."""
    half = seq_len // 2
    w = torch.randint(1, vocab_size, (batch, half - 1), generator=generator, device=generator.device)
    zero = torch.zeros(batch, 1, dtype=torch.long, device=generator.device)
    return torch.cat([zero, w, zero, w], dim=1)


@torch.no_grad()
def duplication_accuracy(model, tokens: torch.Tensor, num_hashes: int) -> float:
    """The fraction of the second w that ``model`` predicts (argmax) in the sequences ``tokens``
    (B, L) of ``duplication_batch``, hashing with ``num_hashes`` rounds (fresh rotations, as the
    paper evaluates a model with more hashes than it was trained with). ``model`` is ours or
    transformers' ReformerModelWithLMHead."""
    half = tokens.shape[1] // 2
    logits = model(tokens, num_hashes=num_hashes).logits
    # Position t predicts token t + 1: positions half .. L-2 predict the second w.
    predicted = logits[:, half:-1].argmax(-1)
    return (predicted == tokens[:, half + 1 :]).float().mean().item()


def model_settings(
    *, vocab_size: int, seq_len: int, heads: int, head_dim: int, chunk_len: int, attn_layers, num_hashes: int,
    pad_token_id: int | None = None, eos_token_id: int | None = None,
) -> dict:
    """ReformerConfig keyword arguments (also valid for transformers' ReformerConfig) of a causal
    LM without dropout: learned positions for ``seq_len`` tokens, feed-forward 2 x hidden,
    ``chunk_len`` for both attention kinds, num_buckets chosen as transformers would for seq_len."""
    hidden = heads * head_dim
    n_buckets = default_num_buckets(seq_len, chunk_len, seq_len)
    return dict(
        vocab_size=vocab_size, hidden_size=hidden, num_attention_heads=heads, attention_head_size=head_dim,
        feed_forward_size=2 * hidden, attn_layers=list(attn_layers), num_hashes=num_hashes,
        num_buckets=list(n_buckets) if isinstance(n_buckets, tuple) else n_buckets,
        lsh_attn_chunk_length=chunk_len, local_attn_chunk_length=chunk_len, max_position_embeddings=seq_len,
        axial_pos_embds=False, is_decoder=True, hidden_dropout_prob=0.0, lsh_attention_probs_dropout_prob=0.0,
        local_attention_probs_dropout_prob=0.0, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
    )


# ---- data -----------------------------------------------------------------------------------


class _DuplicationData:
    def __init__(self, args: TrainingArguments):
        self.args = args

    def batch(self, generator: torch.Generator) -> torch.Tensor:
        return duplication_batch(self.args.batch_size, self.args.seq_len, self.args.vocab_size, generator)


class _TextData:
    """Random windows of seq_len tokens of the whole file's token stream."""

    def __init__(self, ids: torch.Tensor, args: TrainingArguments):
        if ids.numel() < args.seq_len:
            raise ValueError(
                f"--text {args.text!r} has {ids.numel()} tokens, fewer than --seq-len {args.seq_len}: "
                "pass a longer text or a smaller --seq-len"
            )
        self.ids, self.args = ids, args

    def batch(self, generator: torch.Generator) -> torch.Tensor:
        starts = torch.randint(0, self.ids.numel() - self.args.seq_len + 1, (self.args.batch_size,), generator=generator)
        return self.ids[starts[:, None] + torch.arange(self.args.seq_len)]


def encode_text_file(path: str, tokenizer, progress: bool = True) -> torch.Tensor:
    """The file's token stream (int64): its exact bytes for ByteTokenizer; for sentencepiece, each
    line (without its line break, which sentencepiece would turn into a space) followed by EOS."""
    with open(path, "rb") as f:
        data = f.read()
    if isinstance(tokenizer, ByteTokenizer):
        return torch.tensor(tokenizer.encode(data), dtype=torch.long)
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"--text {path!r} is not UTF-8 ({e}): pass a UTF-8 text file or use --tokenizer byte") from None
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    ids = []
    batch = 10_000
    for start in tqdm(range(0, len(lines), batch), desc="tokenizing", unit="block", disable=not progress):
        for row in tokenizer(lines[start : start + batch], return_attention_mask=False)["input_ids"]:
            ids.extend(row + eos)
    return torch.tensor(ids, dtype=torch.long)


def _new_tokenizer(args: TrainingArguments, progress: bool):
    if args.tokenizer == "byte":
        return ByteTokenizer()
    if args.tokenizer == "sentencepiece":
        return ReformerTokenizer.train(args.text, vocab_size=args.vocab_size, progress=progress)
    return ReformerTokenizer.from_pretrained(args.tokenizer)


def load_tokenizer(directory: str):
    """The tokenizer saved in a checkpoint folder: ByteTokenizer, ReformerTokenizer, or None where
    tokens are plain ids (a task, or a folder with no tokenizer files)."""
    config_path = os.path.join(directory, "tokenizer_config.json")
    if os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as f:
            if json.load(f).get("tokenizer_class") == "ByteTokenizer":
                return ByteTokenizer.from_pretrained(directory)
    if any(os.path.isfile(os.path.join(directory, name)) for name in ("spiece.model", "tokenizer.model")):
        return ReformerTokenizer.from_pretrained(directory)
    return None


# ---- checkpoints ----------------------------------------------------------------------------


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device: pass 'auto', 'cpu' or 'cuda'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r}: no CUDA device is available; pass --device cpu")
    return device


def _rng_states(data_generator: torch.Generator, device: torch.device) -> dict:
    states = {"torch": torch.get_rng_state(), "data": data_generator.get_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def _set_rng_states(states: dict, data_generator: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(states["torch"])
    data_generator.set_state(states["data"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def _save(out, args, model, tokenizer, optimizer, data_generator, device, step, losses) -> None:
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    torch.save({"optimizer": optimizer.state_dict(), "rng": _rng_states(data_generator, device)}, os.path.join(out, OPTIMIZER_FILE))
    state = {
        "step": step,
        "tokenizer": IDS if tokenizer is None else "byte" if isinstance(tokenizer, ByteTokenizer) else "sentencepiece",
        "args": {k: v for k, v in dataclasses.asdict(args).items() if k != "out"},
        "losses": losses,
    }
    # Written last: a folder with a trainer_state.json has every other file of that step.
    with open(os.path.join(out, STATE_FILE), "w", encoding="utf-8") as f:
        json.dump(state, f, indent=1)
    plot_losses(losses, os.path.join(out, LOSS_PLOT))


def read_state(out: str) -> dict:
    path = os.path.join(out, STATE_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"--out {out!r} has no {STATE_FILE}: pass the folder of a run of reformer-kernels train")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _resumed_arguments(args: TrainingArguments, saved: dict, step: int) -> TrainingArguments:
    given = _given(args)
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


def plot_losses(losses: list[float], path: str) -> bool:
    """Write the loss curve (each step and a moving average) to ``path``; False (with a message)
    when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        tqdm.write(f"matplotlib is not installed, so there is no {os.path.basename(path)}: pip install matplotlib")
        return False
    figure = Figure(figsize=(6, 4))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    steps = range(1, len(losses) + 1)
    ax.plot(steps, losses, lw=0.6, alpha=0.4, label="step")
    window = max(1, len(losses) // 50)
    if window > 1:
        kernel = torch.ones(window) / window
        smooth = torch.nn.functional.conv1d(torch.tensor(losses)[None, None], kernel[None, None]).flatten().tolist()
        ax.plot(range(window, len(losses) + 1), smooth, label=f"mean of {window}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return True


class _CtrlC:
    """The first Ctrl-C asks the loop to stop after the current step (so that the checkpoint is
    one consistent step); a second one interrupts at once, without saving."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("Ctrl-C: saving a checkpoint after this step (press Ctrl-C again to quit without saving)")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@dataclasses.dataclass
class TrainingResult:
    out: str
    step: int
    losses: list[float]
    interrupted: bool
    accuracy: dict[int, float] | None  # duplication task: num_hashes -> accuracy on the second half


def train(
    args: TrainingArguments, *, resume: bool = False, progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainingResult:
    """Train (or, with ``resume``, continue training) into ``args.out``; see the module doc.

    ``on_step(step, loss)`` is called after every step. Ctrl-C (SIGINT) stops after the current
    step and saves: ``TrainingResult.interrupted`` is then True.
    """
    out = os.fspath(args.out)
    if resume:
        state = read_state(out)
        step, losses = state["step"], state["losses"]
        args = _resumed_arguments(args, state["args"], step)
    else:
        if os.path.isdir(out) and os.listdir(out):
            raise ValueError(f"--out {out!r} exists and is not empty: pass --resume to continue its run, or a new --out")
        if os.path.exists(out) and not os.path.isdir(out):
            raise ValueError(f"--out {out!r} is a file: pass a folder path")
        args = _resolve(args)
        step, losses = 0, []
    if not isinstance(args.save_every, int) or isinstance(args.save_every, bool) or args.save_every < 0:
        raise ValueError(f"--save-every {args.save_every!r}: pass a number of steps, or 0 to save only at the end")
    if not isinstance(args.eval_sequences, int) or isinstance(args.eval_sequences, bool) or args.eval_sequences < 1:
        raise ValueError(f"--eval-sequences {args.eval_sequences!r}: pass a positive number of sequences")
    device = _device(args.device)
    data_generator = torch.Generator().manual_seed(args.seed)

    if args.task is not None:
        tokenizer, data = None, _DuplicationData(args)
    else:
        tokenizer = load_tokenizer(out) if resume else _new_tokenizer(args, progress)
        data = _TextData(encode_text_file(args.text, tokenizer, progress), args)
    if resume:
        model = ReformerModelWithLMHead.from_pretrained(out).to(device)
        saved = torch.load(os.path.join(out, OPTIMIZER_FILE), map_location="cpu", weights_only=True)
    else:
        torch.manual_seed(args.seed)
        vocab = args.vocab_size if tokenizer is None else len(tokenizer)
        settings = model_settings(
            vocab_size=vocab, seq_len=args.seq_len, heads=args.heads, head_dim=args.head_dim, chunk_len=args.chunk_len,
            attn_layers=args.attn_layers, num_hashes=args.num_hashes,
            pad_token_id=getattr(tokenizer, "pad_token_id", None), eos_token_id=getattr(tokenizer, "eos_token_id", None),
        )
        model = ReformerModelWithLMHead(ReformerConfig(**settings)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    if resume:
        optimizer.load_state_dict(saved["optimizer"])
        # After building the model, whose initialization draws from the same generator.
        _set_rng_states(saved["rng"], data_generator, device)
    os.makedirs(out, exist_ok=True)

    def save():
        _save(out, args, model, tokenizer, optimizer, data_generator, device, step, losses)

    tokens_per_step = args.batch_size * args.seq_len
    model.train()
    bar = tqdm(total=args.steps, initial=step, desc="train", unit="step", disable=not progress)
    interrupted = False
    with _CtrlC() as ctrl_c:
        while step < args.steps:
            started = time.perf_counter()
            tokens = data.batch(data_generator).to(device)
            loss = model(tokens, labels=tokens).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", tokens_per_s=f"{tokens_per_step / (time.perf_counter() - started):.0f}")
            if on_step is not None:
                on_step(step, losses[-1])
            if ctrl_c.requested:
                interrupted = True
                break
            if args.save_every and step % args.save_every == 0 and step < args.steps:
                save()
    bar.close()
    save()
    accuracy = None
    if args.task == "duplication" and not interrupted:
        accuracy = evaluate_duplication(model, args, device, args.eval_sequences)
        write_accuracy(accuracy, os.path.join(out, ACCURACY_FILE))
    return TrainingResult(out, step, losses, interrupted, accuracy)


def evaluate_duplication(
    model, args: TrainingArguments, device: torch.device, sequences: int = 1024, batch_size: int = 128,
) -> dict[int, float]:
    """Accuracy on the second half of ``sequences`` fresh 0 w 0 w sequences (a generator of its
    own, seed + 1) for each number of hashes in EVAL_HASHES."""
    model.eval()
    generator = torch.Generator().manual_seed(args.seed + 1)
    sizes = [min(batch_size, sequences - start) for start in range(0, sequences, batch_size)]
    batches = [duplication_batch(size, args.seq_len, args.vocab_size, generator).to(device) for size in sizes]
    return {n: sum(duplication_accuracy(model, b, n) * len(b) for b in batches) / sequences for n in EVAL_HASHES}


def write_accuracy(accuracy: dict[int, float], path: str) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["eval_num_hashes", "accuracy"])
        for n, value in accuracy.items():
            writer.writerow([n, f"{value:.4f}"])


def generate(
    directory: str, prompt: str, max_new_tokens: int, *, do_sample: bool = False, temperature: float = 1.0,
    top_k: int | None = None, top_p: float | None = None, seed: int = 0, device: str = "auto",
) -> str:
    """The prompt and its continuation by the model saved in ``directory``, as text (a task's
    prompt and output are token ids separated by spaces)."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise ValueError(f"DIR {directory!r} is not a folder: pass the --out folder of reformer-kernels train")
    torch_device = _device(device)
    tokenizer = load_tokenizer(directory)
    model = ReformerModelWithLMHead.from_pretrained(directory).to(torch_device).eval()
    if tokenizer is None:
        try:
            ids = [int(t) for t in prompt.split()]
        except ValueError:
            raise ValueError(f"--prompt {prompt!r}: this model's tokens are ids; pass integers separated by spaces, e.g. '0 5 3'") from None
        bad = [i for i in ids if not 0 <= i < model.config.vocab_size]
        if bad:
            raise ValueError(f"--prompt has ids {bad} outside the vocabulary [0, {model.config.vocab_size}): pass ids in that range")
    else:
        ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError(f"--prompt {prompt!r} gives no tokens: pass a non-empty prompt")
    generator = torch.Generator(device=torch_device).manual_seed(seed)
    output = model.generate(
        torch.tensor([ids], device=torch_device), max_new_tokens, do_sample=do_sample, temperature=temperature,
        top_k=top_k, top_p=top_p, eos_token_id=getattr(tokenizer, "eos_token_id", None), generator=generator,
    )[0].tolist()
    return " ".join(map(str, output)) if tokenizer is None else tokenizer.decode(output)
