"""The training loop behind ``reformer-kernels train``: a new run or a resumed one, the steps, the
saves (every ``save_every`` steps, at the end and on Ctrl-C) and the task's final evaluation.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from typing import Callable

import torch
from tqdm import tqdm

from ..models import ReformerConfig, ReformerModelWithLMHead
from .arguments import (
    TrainingArguments, check_new_out, check_run_options, check_whole_chunks, resolve_arguments, resolve_device, resumed_arguments,
)
from .checkpoints import read_state, restore_training_state, save_checkpoint
from .data import TextData, encode_text_file, load_tokenizer, new_tokenizer
from .duplication import ACCURACY_FILE, DuplicationData, evaluate_duplication, write_accuracy
from .model import model_settings
from .signals import CtrlC


class DivergedError(RuntimeError):
    """The loss or the weights stopped being finite; the run stops without saving them."""


@contextlib.contextmanager
def _folder(out: str):
    """Make the checkpoint folder ``out``; a new run that fails before its first save removes it
    again, so that a failed run leaves no folder behind."""
    created = not os.path.exists(out)
    os.makedirs(out, exist_ok=True)
    try:
        yield
    except BaseException:
        if created and not os.listdir(out):
            os.rmdir(out)
        raise


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
    """Train (or, with ``resume``, continue training) into ``args.out``; see the package doc.

    ``on_step(step, loss)`` is called after every step. Ctrl-C (SIGINT) stops after the current
    step and saves: ``TrainingResult.interrupted`` is then True.
    """
    out = os.fspath(args.out)
    if resume:
        state = read_state(out)
        step, losses = state["step"], state["losses"]
        args = resumed_arguments(args, state["args"], step)
    else:
        check_new_out(out)
        args = resolve_arguments(args)
        step, losses = 0, []
    check_run_options(args)
    device = resolve_device(args.device)
    data_generator = torch.Generator().manual_seed(args.seed)

    if args.task is not None:
        tokenizer, data = None, DuplicationData(args)
    else:
        tokenizer = load_tokenizer(out) if resume else new_tokenizer(args, progress)
        data = TextData(encode_text_file(args.text, tokenizer, progress), args)
    if resume:
        model = ReformerModelWithLMHead.from_pretrained(out).to(device)
    else:
        check_whole_chunks(args)
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
        # After building the model, whose initialization draws from the same generator.
        restore_training_state(out, optimizer, data_generator, device)
    saved_step = step if resume else None

    def stopped():
        kept = "nothing was saved" if saved_step is None else f"{out!r} keeps its checkpoint of step {saved_step}"
        return f": the run diverged and stops without saving ({kept}); lower --lr {args.lr}"

    def save():
        nonlocal saved_step
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise DivergedError(f"step {step}: the weights are not finite after the update (loss {losses[-1]}){stopped()}")
        save_checkpoint(out, args, model, tokenizer, optimizer, data_generator, device, step, losses)
        saved_step = step

    tokens_per_step = args.batch_size * args.seq_len
    model.train()
    interrupted = False
    with _folder(out):
        with tqdm(total=args.steps, initial=step, desc="train", unit="step", disable=not progress) as bar, CtrlC() as ctrl_c:
            while step < args.steps:
                started = time.perf_counter()
                tokens = data.batch(data_generator).to(device)
                loss = model(tokens, labels=tokens).loss
                value = loss.item()
                if not math.isfinite(value):
                    raise DivergedError(f"step {step + 1}: the loss is {value}, not finite{stopped()}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                losses.append(value)
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}", tokens_per_s=f"{tokens_per_step / (time.perf_counter() - started):.0f}")
                if on_step is not None:
                    on_step(step, value)
                if ctrl_c.requested:
                    interrupted = True
                    break
                if args.save_every and step % args.save_every == 0 and step < args.steps:
                    save()
        save()
        accuracy = None
        if args.task == "duplication" and not interrupted:
            accuracy = evaluate_duplication(model, args, device, args.eval_sequences)
            write_accuracy(accuracy, os.path.join(out, ACCURACY_FILE))
    return TrainingResult(out, step, losses, interrupted, accuracy)
