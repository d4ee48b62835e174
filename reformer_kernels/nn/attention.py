"""Reformer self-attention modules: the projections around the functional ops.

Parameter names match transformers' ``self_attention`` submodules (``query_key``/``value`` for LSH,
``query``/``key``/``value`` for local), so their state dicts load into each other.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import functional
from ..ops.hashing import seeded_randn
from ..reference.chunked import chunk_scores
from ..reference.hashing import bucket_factors
from ..reference.local_attention import local_chunking
from ..reference.lsh_attention import gather_rows, shared_qk_keys


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, L, H * d) -> (B, H, L, d)."""
    return x.unflatten(-1, (n_heads, -1)).transpose(1, 2)


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


class LSHSelfAttention(nn.Module):
    """Shared-QK LSH self-attention (the paper's section 2).

    Input (B, L, hidden_size) -> output (B, L, num_attention_heads * attention_head_size), before
    the output projection. Sequences no longer than ``chunk_len`` get full attention without
    hashing. Rotations come from ``hash_seed`` through a private generator (the numbers
    ``torch.manual_seed(hash_seed); torch.randn(...)`` would give, without touching the global
    RNG), else from the global RNG, drawn like transformers draws them so the same seed gives the
    same buckets. ``num_buckets=None`` picks the count from each call's length (nothing is stored).
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
        n_hashes = self.num_hashes if num_hashes is None else num_hashes
        qk = split_heads(self.query_key(hidden_states), self.num_attention_heads)
        v = split_heads(self.value(hidden_states), self.num_attention_heads)
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
