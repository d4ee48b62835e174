"""Reformer self-attention modules: the projections around the functional ops.

Parameter names match transformers' ``self_attention`` submodules (``query_key``/``value`` for LSH,
``query``/``key``/``value`` for local), so their state dicts load into each other.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import functional
from ..reference.hashing import bucket_factors


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, L, H * d) -> (B, H, L, d)."""
    return x.unflatten(-1, (n_heads, -1)).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, L, d) -> (B, L, H * d)."""
    return x.transpose(1, 2).flatten(2)


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
        generator = None
        if self.hash_seed is not None:
            generator = torch.Generator(device=like.device).manual_seed(self.hash_seed)
        return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, num_hashes: int | None = None
    ) -> torch.Tensor:
        """hidden_states (B, L, hidden_size); attention_mask (B, L), 0 = padding; num_hashes overrides the module's."""
        _check_hidden_states(self, hidden_states, self.hidden_size)
        n_hashes = self.num_hashes if num_hashes is None else num_hashes
        qk = split_heads(self.query_key(hidden_states), self.num_attention_heads)
        v = split_heads(self.value(hidden_states), self.num_attention_heads)
        seq_len = qk.shape[2]
        dropout_p = self.dropout if self.training else 0.0
        if seq_len <= self.chunk_len:
            sorted_idx = torch.arange(seq_len, device=qk.device).expand(qk.shape[:3])
            out = functional.lsh_attention(
                qk, v, sorted_idx, n_hashes=1, chunk_len=seq_len, n_chunks_before=0, n_chunks_after=0,
                causal=self.causal, attention_mask=attention_mask, dropout_p=dropout_p,
            )
        else:
            n_buckets = self.num_buckets
            if n_buckets is None:
                n_buckets = functional.default_num_buckets(seq_len, self.chunk_len, self.max_position_embeddings)
            out = functional.lsh_self_attention(
                qk, v, self.draw_rotations(n_hashes, n_buckets, qk), n_buckets,
                chunk_len=self.chunk_len, n_chunks_before=self.n_chunks_before, n_chunks_after=self.n_chunks_after,
                causal=self.causal, attention_mask=attention_mask, dropout_p=dropout_p,
            )
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

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """hidden_states (B, L, hidden_size); attention_mask (B, L), 0 = padding."""
        _check_hidden_states(self, hidden_states, self.hidden_size)
        q, k, v = (split_heads(proj(hidden_states), self.num_attention_heads) for proj in (self.query, self.key, self.value))
        out = functional.local_attention(
            q, k, v, chunk_len=self.chunk_len, n_chunks_before=self.n_chunks_before, n_chunks_after=self.n_chunks_after,
            causal=self.causal, attention_mask=attention_mask, dropout_p=self.dropout if self.training else 0.0,
        )
        return merge_heads(out)
