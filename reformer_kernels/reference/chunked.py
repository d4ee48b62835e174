"""Attention inside chunks of a sequence, each chunk also seeing its neighbour chunks (circularly).

LSH attention runs it on the bucket-sorted sequence, local attention on the sequence as it is;
both use the one masking rule written here.
"""
import torch


def mask_values(dtype: torch.dtype) -> tuple[float, float]:
    """The scores given to (forbidden keys, the query's own position) in ``dtype``.

    fp16 cannot hold -1e9, so it gets smaller magnitudes, as in transformers' Reformer. The self
    mask is weaker than the padding/causal mask so that a token attends to itself only when it
    has nothing else to attend to.
    """
    if dtype == torch.float16:
        return -1e4, -1e3
    return -1e9, -1e5


def with_neighbours(chunks: torch.Tensor, n_chunks_before: int, n_chunks_after: int) -> torch.Tensor:
    """(B, H, C, chunk_len, ...) -> (B, H, C, (1 + before + after) * chunk_len, ...): for chunk c,
    chunks c - before, ..., c + after concatenated, indices taken modulo C (the sequence is a ring)."""
    if n_chunks_before == 0 and n_chunks_after == 0:
        return chunks
    shifted = [torch.roll(chunks, shifts=-offset, dims=2) for offset in range(-n_chunks_before, n_chunks_after + 1)]
    return torch.cat(shifted, dim=3)


def dropout_mask_shape(
    batch: int, heads: int, n_queries: int, chunk_len: int, n_chunks_before: int, n_chunks_after: int
) -> tuple[int, int, int, int, int]:
    """Shape of the chunked score tensor of ``attend_in_chunks``, which a dropout mask covers."""
    return (batch, heads, n_queries // chunk_len, chunk_len, (1 + n_chunks_before + n_chunks_after) * chunk_len)


def pad_sequence(
    tensors: tuple[torch.Tensor, ...], attention_mask: torch.Tensor | None, padded_len: int
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Zero-pad each (B, H, L, d) tensor along L to ``padded_len`` and return them with the (B,
    padded_len) bool mask that marks the added positions as padding (all real positions are kept
    when ``attention_mask`` is None)."""
    batch, _, seq_len, _ = tensors[0].shape
    extra = padded_len - seq_len
    padded = tuple(torch.nn.functional.pad(t, (0, 0, 0, extra)) for t in tensors)
    device = tensors[0].device
    real = torch.ones(batch, seq_len, dtype=torch.bool, device=device) if attention_mask is None else attention_mask.bool()
    mask = torch.cat([real, torch.zeros(batch, extra, dtype=torch.bool, device=device)], dim=1)
    return padded, mask


def chunk_scores(
    queries: torch.Tensor,
    keys: torch.Tensor,
    positions: torch.Tensor,
    key_valid: torch.Tensor | None,
    *,
    chunk_len: int,
    n_chunks_before: int,
    n_chunks_after: int,
    causal: bool,
    self_mask: bool,
) -> torch.Tensor:
    """The masked scores of ``attend_in_chunks``: (B, H, N / chunk_len, chunk_len, (1 + before +
    after) * chunk_len), query rows against their chunk's and its neighbours' keys (arguments as there)."""
    batch, heads, n, _ = queries.shape
    n_chunks = n // chunk_len

    def chunked(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(batch, heads, n_chunks, chunk_len, *t.shape[3:])

    def around(t: torch.Tensor) -> torch.Tensor:
        return with_neighbours(chunked(t), n_chunks_before, n_chunks_after)

    scores = chunked(queries) @ around(keys).transpose(-1, -2)
    return mask_scores(
        scores, chunked(positions)[..., :, None], around(positions)[..., None, :],
        None if key_valid is None else around(key_valid)[..., None, :], causal=causal, self_mask=self_mask,
    )


def mask_scores(
    scores: torch.Tensor,
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    key_valid: torch.Tensor | None,
    *,
    causal: bool,
    self_mask: bool,
) -> torch.Tensor:
    """The one masking rule: ``scores`` (..., queries, keys) with padding keys (``key_valid``
    False) and, if causal, keys after the query set to -1e9, then the query's own position to
    -1e5 if ``self_mask`` (fp16: -1e4, -1e3). Positions and key_valid broadcast against scores."""
    mask_value, self_mask_value = mask_values(scores.dtype)
    allowed = key_valid
    if causal:
        not_future = query_positions >= key_positions
        allowed = not_future if allowed is None else allowed & not_future
    if allowed is not None:
        scores = torch.where(allowed, scores, mask_value)
    if self_mask:
        # Applied after (and so overriding) the other masks: a query whose every key is forbidden
        # falls back to itself rather than to a uniform mix of padding.
        scores = torch.where(query_positions != key_positions, scores, self_mask_value)
    return scores


def attend_in_chunks(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    positions: torch.Tensor,
    key_valid: torch.Tensor | None,
    *,
    chunk_len: int,
    n_chunks_before: int,
    n_chunks_after: int,
    causal: bool,
    self_mask: bool,
    dropout_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of each chunk of ``chunk_len`` queries over its own and neighbour chunks' keys.

    queries, keys, values: (B, H, N, d), N a multiple of chunk_len, already in attention order
    (sorted by bucket for LSH). positions: (B, H, N) int64, each row's position in the original
    sequence, for the causal and self masks. key_valid: (B, H, N) bool, False for padding keys, or
    None. dropout_mask: bool (B, H, N / chunk_len, chunk_len, window * chunk_len) as
    ``dropout_mask_shape``, True where a probability is kept (then scaled by 1 / (1 - dropout_p)),
    or None. Returns ``(out, lse)``: (B, H, N, d) and the log-sum-exp of each query's scores
    (B, H, N), before dropout.
    """
    batch, heads, n, head_dim = queries.shape
    scores = chunk_scores(
        queries, keys, positions, key_valid, chunk_len=chunk_len, n_chunks_before=n_chunks_before,
        n_chunks_after=n_chunks_after, causal=causal, self_mask=self_mask,
    )
    mask_value, _ = mask_values(scores.dtype)
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    probs = torch.exp(scores - lse)
    # A query whose every key is masked has equal scores, so softmax is uniform: the mean of the
    # window's values. exp(scores - lse) is not, below float64: lse = -1e9 + log(n) rounds back to
    # -1e9 (float32 steps are 64 there), each probability would be 1 and the query get their sum.
    sees_nothing = (scores == mask_value).all(dim=-1, keepdim=True)
    probs = torch.where(sees_nothing, 1.0 / scores.shape[-1], probs)
    if dropout_mask is not None:
        probs = torch.where(dropout_mask, probs * (1.0 / (1.0 - dropout_p)), 0.0)
    around_values = with_neighbours(values.reshape(batch, heads, n // chunk_len, chunk_len, head_dim), n_chunks_before, n_chunks_after)
    out = probs @ around_values
    return out.reshape(batch, heads, n, head_dim), lse.reshape(batch, heads, n)
