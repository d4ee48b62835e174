"""Reformer self-attention modules: the projections around the functional ops.

Parameter names match transformers' ``self_attention`` submodules (``query_key``/``value`` for LSH,
``query``/``key``/``value`` for local), so their state dicts load into each other.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import functional
from ..ops.seeded_randn import seeded_randn
from ..reference.chunked import chunk_scores, mask_scores
from ..reference.hashing import bucket_factors
from ..reference.local_attention import local_chunking
from ..reference.lsh_attention import gather_rows, shared_qk_keys
from ..reference.projections import split_heads
from ._checks import check_heads, check_int, check_probability


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, L, d) -> (B, L, H * d)."""
    return x.transpose(1, 2).flatten(2)


def _whole_chunks(module: nn.Module, seq_len: int, chunk_len: int) -> None:
    if seq_len > chunk_len and seq_len % chunk_len:
        raise ValueError(
            f"{type(module).__name__}: attention probabilities need seq_len ({seq_len}) to be a multiple of chunk_len "
            f"({chunk_len}) or at most chunk_len; pad the input (the Reformer models do)"
        )


def _probabilities(scores: torch.Tensor, full: bool) -> torch.Tensor:
    """Softmax of chunked scores, in transformers' layout: (B, H, n_chunks, chunk_len, window),
    or (B, H, L, L) for full attention (one chunk)."""
    probs = torch.softmax(scores, dim=-1)
    return probs.squeeze(2) if full else probs


def _check_hidden_states(module: nn.Module, hidden_states: torch.Tensor, hidden_size: int) -> None:
    if not isinstance(hidden_states, torch.Tensor) or hidden_states.dim() != 3 or hidden_states.shape[-1] != hidden_size:
        shape = tuple(hidden_states.shape) if isinstance(hidden_states, torch.Tensor) else type(hidden_states).__name__
        raise ValueError(f"{type(module).__name__}: hidden_states must be (batch, seq_len, {hidden_size}), got {shape}")


class DecodingCache:
    """What one attention layer keeps of the positions decoded so far, for the next position.

    Local layers: their keys and values; LSH layers: their shared query/key projections and values,
    plus the buckets of those positions for the rotations and bucket count they were hashed with
    (a fixed ``hash_seed`` lets them be reused; a change of count or fresh rotations rehashes).
    Tensors (B, H, capacity, d), preallocated for ``capacity`` positions: a step writes in place
    and allocates nothing that stays; writing past the capacity reallocates to the capacity asked.
    """

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.buckets: torch.Tensor | None = None
        self.hashed_with: tuple | None = None
        self.n_hashed = 0
        self.length = 0

    def write(self, position: int, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> None:
        """Store keys, values (B, H, n, d) at positions [position, position + n); the cache then
        holds positions [0, position + n)."""
        end = position + keys.shape[2]
        if self.keys is None or self.keys.shape[2] < end:
            size = max(capacity, end)
            grown = [t.new_zeros(*t.shape[:2], size, t.shape[3]) for t in (keys, values)]
            if self.keys is not None:
                for new, old in zip(grown, (self.keys, self.values)):
                    new[:, :, :position] = old[:, :, :position]
            self.keys, self.values = grown
            self.buckets, self.hashed_with, self.n_hashed = None, None, 0
        self.keys[:, :, position:end] = keys
        self.values[:, :, position:end] = values
        self.length = end


def _check_decoding(
    module: nn.Module, hidden_states: torch.Tensor, cache: DecodingCache, key_valid: torch.Tensor, layout_len: int | None
) -> int:
    _check_hidden_states(module, hidden_states, module.hidden_size)
    if not module.causal:
        raise ValueError(f"{type(module).__name__}: decode_step needs causal=True (a decoder); bidirectional layers cannot decode")
    if hidden_states.shape[1] != 1:
        raise ValueError(f"{type(module).__name__}: decode_step takes one position, hidden_states (batch, 1, hidden), got {tuple(hidden_states.shape)}")
    if not isinstance(key_valid, torch.Tensor) or key_valid.dtype != torch.bool or key_valid.dim() != 2 \
            or key_valid.shape[0] != hidden_states.shape[0]:
        raise ValueError(f"{type(module).__name__}: key_valid must be a bool tensor (batch, position + 1)")
    position = key_valid.shape[1] - 1
    if not isinstance(cache, DecodingCache) or cache.length != position:
        held = cache.length if isinstance(cache, DecodingCache) else type(cache).__name__
        raise ValueError(
            f"{type(module).__name__}: key_valid says the new position is {position} but the cache holds {held} positions: "
            "fill_cache the prompt, then step one position at a time"
        )
    if layout_len is not None and layout_len <= position:
        raise ValueError(f"{type(module).__name__}: layout_len {layout_len} must exceed the position {position}")
    return position


def _attend_window(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, position: int, key_positions: torch.Tensor,
    key_valid: torch.Tensor, *, causal: bool, self_mask: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One query per row (..., 1, d) against its window of keys and values (..., W, d), with the
    chunked attention's masks (key_positions, key_valid broadcast to (..., W)): returns the output
    (..., d) and the log-sum-exp (...) of the scores."""
    scores = mask_scores(
        query @ keys.transpose(-1, -2), torch.full((), position, device=query.device), key_positions[..., None, :],
        key_valid[..., None, :], causal=causal, self_mask=self_mask,
    )
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    return (torch.exp(scores - lse) @ values).squeeze(-2), lse[..., 0, 0]


class LSHSelfAttention(nn.Module):
    """Shared-QK LSH self-attention (the paper's section 2).

    Input (B, L, hidden_size) -> output (B, L, num_attention_heads * attention_head_size), before
    the output projection. Sequences no longer than ``chunk_len`` get full attention without
    hashing. Rotations come from ``hash_seed`` through a private generator (the numbers
    ``torch.manual_seed(hash_seed); torch.randn(...)`` would give, without touching the global
    RNG), else from the global RNG, drawn like transformers draws them so the same seed gives the
    same buckets. ``num_buckets=None`` picks the count from each call's length (nothing is stored).
    The projections are computed from ``query_key.weight`` and ``value.weight`` by
    ``functional.head_projections`` (on the CPU straight into dense heads), so hooks on those two
    submodules do not run.
    """

    def __init__(
        self,
        hidden_size: int,
        num_attention_heads: int,
        attention_head_size: int,
        *,
        num_hashes: int = 1,
        num_buckets: int | tuple[int, ...] | list[int] | None = None,
        chunk_len: int = 64,
        n_chunks_before: int = 1,
        n_chunks_after: int = 0,
        causal: bool = False,
        hash_seed: int | None = None,
        dropout: float = 0.0,
        max_position_embeddings: int = 4096,
    ):
        super().__init__()
        check_heads("LSHSelfAttention", hidden_size, num_attention_heads, attention_head_size)
        for name, value, minimum in (("num_hashes", num_hashes, 1), ("chunk_len", chunk_len, 1), ("n_chunks_before", n_chunks_before, 0),
                                     ("n_chunks_after", n_chunks_after, 0), ("max_position_embeddings", max_position_embeddings, 1)):
            check_int("LSHSelfAttention", name, value, minimum)
        check_probability("LSHSelfAttention", "dropout", dropout)
        factors = [num_buckets] if _is_int(num_buckets) else list(num_buckets) if isinstance(num_buckets, (list, tuple)) else None
        if num_buckets is not None and (not factors or not all(_is_int(f) and f >= 2 and f % 2 == 0 for f in factors)):
            raise ValueError(
                f"LSHSelfAttention: num_buckets {num_buckets!r} must be an even int >= 2, a list of even factors "
                "(e.g. [8, 8]) or None (chosen from the sequence length)"
            )
        if hash_seed is not None and not _is_int(hash_seed):
            raise ValueError(f"LSHSelfAttention: hash_seed must be an int or None, got {hash_seed!r}")
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.attention_head_size = attention_head_size
        self.num_hashes = num_hashes
        self.num_buckets = tuple(num_buckets) if isinstance(num_buckets, (list, tuple)) else num_buckets
        self.chunk_len = chunk_len
        self.n_chunks_before = n_chunks_before
        self.n_chunks_after = n_chunks_after
        self.causal = causal
        self.hash_seed = hash_seed
        self.dropout = dropout
        self.max_position_embeddings = max_position_embeddings
        self.query_key = nn.Linear(hidden_size, num_attention_heads * attention_head_size, bias=False)
        self.value = nn.Linear(hidden_size, num_attention_heads * attention_head_size, bias=False)

    def draw_rotations(self, n_hashes: int, n_buckets: int | tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """Random rotations (H, d, n_hashes, R / 2), R = sum of the bucket factors, in ``like``'s dtype and device."""
        shape = (self.num_attention_heads, self.attention_head_size, n_hashes, sum(bucket_factors(n_buckets)) // 2)
        if self.hash_seed is not None:
            return seeded_randn(list(shape), self.hash_seed, like.dtype, like.device)
        return torch.randn(shape, device=like.device, dtype=like.dtype)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        num_hashes: int | None = None,
        attentions: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """hidden_states (B, L, hidden_size); attention_mask (B, L), 0 = padding; num_hashes overrides
        the module's. ``attentions``: a list that receives the attention probabilities (before
        dropout) in transformers' layout, (B, H, n_hashes * L / chunk_len, chunk_len, window) in
        bucket order, or (B, H, L, L) for one chunk."""
        _check_hidden_states(self, hidden_states, self.hidden_size)
        if num_hashes is not None:
            check_int("LSHSelfAttention", "num_hashes", num_hashes, 1)
        n_hashes = self.num_hashes if num_hashes is None else num_hashes
        qk, v = functional.head_projections(hidden_states, [self.query_key.weight, self.value.weight], self.num_attention_heads)
        seq_len = qk.shape[2]
        masks = dict(causal=self.causal, attention_mask=attention_mask, dropout_p=self.dropout if self.training else 0.0)
        if seq_len <= self.chunk_len:
            sorted_idx = torch.arange(seq_len, device=qk.device).expand(qk.shape[:3])
            chunking = dict(chunk_len=seq_len, n_chunks_before=0, n_chunks_after=0)
            out = functional.lsh_attention(qk, v, sorted_idx, n_hashes=1, **chunking, **masks)
        else:
            n_buckets = self.num_buckets
            if n_buckets is None:
                n_buckets = functional.default_num_buckets(seq_len, self.chunk_len, self.max_position_embeddings)
            rotations = self.draw_rotations(n_hashes, n_buckets, qk)
            chunking = dict(chunk_len=self.chunk_len, n_chunks_before=self.n_chunks_before, n_chunks_after=self.n_chunks_after)
            if attentions is None:
                out = functional.lsh_self_attention(qk, v, rotations, n_buckets, **chunking, **masks)
            else:
                # The probabilities are laid out in bucket order: hash and sort here, not inside the one-call op.
                _whole_chunks(self, seq_len, self.chunk_len)
                buckets, num_keys = functional.lsh_hash(qk, rotations, n_buckets, attention_mask=attention_mask)
                sorted_idx, _ = functional.bucket_sort(buckets, num_keys)
                out = functional.lsh_attention(qk, v, sorted_idx, n_hashes=n_hashes, **chunking, **masks)
        if attentions is not None:
            positions = sorted_idx % seq_len
            key_valid = None
            if attention_mask is not None:
                key_valid = attention_mask.bool()[:, None, :].expand(qk.shape[:3]).gather(2, positions)
            scores = chunk_scores(
                gather_rows(qk, positions), gather_rows(shared_qk_keys(qk), positions), positions, key_valid,
                **chunking, causal=self.causal, self_mask=True,
            )
            attentions.append(_probabilities(scores, full=seq_len <= self.chunk_len))
        return merge_heads(out)


    def decode_step(
        self,
        hidden_states: torch.Tensor,
        cache: DecodingCache,
        key_valid: torch.Tensor,
        layout_len: int | None = None,
        num_hashes: int | None = None,
        capacity: int = 0,
    ) -> torch.Tensor:
        """Cached decoding: the output (B, 1, H * d) at position t = key_valid.shape[1] - 1 that
        ``forward`` computes there on the whole sequence, from that position's input alone.

        hidden_states (B, 1, hidden_size): position t's input; ``cache`` holds positions < t (from
        ``fill_cache`` and earlier steps) and receives t. key_valid (B, t + 1) bool, False at
        padding. layout_len: the length of the sequence ``forward`` would see (>= t + 1; positions
        past t count as padding, as the models pad to a chunk multiple; default t + 1), which sets
        the bucket count when num_buckets is unset, the internal padding and so the chunks. The step
        hashes position t (and every cached position when the count changes or rotations are drawn
        fresh), sorts the rounds by (bucket, position) as ``forward`` does, and attends, per round,
        within position t's chunk and its neighbours of the sorted order; rounds combine by lse.
        Cost per step: one sort of n_hashes * layout_len ids and one chunk window of attention.
        Inference only: no dropout. ``capacity``: positions to allocate the cache for.
        """
        position = _check_decoding(self, hidden_states, cache, key_valid, layout_len)
        seq_len = position + 1 if layout_len is None else layout_len
        qk = split_heads(self.query_key(hidden_states), self.num_attention_heads)
        cache.write(position, qk, split_heads(self.value(hidden_states), self.num_attention_heads), capacity)
        keys, values = cache.keys[:, :, : position + 1], cache.values[:, :, : position + 1]
        if seq_len <= self.chunk_len:
            out, _ = _attend_window(
                qk, shared_qk_keys(keys), values, position, torch.arange(position + 1, device=qk.device),
                key_valid[:, None, :], causal=True, self_mask=True,
            )
            return merge_heads(out[:, :, None])
        n_hashes = self.num_hashes if num_hashes is None else num_hashes
        n_buckets = self.num_buckets
        if n_buckets is None:
            n_buckets = functional.default_num_buckets(seq_len, self.chunk_len, self.max_position_embeddings)
        buckets = self._decoding_buckets(cache, position, n_hashes, n_buckets)
        # The layout of forward: padding (masked tokens and the positions past t) in an extra bucket
        # after the others of its round, each round padded to a whole number of chunks.
        padding_bucket = math.prod(bucket_factors(n_buckets))
        padded_len = math.ceil(seq_len / self.chunk_len) * self.chunk_len
        batch, heads = qk.shape[:2]
        layout = buckets.new_full((batch, heads, n_hashes, padded_len), padding_bucket)
        layout[..., : position + 1] = torch.where(key_valid[:, None, None, :], buckets, padding_bucket)
        offsets = torch.arange(n_hashes, device=qk.device)[:, None] * (padding_bucket + 1)
        sorted_idx, undo_sort = functional.bucket_sort((layout + offsets).flatten(2), n_hashes * (padding_bucket + 1))
        query_sorted = undo_sort[..., torch.arange(n_hashes, device=qk.device) * padded_len + position]
        n_chunks = n_hashes * padded_len // self.chunk_len
        neighbours = torch.arange(-self.n_chunks_before, self.n_chunks_after + 1, device=qk.device)
        window_chunks = (query_sorted[..., None] // self.chunk_len + neighbours) % n_chunks
        window = (window_chunks[..., None] * self.chunk_len + torch.arange(self.chunk_len, device=qk.device)).flatten(-2)
        key_positions = sorted_idx.gather(-1, window.flatten(2)).view(window.shape) % padded_len
        real = key_positions.clamp(max=position)
        valid = (key_positions <= position) & key_valid[:, None, None, :].expand(*window.shape[:3], -1).gather(-1, real)
        rows = real.flatten(2)
        out, lse = _attend_window(
            qk[:, :, None], shared_qk_keys(gather_rows(keys, rows)).view(*window.shape, -1),
            gather_rows(values, rows).view(*window.shape, -1), position, key_positions, valid, causal=True, self_mask=True,
        )
        round_weights = torch.exp(lse - torch.logsumexp(lse, dim=2, keepdim=True))
        return merge_heads((out * round_weights[..., None]).sum(dim=2, keepdim=True))

    def fill_cache(self, hidden_states: torch.Tensor, cache: DecodingCache, capacity: int = 0) -> None:
        """Store the projections of positions [0, L) of hidden_states (B, L, hidden_size) (this
        layer's inputs on a prompt) in ``cache``, for ``decode_step`` at position L and on."""
        _check_hidden_states(self, hidden_states, self.hidden_size)
        heads = self.num_attention_heads
        cache.write(0, split_heads(self.query_key(hidden_states), heads), split_heads(self.value(hidden_states), heads), capacity)

    def _decoding_buckets(self, cache: DecodingCache, position: int, n_hashes: int, n_buckets) -> torch.Tensor:
        """Buckets (B, H, n_hashes, position + 1) of the cached positions, without the padding
        bucket and round offsets; hashed once per position while the rotations stay the same."""
        rotations = self.draw_rotations(n_hashes, n_buckets, cache.keys)
        if self.hash_seed is None or cache.hashed_with != (n_hashes, n_buckets):
            cache.n_hashed = 0
        if cache.buckets is None or cache.n_hashed == 0:
            cache.buckets = cache.keys.new_zeros((*cache.keys.shape[:2], n_hashes, cache.keys.shape[2]), dtype=torch.long)
        vectors = cache.keys[:, :, cache.n_hashed : position + 1]
        new, _ = functional.lsh_hash(vectors, rotations, n_buckets)
        offsets = torch.arange(n_hashes, device=new.device)[:, None] * math.prod(bucket_factors(n_buckets))
        cache.buckets[..., cache.n_hashed : position + 1] = new.unflatten(2, (n_hashes, -1)) - offsets
        cache.hashed_with, cache.n_hashed = (n_hashes, n_buckets), position + 1
        return cache.buckets[..., : position + 1]


class LocalSelfAttention(nn.Module):
    """Chunked local self-attention: each chunk of ``chunk_len`` attends to itself and its
    neighbour chunks (circularly, as transformers). Input (B, L, hidden_size) -> output
    (B, L, num_attention_heads * attention_head_size), before the output projection."""

    def __init__(
        self,
        hidden_size: int,
        num_attention_heads: int,
        attention_head_size: int,
        *,
        chunk_len: int = 64,
        n_chunks_before: int = 1,
        n_chunks_after: int = 0,
        causal: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        check_heads("LocalSelfAttention", hidden_size, num_attention_heads, attention_head_size)
        for name, value, minimum in (("chunk_len", chunk_len, 1), ("n_chunks_before", n_chunks_before, 0),
                                     ("n_chunks_after", n_chunks_after, 0)):
            check_int("LocalSelfAttention", name, value, minimum)
        check_probability("LocalSelfAttention", "dropout", dropout)
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.attention_head_size = attention_head_size
        self.chunk_len = chunk_len
        self.n_chunks_before = n_chunks_before
        self.n_chunks_after = n_chunks_after
        self.causal = causal
        self.dropout = dropout
        all_head_size = num_attention_heads * attention_head_size
        self.query = nn.Linear(hidden_size, all_head_size, bias=False)
        self.key = nn.Linear(hidden_size, all_head_size, bias=False)
        self.value = nn.Linear(hidden_size, all_head_size, bias=False)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, attentions: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """hidden_states (B, L, hidden_size); attention_mask (B, L), 0 = padding. ``attentions``: a
        list that receives the attention probabilities (before dropout) in transformers' layout,
        (B, H, L / chunk_len, chunk_len, window), or (B, H, L, L) for one chunk."""
        _check_hidden_states(self, hidden_states, self.hidden_size)
        q, k, v = (split_heads(proj(hidden_states), self.num_attention_heads) for proj in (self.query, self.key, self.value))
        out = functional.local_attention(
            q, k, v, chunk_len=self.chunk_len, n_chunks_before=self.n_chunks_before, n_chunks_after=self.n_chunks_after,
            causal=self.causal, attention_mask=attention_mask, dropout_p=self.dropout if self.training else 0.0,
        )
        if attentions is not None:
            seq_len = q.shape[2]
            _whole_chunks(self, seq_len, self.chunk_len)
            chunk_len, before, after, _ = local_chunking(seq_len, self.chunk_len, self.n_chunks_before, self.n_chunks_after)
            positions = torch.arange(seq_len, device=q.device).expand(q.shape[:3])
            key_valid = None if attention_mask is None else attention_mask.bool()[:, None, :].expand(q.shape[:3])
            scores = chunk_scores(
                q, k / math.sqrt(self.attention_head_size), positions, key_valid,
                chunk_len=chunk_len, n_chunks_before=before, n_chunks_after=after, causal=self.causal, self_mask=False,
            )
            attentions.append(_probabilities(scores, full=seq_len <= self.chunk_len))
        return merge_heads(out)

    def decode_step(
        self, hidden_states: torch.Tensor, cache: DecodingCache, key_valid: torch.Tensor, layout_len: int | None = None,
        capacity: int = 0,
    ) -> torch.Tensor:
        """Cached decoding: the output (B, 1, H * d) at position t = key_valid.shape[1] - 1 that
        ``forward`` computes there on the whole sequence, from that position's input alone.

        Arguments as ``LSHSelfAttention.decode_step``; layout_len sets the chunk count, hence which
        chunks the circular neighbour window reaches. Cost per step: one chunk window of attention.
        A padding position t whose keys are all padding (there is no self mask here) has no
        meaningful output: forward averages every key of its window there, future ones included,
        and the step differs.
        """
        position = _check_decoding(self, hidden_states, cache, key_valid, layout_len)
        seq_len = position + 1 if layout_len is None else layout_len
        heads = self.num_attention_heads
        q, k, v = (split_heads(proj(hidden_states), heads) for proj in (self.query, self.key, self.value))
        cache.write(position, k, v, capacity)
        chunk_len, before, after, padded_len = local_chunking(seq_len, self.chunk_len, self.n_chunks_before, self.n_chunks_after)
        neighbours = torch.arange(-before, after + 1, device=q.device)
        window_chunks = (position // chunk_len + neighbours) % (padded_len // chunk_len)
        key_positions = (window_chunks[:, None] * chunk_len + torch.arange(chunk_len, device=q.device)).flatten()
        real = key_positions.clamp(max=position)
        valid = (key_positions <= position) & key_valid[:, real]
        out, _ = _attend_window(
            q, cache.keys[:, :, real] / math.sqrt(self.attention_head_size), cache.values[:, :, real], position,
            key_positions, valid[:, None, :], causal=True, self_mask=False,
        )
        return merge_heads(out[:, :, None])

    def fill_cache(self, hidden_states: torch.Tensor, cache: DecodingCache, capacity: int = 0) -> None:
        """Store the keys and values of positions [0, L) of hidden_states (B, L, hidden_size) (this
        layer's inputs on a prompt) in ``cache``, for ``decode_step`` at position L and on."""
        _check_hidden_states(self, hidden_states, self.hidden_size)
        heads = self.num_attention_heads
        cache.write(0, split_heads(self.key(hidden_states), heads), split_heads(self.value(hidden_states), heads), capacity)
