"""Autoregressive generation for ReformerModelWithLMHead: greedy or sampled (temperature, top-k,
nucleus top-p), with transformers' argument names.

Finished rows (those that produced an ``eos_token_id``) get ``pad_token_id`` from then on, and the
loop stops early once every row has finished, as transformers' ``generate`` does.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def position_limit(config) -> int:
    """How many positions the model has: max_position_embeddings, and with axial position
    embeddings at most prod(axial_pos_shape)."""
    limit = config.max_position_embeddings
    if config.axial_pos_embds:
        limit = min(limit, math.prod(config.axial_pos_shape))
    return limit


def check_generate_arguments(
    config, input_ids, max_new_tokens, do_sample, temperature, top_k, top_p, eos_token_id, pad_token_id,
    attention_mask, generator,
) -> tuple[torch.Tensor, torch.Tensor | None, list[int], int | None]:
    """Validate ``generate``'s arguments; returns (input_ids as int64, attention_mask as int64 or
    None, the eos ids as a list, the pad id for finished rows)."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype.is_floating_point or input_ids.dtype.is_complex \
            or input_ids.dtype == torch.bool or input_ids.dim() != 2 or 0 in input_ids.shape:
        got = f"{input_ids.dtype} {tuple(input_ids.shape)}" if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"generate: input_ids must be a non-empty integer tensor (batch, prompt_len), got {got}")
    if not _is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not isinstance(do_sample, bool):
        raise ValueError(f"generate: do_sample must be True or False, got {do_sample!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"generate: temperature must be a finite number > 0, got {temperature!r}")
    if top_k is not None and (not _is_int(top_k) or top_k < 0):
        raise ValueError(f"generate: top_k must be None or an int >= 0 (0 or None: no top-k filtering), got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ValueError(f"generate: top_p must be None or a number in (0, 1] (1: no nucleus filtering), got {top_p!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generate: generator must be a torch.Generator or None, got {type(generator).__name__}")
    prompt_len = input_ids.shape[1]
    limit = position_limit(config)
    if prompt_len > limit:
        raise ValueError(
            f"generate: input_ids has prompt_len {prompt_len} > the {limit} positions the model has "
            "(max_position_embeddings / prod(axial_pos_shape)): shorten the prompt"
        )
    if prompt_len + max_new_tokens > limit:
        raise ValueError(
            f"generate: prompt_len {prompt_len} + max_new_tokens {max_new_tokens} > the {limit} positions the model has "
            f"(max_position_embeddings / prod(axial_pos_shape)): ask for at most {limit - prompt_len} new tokens"
        )
    if input_ids.min() < 0 or input_ids.max() >= config.vocab_size:
        raise ValueError(
            f"generate: input_ids span [{input_ids.min().item()}, {input_ids.max().item()}] but must lie in "
            f"[0, vocab_size={config.vocab_size})"
        )
    eos_ids = _token_ids("eos_token_id", eos_token_id, config.vocab_size)
    if pad_token_id is not None and (not _is_int(pad_token_id) or not 0 <= pad_token_id < config.vocab_size):
        raise ValueError(f"generate: pad_token_id must be None or an int in [0, vocab_size={config.vocab_size}), got {pad_token_id!r}")
    if pad_token_id is None:
        pad_token_id = config.pad_token_id if config.pad_token_id is not None else (eos_ids[0] if eos_ids else None)
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape or attention_mask.dtype.is_complex:
            shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
            raise ValueError(f"generate: attention_mask must be a 0/1 tensor of input_ids' shape {tuple(input_ids.shape)}, got {shape}")
        if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise ValueError(
                "generate: attention_mask must hold only 1 (token) and 0 (padding): pass 1 for tokens and 0 for padding "
                "(an additive mask of 0 / -10000 converts with (attention_mask == 0).long())"
            )
        if not bool(attention_mask.bool().any(dim=1).all()):
            raise ValueError("generate: attention_mask has a row with no token (all 0): every prompt needs at least one token")
        attention_mask = attention_mask.long()
    return input_ids.long(), attention_mask, eos_ids, pad_token_id


def _token_ids(name: str, value: int | Sequence[int] | None, vocab_size: int) -> list[int]:
    ids = [] if value is None else [value] if _is_int(value) else list(value) if isinstance(value, (list, tuple)) else None
    if ids is None or not all(_is_int(i) and 0 <= i < vocab_size for i in ids):
        raise ValueError(f"generate: {name} must be None, an int or a list of ints in [0, vocab_size={vocab_size}), got {value!r}")
    return ids


def next_tokens(
    logits: torch.Tensor, do_sample: bool, temperature: float, top_k: int | None, top_p: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """The next token of each row from its last-position logits (B, vocab): the argmax, or a draw
    from softmax(logits / temperature) restricted to the top_k most likely tokens and then to the
    smallest set of most likely tokens whose probability reaches top_p (the nucleus)."""
    if not do_sample:
        return logits.argmax(dim=-1)
    scores = logits.float() / temperature
    if top_k:
        kth = scores.topk(min(top_k, scores.shape[-1]), dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, -math.inf)
    if top_p is not None and top_p < 1:
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        probs = sorted_scores.softmax(dim=-1)
        # A token is outside the nucleus when the more likely tokens already hold top_p; the most
        # likely token always stays.
        outside = (probs.cumsum(dim=-1) - probs) >= top_p
        outside[:, 0] = False
        scores = scores.scatter(-1, order, sorted_scores.masked_fill(outside, -math.inf))
    return torch.multinomial(scores.softmax(dim=-1), 1, generator=generator).squeeze(1)


def generate(
    model, input_ids, max_new_tokens, *, do_sample, temperature, top_k, top_p, eos_token_id, pad_token_id,
    attention_mask, generator, use_cache,
) -> torch.Tensor:
    """See ``ReformerModelWithLMHead.generate``."""
    new = list(generate_tokens(
        model, input_ids, max_new_tokens, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
        eos_token_id=eos_token_id, pad_token_id=pad_token_id, attention_mask=attention_mask, generator=generator,
        use_cache=use_cache,
    ))
    return torch.cat([input_ids.long(), *(tokens[:, None] for tokens in new)], dim=1)


@torch.no_grad()
def generate_tokens(
    model, input_ids, max_new_tokens, *, do_sample, temperature, top_k, top_p, eos_token_id, pad_token_id,
    attention_mask, generator, use_cache,
) -> Iterator[torch.Tensor]:
    """``generate``'s new tokens (B,) int64, yielded one step at a time as each is chosen, so that a
    caller can show them while the next ones are computed; the arguments are checked on the first
    ``next``."""
    input_ids, attention_mask, eos_ids, pad_token_id = check_generate_arguments(
        model.config, input_ids, max_new_tokens, do_sample, temperature, top_k, top_p, eos_token_id, pad_token_id,
        attention_mask, generator,
    )
    if not isinstance(use_cache, bool):
        raise ValueError(f"generate: use_cache must be True or False, got {use_cache!r}")
    if use_cache and model.training:
        raise ValueError("generate: use_cache=True runs in eval mode: call model.eval() first (or pass use_cache=False)")
    if eos_ids and pad_token_id is None:
        raise ValueError("generate: finished rows need a pad_token_id: pass pad_token_id or set config.pad_token_id")
    batch = input_ids.shape[0]
    finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    eos = torch.tensor(eos_ids, dtype=torch.long, device=input_ids.device)
    tokens = input_ids
    cache = ReformerDecodingCache(capacity=input_ids.shape[1] + max_new_tokens) if use_cache else None
    for step in range(max_new_tokens):
        if cache is None:
            logits = model(input_ids=tokens, attention_mask=attention_mask).logits[:, -1]
        else:
            step_ids = tokens if step == 0 else tokens[:, -1:]
            logits = model(input_ids=step_ids, attention_mask=attention_mask, past_buckets_states=cache, use_cache=True).logits[:, -1]
        new = next_tokens(logits, do_sample, temperature, top_k, top_p, generator)
        if eos_ids:
            new = torch.where(finished, torch.full_like(new, pad_token_id), new)
            finished |= torch.isin(new, eos)
        tokens = torch.cat([tokens, new[:, None]], dim=1)
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=1)
        yield new
        if bool(finished.all()):
            break


class ReformerDecodingCache:
    """The ``past_buckets_states`` of our models: what cached decoding keeps per layer
    (``layers[i]``, a ``reformer_kernels.nn.DecodingCache``), the padding mask of the positions
    seen so far (``attention_mask``, (B, capacity) bool) and their number (``length``).

    Not interchangeable with transformers' ReformerDynamicCache (which keeps hidden states and
    buckets): this one keeps each layer's projections, so a step recomputes no past position.
    Memory: per layer 2 * B * H * capacity * d floats (+ n_hashes * B * H * capacity int64 for LSH
    layers), allocated once for ``capacity`` positions (``generate`` asks for prompt + new tokens);
    a step past the capacity doubles it.
    """

    def __init__(self, capacity: int = 0):
        if not _is_int(capacity) or capacity < 0:
            raise ValueError(f"ReformerDecodingCache: capacity must be an int >= 0 (positions to allocate for), got {capacity!r}")
        self.capacity = capacity
        self.length = 0
        self.attention_mask: torch.Tensor | None = None
        self.layers: list = []
        # Set by the model that fills the cache (its layer types, head shapes, dtype, device), so
        # that another model refuses it instead of reading the wrong layers.
        self.owner: tuple | None = None

    def __len__(self) -> int:
        return len(self.layers)

    def get_seq_length(self) -> int:
        return self.length

    def reserve(self, length: int) -> None:
        """Make room for ``length`` positions (doubling the capacity when it grows)."""
        if length > self.capacity:
            self.capacity = max(length, 2 * self.capacity)
        if self.attention_mask is not None and self.attention_mask.shape[1] < self.capacity:
            grown = self.attention_mask.new_zeros(self.attention_mask.shape[0], self.capacity)
            grown[:, : self.length] = self.attention_mask[:, : self.length]
            self.attention_mask = grown
