"""Explicit FLOP formulas: the useful work of each benchmarked op, independent of how it is computed.

A multiply-add counts as 2 FLOPs. Only matrix products are counted (softmax, masks, argmax, sorting
and gathers are not), so TFLOP/s compares competitors doing the same op on the same inputs.
Backward is counted as twice the forward's differentiable products (a gradient for each operand),
without the recomputation a fused kernel may do: recomputing is the kernel's cost, not the op's work.
Causal dense attention counts half the score matrix, as FlashAttention's benchmarks do.
"""
from __future__ import annotations

from reformer_kernels.reference.hashing import bucket_factors


def linear(tokens: int, d_in: int, d_out: int) -> float:
    """tokens x (d_in -> d_out) projection."""
    return 2.0 * tokens * d_in * d_out


def hashing(batch: int, heads: int, seq_len: int, head_dim: int, n_hashes: int, n_buckets: int | tuple[int, ...]) -> float:
    """Random rotations: (B, H, L, d) x (H, d, n_hashes, R/2), R = n_buckets or the sum of its factors."""
    return 2.0 * batch * heads * seq_len * head_dim * n_hashes * (sum(bucket_factors(n_buckets)) // 2)


def chunked_attention(batch: int, heads: int, seq_len: int, head_dim: int, chunk_len: int,
                      n_chunks_before: int, n_chunks_after: int, n_rounds: int = 1) -> float:
    """Scores q.k and the weighted sum p.v of every query against the keys of its own chunk and its
    neighbours, in each of ``n_rounds`` hash rounds (1 for local attention). A sequence no longer than
    one chunk attends to all of it."""
    keys = seq_len if seq_len <= chunk_len else chunk_len * (1 + n_chunks_before + n_chunks_after)
    return 4.0 * batch * heads * n_rounds * seq_len * keys * head_dim


def dense_attention(batch: int, heads: int, seq_len: int, head_dim: int, causal: bool) -> float:
    """Full L x L attention (SDPA)."""
    return 4.0 * batch * heads * seq_len * seq_len * head_dim / (2 if causal else 1)


def with_backward(forward: float, differentiable: float | None = None) -> float:
    """Forward + backward, where ``differentiable`` (default: all of ``forward``) gets two gradient products."""
    return forward + 2.0 * (forward if differentiable is None else differentiable)


def lsh_layer(batch: int, heads: int, seq_len: int, head_dim: int, hidden: int, n_hashes: int,
              n_buckets, chunk_len: int, n_chunks_before: int, n_chunks_after: int) -> tuple[float, float]:
    """(forward, forward+backward) of an LSH self-attention layer: the shared query/key and the value
    projections, hashing (no gradient), and attention over the hash rounds."""
    tokens = batch * seq_len
    projections = 2 * linear(tokens, hidden, heads * head_dim)
    attention = chunked_attention(batch, heads, seq_len, head_dim, chunk_len, n_chunks_before, n_chunks_after, n_hashes)
    hashed = 0.0 if seq_len <= chunk_len else hashing(batch, heads, seq_len, head_dim, n_hashes, n_buckets)
    return projections + attention + hashed, with_backward(projections + attention + hashed, projections + attention)


def local_layer(batch: int, heads: int, seq_len: int, head_dim: int, hidden: int, chunk_len: int,
                n_chunks_before: int, n_chunks_after: int) -> tuple[float, float]:
    """(forward, forward+backward) of a local self-attention layer: q, k, v projections and chunked attention."""
    projections = 3 * linear(batch * seq_len, hidden, heads * head_dim)
    forward = projections + chunked_attention(batch, heads, seq_len, head_dim, chunk_len, n_chunks_before, n_chunks_after)
    return forward, with_backward(forward)


def dense_layer(batch: int, heads: int, seq_len: int, head_dim: int, hidden: int, n_projections: int,
                causal: bool) -> tuple[float, float]:
    """(forward, forward+backward) of projections + full attention, the dense baseline of a layer."""
    forward = n_projections * linear(batch * seq_len, hidden, heads * head_dim) + dense_attention(batch, heads, seq_len, head_dim, causal)
    return forward, with_backward(forward)


def reformer_lm(batch: int, seq_len: int, hidden: int, heads: int, head_dim: int, feed_forward: int, vocab: int,
                attn_layers: list[str], n_hashes: int, n_buckets, lsh_chunk_len: int, lsh_before: int, lsh_after: int,
                local_chunk_len: int, local_before: int, local_after: int) -> tuple[float, float]:
    """(forward, training step) of a Reformer LM: per layer its attention (LSH or local, with the
    output projection) and the two feed-forward products; the LM head reads the 2 * hidden
    concatenation of the reversible halves. Hashing has no gradient; embeddings are lookups."""
    tokens = batch * seq_len
    all_heads = heads * head_dim
    forward = differentiable = linear(tokens, 2 * hidden, vocab)
    for kind in attn_layers:
        if kind == "lsh":
            layer, _ = lsh_layer(batch, heads, seq_len, head_dim, hidden, n_hashes, n_buckets, lsh_chunk_len, lsh_before, lsh_after)
            hashed = 0.0 if seq_len <= lsh_chunk_len else hashing(batch, heads, seq_len, head_dim, n_hashes, n_buckets)
        else:
            layer, _ = local_layer(batch, heads, seq_len, head_dim, hidden, local_chunk_len, local_before, local_after)
            hashed = 0.0
        layer += linear(tokens, all_heads, hidden) + 2 * linear(tokens, hidden, feed_forward)
        forward += layer
        differentiable += layer - hashed
    return forward, with_backward(forward, differentiable)
