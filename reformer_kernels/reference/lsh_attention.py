"""LSH attention (the paper's section 2) on an already bucket-sorted sequence.

Shared-QK: the queries are the projections ``qk`` themselves, the keys are ``qk`` normalized to
unit RMS and divided by sqrt(d). After sorting by (round, bucket, position) the sequence of
n_hashes * L entries is cut into chunks; each chunk attends to itself and its neighbours, and the
rounds are combined by their softmax normalizers.
"""
import math

import torch

from .chunked import attend_in_chunks, dropout_mask_shape
from .dropout import dropout_keep

RMS_EPS = 1e-6


def shared_qk_keys(qk: torch.Tensor) -> torch.Tensor:
    """Keys of shared-QK attention: ``qk`` (..., d) divided by its RMS (eps 1e-6) and by sqrt(d)."""
    return qk * torch.rsqrt(torch.mean(qk**2, dim=-1, keepdim=True) + RMS_EPS) / math.sqrt(qk.shape[-1])


def gather_rows(vectors: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """vectors (B, H, L, d), idx (B, H, N) in [0, L) -> (B, H, N, d) with row j = vectors[..., idx[j], :]."""
    return vectors.gather(2, idx[..., None].expand(*idx.shape, vectors.shape[-1]))


def lsh_attention(
    qk: torch.Tensor,
    v: torch.Tensor,
    sorted_idx: torch.Tensor,
    *,
    n_hashes: int,
    chunk_len: int,
    n_chunks_before: int,
    n_chunks_after: int,
    causal: bool,
    attention_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    dropout_seed: int = 0,
    dropout_offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked attention in bucket order, un-sorted and combined over hash rounds.

    qk, v: (B, H, L, d) float. sorted_idx: (B, H, n_hashes * L) int32 or int64, a permutation of the flat
    round-major indices (entry r * L + i is position i in round r), as ``sort_buckets`` returns.
    (n_hashes * L) % chunk_len == 0. attention_mask: (B, L), 0 = padding key, or None.
    Attention dropout (dropout_p > 0): the probabilities that the Philox stream keyed by
    (dropout_seed, dropout_offset) keeps over ``dropout_mask_shape(B, H, n_hashes * L, chunk_len,
    before, after)`` (``dropout.dropout_keep``) are scaled by 1 / (1 - dropout_p), the others dropped.

    Masks: padding keys and (if causal) keys after the query get -1e9, the query's own position
    -1e5 (fp16: -1e4, -1e3). Returns ``(out, lse)``: out (B, H, L, d); lse (B, H, n_hashes, L), the
    log-sum-exp of each round's scores at original positions; out = sum_r out_r * softmax_r(lse).
    """
    batch, heads, seq_len, _ = qk.shape
    dropout_mask = None
    if dropout_p > 0.0:
        shape = dropout_mask_shape(batch, heads, n_hashes * seq_len, chunk_len, n_chunks_before, n_chunks_after)
        dropout_mask = dropout_keep(shape, dropout_p, dropout_seed, dropout_offset, qk.device)
    positions = sorted_idx % seq_len
    key_valid = None
    if attention_mask is not None:
        key_valid = attention_mask.bool()[:, None, :].expand(batch, heads, seq_len).gather(2, positions)

    out_sorted, lse_sorted = attend_in_chunks(
        gather_rows(qk, positions),
        gather_rows(shared_qk_keys(qk), positions),
        gather_rows(v, positions),
        positions,
        key_valid,
        chunk_len=chunk_len,
        n_chunks_before=n_chunks_before,
        n_chunks_after=n_chunks_after,
        causal=causal,
        self_mask=True,
        dropout_mask=dropout_mask,
        dropout_p=dropout_p,
    )

    undo_sort = torch.argsort(sorted_idx, dim=-1)
    out_per_round = gather_rows(out_sorted, undo_sort).unflatten(2, (n_hashes, seq_len))
    lse = lse_sorted.gather(2, undo_sort).unflatten(2, (n_hashes, seq_len))
    round_weights = torch.exp(lse - torch.logsumexp(lse, dim=2, keepdim=True))
    return (out_per_round * round_weights[..., None]).sum(dim=2), lse
