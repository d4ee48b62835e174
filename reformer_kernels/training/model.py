"""The model a run trains: the ReformerConfig settings of a causal LM without dropout, from the
run's sizes. Separate so that the benchmarks build the same model as ``train`` (bench_quality).
"""
from __future__ import annotations

from ..functional import default_num_buckets


def model_settings(
    *, vocab_size: int, seq_len: int, heads: int, head_dim: int, chunk_len: int, attn_layers, num_hashes: int,
    pad_token_id: int | None = None, eos_token_id: int | None = None,
) -> dict:
    """ReformerConfig keyword arguments (also valid for transformers' ReformerConfig) of a causal
    LM without dropout: learned positions for ``seq_len`` tokens, feed-forward 2 x hidden,
    ``chunk_len`` for both attention kinds, num_buckets chosen as transformers would for seq_len."""
    hidden = heads * head_dim
    n_buckets = default_num_buckets(seq_len, chunk_len, seq_len)
    return dict(
        vocab_size=vocab_size, hidden_size=hidden, num_attention_heads=heads, attention_head_size=head_dim,
        feed_forward_size=2 * hidden, attn_layers=list(attn_layers), num_hashes=num_hashes,
        num_buckets=list(n_buckets) if isinstance(n_buckets, tuple) else n_buckets,
        lsh_attn_chunk_length=chunk_len, local_attn_chunk_length=chunk_len, max_position_embeddings=seq_len,
        axial_pos_embds=False, is_decoder=True, hidden_dropout_prob=0.0, lsh_attention_probs_dropout_prob=0.0,
        local_attention_probs_dropout_prob=0.0, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
    )
