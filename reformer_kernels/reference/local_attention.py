"""Local attention: each chunk of queries attends to its own and neighbouring chunks of keys, with
separate q, k, v projections and no hashing (the Reformer's "local" layers)."""
import math

import torch

from .chunked import attend_in_chunks, dropout_mask_shape, pad_sequence
from .dropout import dropout_keep


def local_chunking(seq_len: int, chunk_len: int, n_chunks_before: int, n_chunks_after: int) -> tuple[int, int, int, int]:
    """``(chunk_len, n_chunks_before, n_chunks_after, padded_len)`` that local attention really uses.

    A sequence no longer than one chunk gets full attention (one chunk of seq_len, no neighbours,
    so no key is seen twice); a longer one is padded up to a multiple of chunk_len.
    """
    if seq_len <= chunk_len:
        return seq_len, 0, 0, seq_len
    return chunk_len, n_chunks_before, n_chunks_after, math.ceil(seq_len / chunk_len) * chunk_len


def local_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    chunk_len: int,
    n_chunks_before: int,
    n_chunks_after: int,
    causal: bool,
    attention_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    dropout_seed: int = 0,
    dropout_offset: int = 0,
) -> torch.Tensor:
    """Chunked attention in sequence order.

    q, k, v: (B, H, L, d) float, any L. Keys are scaled by 1 / sqrt(d). attention_mask: (B, L),
    0 = padding key, or None. Padding and (if causal) future keys get -1e9 (fp16: -1e4); there is no
    self mask. Neighbour chunks wrap around the (padded) sequence. Attention dropout (dropout_p >
    0): the Philox stream keyed by (dropout_seed, dropout_offset) over ``dropout_mask_shape(B, H,
    padded_len, chunk_len', before', after')`` with the values of ``local_chunking`` keeps a
    probability (scaled by 1 / (1 - dropout_p)) or drops it. Returns out (B, H, L, d).
    """
    batch, heads, seq_len, head_dim = q.shape
    chunk_len, n_chunks_before, n_chunks_after, padded_len = local_chunking(seq_len, chunk_len, n_chunks_before, n_chunks_after)
    keys = k / math.sqrt(head_dim)
    if padded_len > seq_len:
        (q, keys, v), attention_mask = pad_sequence((q, keys, v), attention_mask, padded_len)

    dropout_mask = None
    if dropout_p > 0.0:
        shape = dropout_mask_shape(batch, heads, padded_len, chunk_len, n_chunks_before, n_chunks_after)
        dropout_mask = dropout_keep(shape, dropout_p, dropout_seed, dropout_offset, q.device)
    positions = torch.arange(padded_len, device=q.device).expand(batch, heads, padded_len)
    key_valid = None if attention_mask is None else attention_mask.bool()[:, None, :].expand(batch, heads, padded_len)
    out, _ = attend_in_chunks(
        q,
        keys,
        v,
        positions,
        key_valid,
        chunk_len=chunk_len,
        n_chunks_before=n_chunks_before,
        n_chunks_after=n_chunks_after,
        causal=causal,
        self_mask=False,
        dropout_mask=dropout_mask,
        dropout_p=dropout_p,
    )
    return out[:, :, :seq_len]
