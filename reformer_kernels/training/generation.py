"""Continuing a prompt with a checkpoint of ``train`` (``reformer-kernels generate``): the prompt as
text or, for a task's model, as token ids. Separate from training: it reads a folder and writes
nothing.
"""
from __future__ import annotations

import math
import os

import torch

from ..models import ReformerModelWithLMHead
from .arguments import check_seed, resolve_device
from .data import load_tokenizer


def generate(
    directory: str, prompt: str, max_new_tokens: int, *, do_sample: bool = False, temperature: float = 1.0,
    top_k: int | None = None, top_p: float | None = None, seed: int = 0, device: str = "auto",
) -> str:
    """The prompt and its continuation by the model saved in ``directory``, as text (a task's
    prompt and output are token ids separated by spaces)."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise ValueError(f"DIR {directory!r} is not a folder: pass the --out folder of reformer-kernels train")
    check_seed(seed)
    # model.generate checks these too, but names its own arguments; a CLI user knows the flags.
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise ValueError(f"--temperature {temperature!r}: pass a finite number > 0 (1.0 samples the model's distribution)")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ValueError(f"--top-p {top_p!r}: pass a probability in (0, 1] (1: no nucleus filtering)")
    torch_device = resolve_device(device)
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
