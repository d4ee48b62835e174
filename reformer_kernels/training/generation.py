"""Continuing a prompt with a checkpoint of ``train`` (``reformer-kernels generate``): the prompt as
text (given, or read from a file) or, for a task's model, as token ids; the output all at once
(``generate``) or as text pieces streamed while the next tokens are computed (``generate_stream``).
Separate from training: it reads a folder and writes nothing.
"""
from __future__ import annotations

import math
import os
import time
from typing import Iterator

import torch

from ..models import ReformerConfig, ReformerModelWithLMHead
from ..models.generation import generate_tokens, position_limit
from .arguments import check_seed, resolve_device
from .data import load_tokenizer

# What decoding shows for bytes that do not (yet) form a UTF-8 character: a multi-byte
# character's first bytes, until the rest arrives.
REPLACEMENT_CHARACTER = "\ufffd"


def read_prompt_file(path: str) -> str:
    """The UTF-8 text of ``path`` (``--prompt-file``); ValueError when it is not a readable file, not
    UTF-8 or empty."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"--prompt-file {path!r} is not a file: pass the path of a UTF-8 text file holding the prompt")
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"--prompt-file {path!r} is not UTF-8 text ({e}): save the prompt as UTF-8") from None
    if not text:
        raise ValueError(f"--prompt-file {path!r} is empty: write the prompt's text into it")
    return text


def _prepare(directory, prompt, prompt_file, max_new_tokens, temperature, top_p, seed, device):
    """Check the arguments, load the model and tokenizer and encode the prompt: (model, tokenizer,
    prompt ids, sampling generator). Errors name the flags of ``reformer-kernels generate``."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise ValueError(f"DIR {directory!r} is not a folder: pass the --out folder of reformer-kernels train")
    if (prompt is None) == (prompt_file is None):
        raise ValueError("pass exactly one of --prompt TEXT and --prompt-file PATH")
    check_seed(seed)
    # model.generate checks these too, but names its own arguments; a CLI user knows the flags.
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise ValueError(f"--temperature {temperature!r}: pass a finite number > 0 (1.0 samples the model's distribution)")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ValueError(f"--top-p {top_p!r}: pass a probability in (0, 1] (1: no nucleus filtering)")
    # A file's prompt may be 100K tokens: messages name the file, not its text.
    source = f"--prompt {prompt!r}" if prompt_file is None else f"--prompt-file {os.fspath(prompt_file)!r}"
    if prompt_file is not None:
        prompt = read_prompt_file(prompt_file)
    torch_device = resolve_device(device)
    tokenizer = load_tokenizer(directory)
    # A model trained without a fixed hash_seed draws new LSH rotations on every forward, so every
    # cached step would rehash the whole context; one draw from --seed for the whole generation
    # makes a step hash only its token, and the same --seed give the same text.
    config = ReformerConfig.from_pretrained(directory)
    hash_seed = seed if config.hash_seed is None else config.hash_seed
    model = ReformerModelWithLMHead.from_pretrained(directory, hash_seed=hash_seed).to(torch_device).eval()
    if tokenizer is None:
        try:
            ids = [int(t) for t in prompt.split()]
        except ValueError:
            raise ValueError(f"{source}: this model's tokens are ids; pass integers separated by spaces, e.g. '0 5 3'") from None
        bad = [i for i in ids if not 0 <= i < model.config.vocab_size]
        if bad:
            raise ValueError(f"{source} has ids {bad[:10]} outside the vocabulary [0, {model.config.vocab_size}): pass ids in that range")
    else:
        ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError(f"{source} gives no tokens: pass a non-empty prompt")
    limit = position_limit(model.config)
    if len(ids) + max_new_tokens > limit:
        raise ValueError(
            f"{source} has {len(ids)} tokens, which with --max-new-tokens {max_new_tokens} need {len(ids) + max_new_tokens} "
            f"positions, but the model in {directory!r} has {limit} (max_position_embeddings, or prod(axial_pos_shape)): "
            "shorten the prompt, lower --max-new-tokens, or use a model with more positions (train --seq-len)"
        )
    return model, tokenizer, ids, torch.Generator(device=torch_device).manual_seed(seed)


def generate(
    directory: str, prompt: str | None, max_new_tokens: int, *, prompt_file: str | None = None, do_sample: bool = False,
    temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, seed: int = 0, device: str = "auto",
) -> str:
    """The prompt and its continuation by the model saved in ``directory``, as text (a task's
    prompt and output are token ids separated by spaces). The prompt is ``prompt`` or the UTF-8
    text of ``prompt_file`` (exactly one)."""
    model, tokenizer, ids, generator = _prepare(directory, prompt, prompt_file, max_new_tokens, temperature, top_p, seed, device)
    output = model.generate(
        torch.tensor([ids], device=model.device), max_new_tokens, do_sample=do_sample, temperature=temperature,
        top_k=top_k, top_p=top_p, eos_token_id=getattr(tokenizer, "eos_token_id", None), generator=generator,
    )[0].tolist()
    return " ".join(map(str, output)) if tokenizer is None else tokenizer.decode(output)


class GenerationStream:
    """The continuation of a prompt as text pieces, each yielded as soon as the tokens that make it
    are chosen; iterate once. ``prompt_text`` is the prompt as the model's tokens decode (for a
    task's model, its ids), so that ``prompt_text + "".join(pieces)`` is ``generate``'s text.

    A piece is the text that the newest tokens add to the decoded continuation: usually one per
    token; a multi-byte character split over byte tokens comes whole, with its last byte. After
    (or during) the iteration: ``new_tokens``; ``prefill_s``, the seconds from the start to the
    first new token (the prompt's forward, which fills the cache); ``decode_s``, the seconds of the
    cached steps that chose the other tokens; ``decode_tokens_per_s`` (None before a second token).
    """

    def __init__(self, model, tokenizer, ids: list[int], max_new_tokens: int, sampling: dict):
        self.model, self.tokenizer, self.ids = model, tokenizer, ids
        self.max_new_tokens, self.sampling = max_new_tokens, sampling
        self.prompt_tokens = len(ids)
        self.prompt_text = " ".join(map(str, ids)) if tokenizer is None else tokenizer.decode(ids)
        self.new_tokens, self.prefill_s, self.decode_s = 0, 0.0, 0.0
        self._started = False

    @property
    def decode_tokens_per_s(self) -> float | None:
        return (self.new_tokens - 1) / self.decode_s if self.new_tokens > 1 and self.decode_s > 0 else None

    def __iter__(self) -> Iterator[str]:
        if self._started:
            raise ValueError("a GenerationStream runs once: call generate_stream again to generate again")
        self._started = True
        prompt = torch.tensor([self.ids], device=self.model.device)
        # Decoding the continuation after the prompt's last token, rather than alone, keeps what
        # that token does to the next one's text (sentencepiece drops the leading space of the
        # first piece decoded).
        anchor = self.ids[-1:]
        shown = 0 if self.tokenizer is None else len(self.tokenizer.decode(anchor))
        new: list[int] = []
        start = time.perf_counter()
        for token in generate_tokens(self.model, prompt, self.max_new_tokens, **self.sampling):
            now = time.perf_counter()
            if self.new_tokens == 0:
                self.prefill_s = now - start
            else:
                self.decode_s = now - start - self.prefill_s
            self.new_tokens += 1
            new.append(int(token[0]))
            if self.tokenizer is None:
                yield f" {new[-1]}"
                continue
            text = self.tokenizer.decode(anchor + new)
            if len(text) > shown and not text.endswith(REPLACEMENT_CHARACTER):
                yield text[shown:]
                shown = len(text)
        if self.tokenizer is not None:
            text = self.tokenizer.decode(anchor + new)
            if len(text) > shown:  # bytes that never formed a character, shown as U+FFFD
                yield text[shown:]


def generate_stream(
    directory: str, prompt: str | None, max_new_tokens: int, *, prompt_file: str | None = None, do_sample: bool = False,
    temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, seed: int = 0, device: str = "auto",
) -> GenerationStream:
    """``generate`` as a stream: the model is loaded and the arguments checked now; iterating the
    returned ``GenerationStream`` runs the model and yields the continuation's text piece by piece
    (for a task's model, " id" per token), with the same tokens as ``generate``."""
    model, tokenizer, ids, generator = _prepare(directory, prompt, prompt_file, max_new_tokens, temperature, top_p, seed, device)
    sampling = dict(
        do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, eos_token_id=getattr(tokenizer, "eos_token_id", None),
        pad_token_id=None, attention_mask=None, generator=generator, use_cache=True,
    )
    return GenerationStream(model, tokenizer, ids, max_new_tokens, sampling)
