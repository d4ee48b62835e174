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
from ..tokenization import ByteTokenizer
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
    path = os.path.join(out, STATE_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"--out {out!r} has no {STATE_FILE}: pass the folder of a run of reformer-kernels train")
    with open(path, encoding="utf-8") as f:
        return json.load(f)
