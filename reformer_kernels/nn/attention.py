"""Reformer self-attention modules: the projections around the functional ops.

Parameter names match transformers' ``self_attention`` submodules (``query_key``/``value`` for LSH,
``query``/``key``/``value`` for local), so their state dicts load into each other.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import functional
from ..ops.lsh_decode_step.reference import POSITION_BITS, attend_window, recent_ranks
from ..ops.seeded_randn import seeded_randn
from ..reference.chunked import chunk_scores
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


class BucketOrder:
    """The order ``forward`` sorts the positions [0, length) of each hash round in: by bucket, then
    position, padding in the extra bucket after the others; kept incrementally as positions arrive.

    Entries are sort keys (bucket * 2**POSITION_BITS + position) in two sorted runs per (batch,
    head, round): ``merged`` (B, H, n_hashes, m), and the first ``n_recent`` of ``recent``, the at
    most ``merge_every`` keys that ``functional.lsh_decode_step`` inserted since the last merge (a
    new position is the last of its bucket, so the step's cost does not grow with the length); the
    O(length) merge runs once every ``merge_every`` steps. ``rotations``: the ones the keys were
    hashed with, ``hashed_with``: their (n_hashes, n_buckets, dtype, device), so a fixed
    ``hash_seed`` draws them once.
    """

    def __init__(self, merged: torch.Tensor, hashed_with: tuple, rotations: torch.Tensor, merge_every: int) -> None:
        """merged (B, H, n_hashes, length): the keys of positions [0, length), sorted, contiguous."""
        self.merged = merged
        self.rotations = rotations
        self.recent = merged.new_empty(*merged.shape[:3], merge_every)
        self.n_recent = 0
        self.hashed_with = hashed_with

    @property
    def length(self) -> int:
        return self.merged.shape[-1] + self.n_recent

    def merge_if_full(self) -> None:
        """Merge ``recent`` into ``merged`` once it holds ``merge_every`` keys: O(length)."""
        if self.n_recent < self.recent.shape[-1]:
            return
        recent = self.recent[..., : self.n_recent].contiguous()
        # Each key goes to its rank in the union (keys are distinct): scatters, no boolean indexing,
        # so that a GPU merge reads nothing on the host either.
        merged = self.merged.new_empty(*recent.shape[:3], self.length)
        merged.scatter_(-1, recent_ranks(self.merged, recent), recent)
        merged_ranks = torch.searchsorted(recent, self.merged) + torch.arange(self.merged.shape[-1], device=recent.device)
        merged.scatter_(-1, merged_ranks, self.merged)
        self.merged, self.n_recent = merged, 0


class DecodingCache:
    """What one attention layer keeps of the positions decoded so far, for the next position.

    Local layers: their keys and values; LSH layers: their shared query/key projections and values,
    plus ``order``, the ``BucketOrder`` of those positions for the rotations and bucket count they
    were hashed with (a fixed ``hash_seed`` lets a step insert only the new position; a change of
    count or fresh rotations rehashes and re-sorts them all). Tensors (B, H, capacity, d),
    preallocated for ``capacity`` positions: a step writes in place; writing past the capacity
    reallocates to the capacity asked. ``merge_every``: see ``BucketOrder``.
    """

    def __init__(self, merge_every: int = 256) -> None:
        if not _is_int(merge_every) or merge_every < 1:
            raise ValueError(f"DecodingCache: merge_every must be an int >= 1, got {merge_every!r}")
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.order: BucketOrder | None = None
        self.merge_every = merge_every
        self.length = 0

    def write(self, position: int, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> None:
        """Store keys, values (B, H, n, d) at positions [position, position + n); the cache then
        holds positions [0, position + n)."""
        end = position + keys.shape[2]
        if self.order is not None and self.order.length != position:
            self.order = None  # it no longer describes the cached positions: rebuilt when needed
        if self.keys is None or self.keys.shape[2] < end:
            size = max(capacity, end)
            # Positions past the written ones are never read: no need to zero them.
            grown = [t.new_empty(*t.shape[:2], size, t.shape[3]) for t in (keys, values)]
            if self.keys is not None:
                for new, old in zip(grown, (self.keys, self.values)):
                    new[:, :, :position] = old[:, :, :position]
            self.keys, self.values = grown
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
    batch, heads, head_size = hidden_states.shape[0], module.num_attention_heads, module.attention_head_size
    held = cache.keys
    if held is not None and (held.shape[:2] != (batch, heads) or held.shape[3] != head_size or held.dtype != hidden_states.dtype
                             or held.device != hidden_states.device):
        raise ValueError(
            f"{type(module).__name__}: cache holds {tuple(held.shape)} {held.dtype} on {held.device} but this layer needs (batch={batch}, "
            f"heads={heads}, positions, head_size={head_size}) {hidden_states.dtype} on {hidden_states.device}: pass the cache "
            "this layer filled for these rows"
        )
    if layout_len is not None and (not _is_int(layout_len) or layout_len <= position):
        raise ValueError(f"{type(module).__name__}: layout_len {layout_len!r} must be an int > the position {position} (or None)")
    return position


def _check_cached_len(module: nn.Module, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, cached_len: int | None) -> int:
    """fill_cache's cached_len: the positions [0, cached_len) to cache, the rest padding the model added."""
    _check_hidden_states(module, hidden_states, module.hidden_size)
    seq_len = hidden_states.shape[1]
    if cached_len is None:
        return seq_len
    if not _is_int(cached_len) or not 1 <= cached_len <= seq_len:
        raise ValueError(f"{type(module).__name__}: cached_len must be an int in [1, {seq_len}] (the prompt's length), got {cached_len!r}")
    if cached_len < seq_len and (
        attention_mask is None or (functional.checks_values(attention_mask) and bool(attention_mask[:, cached_len:].bool().any()))
    ):
        raise ValueError(
            f"{type(module).__name__}: the positions past cached_len {cached_len} must be padding (attention_mask 0): "
            "pass the mask of the padded prompt, or cached_len=None to cache every position"
        )
    return cached_len


def _sort_keys(
    vectors: torch.Tensor, rotations: torch.Tensor, n_buckets, valid: torch.Tensor, start: int
) -> torch.Tensor:
    """The ``BucketOrder`` keys (B, H, n_hashes, n) of positions [start, start + n) with shared
    query/key projections ``vectors`` (B, H, n, d): each round's bucket, the padding bucket
    prod(n_buckets) where ``valid`` (B, n) is False, packed with the position. The ids, not
    ``lsh_hash_sort``'s order: decoding searches and merges the keys themselves."""
    n_hashes = rotations.shape[2]
    per_round = math.prod(bucket_factors(n_buckets))
    buckets, _ = functional.lsh_hash(vectors, rotations, n_buckets)
    offsets = torch.arange(n_hashes, device=vectors.device)[:, None] * per_round
    buckets = torch.where(valid[:, None, None, :], buckets.unflatten(2, (n_hashes, -1)) - offsets, per_round)
    return buckets * 2**POSITION_BITS + torch.arange(start, start + vectors.shape[2], device=vectors.device)


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
        return self._attend(hidden_states, attention_mask, num_hashes, attentions, None, 0, 0)

    def fill_cache(
        self, hidden_states: torch.Tensor, cache: DecodingCache, capacity: int = 0, attention_mask: torch.Tensor | None = None,
        num_hashes: int | None = None, cached_len: int | None = None, attentions: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``forward`` on a prompt (arguments as there: this layer's inputs, padded as the model pads
        them) that also stores in ``cache`` the projections of positions [0, cached_len) (default:
        all), for ``decode_step`` at position cached_len and on, and the bucket order it sorted them
        in (when L is a whole number of chunks), so the prefill costs one forward. Returns forward's
        output. ``capacity``: positions to allocate the cache for."""
        cached_len = _check_cached_len(self, hidden_states, attention_mask, cached_len)
        return self._attend(hidden_states, attention_mask, num_hashes, attentions, cache, cached_len, capacity)

    def _attend(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, num_hashes: int | None,
        attentions: list[torch.Tensor] | None, cache: DecodingCache | None, cached_len: int, capacity: int,
    ) -> torch.Tensor:
        _check_hidden_states(self, hidden_states, self.hidden_size)
        if num_hashes is not None:
            check_int("LSHSelfAttention", "num_hashes", num_hashes, 1)
        n_hashes = self.num_hashes if num_hashes is None else num_hashes
        qk, v = functional.head_projections(hidden_states, [self.query_key.weight, self.value.weight], self.num_attention_heads)
        seq_len = qk.shape[2]
        if cache is not None:
            cache.write(0, qk[:, :, :cached_len], v[:, :, :cached_len], capacity)
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
            keeps_order = cache is not None and seq_len % self.chunk_len == 0
            if attentions is None and not keeps_order:
                out = functional.lsh_self_attention(qk, v, rotations, n_buckets, **chunking, **masks)
            else:
                # The probabilities and the cache's bucket order need sorted_idx: hash and sort here,
                # not inside the one-call op.
                _whole_chunks(self, seq_len, self.chunk_len)
                if not keeps_order:
                    sorted_idx = functional.lsh_hash_sort(qk, rotations, n_buckets, attention_mask=attention_mask)
                else:
                    # The cache keeps every cached position's bucket (BucketOrder's keys, among which a
                    # decoding step searches its own), which sorted_idx does not carry: this path alone
                    # hashes to the ids, then sorts them.
                    buckets, num_keys = functional.lsh_hash(qk, rotations, n_buckets, attention_mask=attention_mask)
                    sorted_idx, _ = functional.bucket_sort(buckets, num_keys, inverse=False)
                    # Padding sorts last in its round, so each round's first cached_len entries are
                    # the positions < cached_len, in order.
                    ids_per_round = num_keys // n_hashes
                    keys = (buckets % ids_per_round) * 2**POSITION_BITS + torch.arange(seq_len, device=qk.device).repeat(n_hashes)
                    merged = keys.gather(2, sorted_idx).unflatten(2, (n_hashes, seq_len))[..., :cached_len]
                    cache.order = BucketOrder(merged.contiguous(), (n_hashes, n_buckets, qk.dtype, qk.device), rotations, cache.merge_every)
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
        the bucket count when num_buckets is unset, the internal padding and so the chunks. Position
        t is the last of its bucket in every round: the step hashes it, then one call of
        ``functional.lsh_decode_step`` inserts it in ``cache.order`` (the order forward sorts the
        rounds in) and attends, per round, within the chunk its rank falls in and the neighbour
        chunks of that order; rounds combine by lse. No tensor value is read on the host.
        Cost per step (fixed ``hash_seed``): hashing t, a binary search per round and one chunk
        window of attention per round, independent of t (plus an O(t) merge every
        ``cache.merge_every`` steps); the rotations are drawn once. The first step past one chunk
        (unless ``fill_cache`` kept its forward's order), a change of bucket count, or
        ``hash_seed=None`` (fresh rotations every call, as forward draws them) rehashes and sorts
        every cached position. The cache keeps the padding of past positions as the steps saw it:
        key_valid[:, :t] must be the mask of the earlier steps.
        Inference only: no dropout. ``capacity``: positions to allocate the cache for.
        """
        if num_hashes is not None:
            check_int("LSHSelfAttention", "num_hashes", num_hashes, 1)
        position = _check_decoding(self, hidden_states, cache, key_valid, layout_len)
        seq_len = position + 1 if layout_len is None else layout_len
        qk = split_heads(self.query_key(hidden_states), self.num_attention_heads)
        cache.write(position, qk, split_heads(self.value(hidden_states), self.num_attention_heads), capacity)
        keys, values = cache.keys[:, :, : position + 1], cache.values[:, :, : position + 1]
        if seq_len <= self.chunk_len:
            out, _ = attend_window(
                qk, shared_qk_keys(keys), values, position, torch.arange(position + 1, device=qk.device),
                key_valid[:, None, :], causal=True, self_mask=True,
            )
            return merge_heads(out[:, :, None])
        n_hashes = self.num_hashes if num_hashes is None else num_hashes
        n_buckets = self.num_buckets
        if n_buckets is None:
            n_buckets = functional.default_num_buckets(seq_len, self.chunk_len, self.max_position_embeddings)
        order, hashed_with = cache.order, (n_hashes, n_buckets, qk.dtype, qk.device)
        if self.hash_seed is not None and order is not None and order.hashed_with == hashed_with:
            sort_keys = _sort_keys(qk, order.rotations, n_buckets, key_valid[:, position:], position)[..., 0]
        else:
            rotations = self.draw_rotations(n_hashes, n_buckets, qk)
            every = _sort_keys(keys, rotations, n_buckets, key_valid, 0)
            cache.order = order = BucketOrder(every[..., :-1].sort(dim=-1).values, hashed_with, rotations, cache.merge_every)
            sort_keys = every[..., -1]
        out = functional.lsh_decode_step(
            cache.keys, cache.values, order.merged, order.recent, order.n_recent, sort_keys, key_valid, position=position,
            padded_len=math.ceil(seq_len / self.chunk_len) * self.chunk_len, chunk_len=self.chunk_len,
            n_chunks_before=self.n_chunks_before, n_chunks_after=self.n_chunks_after,
        )
        order.n_recent += 1
        order.merge_if_full()
        return merge_heads(out[:, :, None])


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
        return self._attend(hidden_states, attention_mask, attentions, None, 0, 0)

    def fill_cache(
        self, hidden_states: torch.Tensor, cache: DecodingCache, capacity: int = 0, attention_mask: torch.Tensor | None = None,
        cached_len: int | None = None, attentions: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``forward`` on a prompt that also stores in ``cache`` the keys and values of positions
        [0, cached_len) (default: all), for ``decode_step`` at position cached_len and on: the
        prefill costs one forward. Returns forward's output."""
        cached_len = _check_cached_len(self, hidden_states, attention_mask, cached_len)
        return self._attend(hidden_states, attention_mask, attentions, cache, cached_len, capacity)

    def _attend(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, attentions: list[torch.Tensor] | None,
        cache: DecodingCache | None, cached_len: int, capacity: int,
    ) -> torch.Tensor:
        _check_hidden_states(self, hidden_states, self.hidden_size)
        q, k, v = (split_heads(proj(hidden_states), self.num_attention_heads) for proj in (self.query, self.key, self.value))
        if cache is not None:
            cache.write(0, k[:, :, :cached_len], v[:, :, :cached_len], capacity)
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
        out, _ = attend_window(
            q, cache.keys[:, :, real] / math.sqrt(self.attention_head_size), cache.values[:, :, real], position,
            key_positions, valid[:, None, :], causal=True, self_mask=False,
        )
        return merge_heads(out[:, :, None])
