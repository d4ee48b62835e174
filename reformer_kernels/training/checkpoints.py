"""A checkpoint folder: ``config.json`` + ``model.safetensors`` (``save_pretrained``, loadable by
transformers), the tokenizer's files, ``optimizer.pt`` (AdamW state and the RNG states of the data
and of torch, which draws the hashing rotations, so that a resumed run continues bit for bit as
the uninterrupted one would) and ``trainer_state.json`` (the run's arguments, step, loss history
and tokenizer kind). Separate so that what is saved and what resume reads back are side by side.
"""
from __future__ import annotations

import dataclasses
import json
import os

import torch

from .._atomic import all_or_nothing, atomic_write
from .._json import read_json_object
from ..tokenization import ByteTokenizer
from .arguments import TrainingArguments
from .plots import LOSS_PLOT, plot_losses

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
# The kind of a task's "tokenizer": the prompt and the output are token ids written as numbers.
IDS = "ids"


def rng_states(data_generator: torch.Generator, device: torch.device) -> dict:
    states = {"torch": torch.get_rng_state(), "data": data_generator.get_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_states(states: dict, data_generator: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(states["torch"])
    data_generator.set_state(states["data"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def save_checkpoint(out, args, model, tokenizer, optimizer, data_generator, device, step, losses) -> None:
    """Write the checkpoint of ``step`` into ``out``: every file or none (reformer_kernels._atomic),
    so that a failed or interrupted save leaves the previous checkpoint whole. trainer_state.json,
    the record of the step, is written and renamed last."""
    state = {
        "step": step,
        "tokenizer": IDS if tokenizer is None else "byte" if isinstance(tokenizer, ByteTokenizer) else "sentencepiece",
        "args": {k: v for k, v in dataclasses.asdict(args).items() if k != "out"},
        "losses": losses,
    }
    with all_or_nothing():
        model.save_pretrained(out)
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
        with atomic_write(os.path.join(out, OPTIMIZER_FILE)) as f:
            torch.save({"optimizer": optimizer.state_dict(), "rng": rng_states(data_generator, device)}, f)
        plot_losses(losses, os.path.join(out, LOSS_PLOT))
        with atomic_write(os.path.join(out, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump(state, f, indent=1)


def read_state(out: str) -> dict:
    """The checked contents of ``out``'s trainer_state.json: step, losses (one per step), args
    (every TrainingArguments field but out) and tokenizer kind."""
    path = os.path.join(out, STATE_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"--out {out!r} has no {STATE_FILE}: pass the folder of a run of reformer-kernels train")
    state = read_json_object(path, repr(path), "the checkpoint is damaged; train into a new --out")
    problem = _state_problem(state)
    if problem:
        raise ValueError(f"{path!r} {problem}: it is not a checkpoint of reformer-kernels train; train into a new --out")
    return state


def _state_problem(state) -> str | None:
    step = state.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return f"has step {step!r}, not a number of steps"
    losses = state.get("losses")
    if not isinstance(losses, list) or len(losses) != step or not all(isinstance(x, (int, float)) for x in losses):
        return f"does not hold the {step} losses of its steps"
    fields = {f.name for f in dataclasses.fields(TrainingArguments)} - {"out"}
    if not isinstance(state.get("args"), dict) or set(state["args"]) != fields:
        return "does not hold the run's arguments (args)"
    if state.get("tokenizer") not in (IDS, "byte", "sentencepiece"):
        return f"has tokenizer {state.get('tokenizer')!r}, not {IDS!r}, 'byte' or 'sentencepiece'"
    return None


def restore_training_state(out: str, optimizer, data_generator: torch.Generator, device: torch.device) -> None:
    """Load ``out``'s optimizer.pt into ``optimizer`` and set the RNG states it saved."""
    path = os.path.join(out, OPTIMIZER_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"{path!r} is missing: the checkpoint is incomplete; train into a new --out")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types (pickle, zip, EOF) for a damaged file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(
            f"{path!r} could not be read ({type(error).__name__}: {reason}): the checkpoint is damaged; train into a new --out"
        ) from None
    try:
        optimizer.load_state_dict(saved["optimizer"])
        set_rng_states(saved["rng"], data_generator, device)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ValueError(
            f"{path!r} does not hold this model's optimizer and RNG states ({type(error).__name__}: {error}): "
            "the checkpoint is damaged; train into a new --out"
        ) from None
