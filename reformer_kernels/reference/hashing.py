"""Angular LSH (the paper's section 2): rotate each vector randomly, bucket = argmax([xR, -xR])."""
import math

import torch


def default_num_buckets(seq_len: int, chunk_len: int, max_position_embeddings: int) -> int | tuple[int, int]:
    """The paper's advice of about 2 * seq_len / chunk_len buckets, as transformers picks it.

    A power of two (rounded down); when it exceeds 2 * max(sqrt(max_position_embeddings /
    chunk_len), chunk_len) it is split into two factors, which keeps the rotations small.
    Needs seq_len >= chunk_len (shorter sequences get full attention and no hashing).
    """
    exponent = (2 * (seq_len // chunk_len)).bit_length() - 1
    limit = 2 * max(int(math.sqrt(max_position_embeddings // chunk_len)), chunk_len)
    if 2**exponent > limit:
        return 2 ** (exponent // 2), 2 ** (exponent - exponent // 2)
    return 2**exponent


def bucket_factors(n_buckets: int | tuple[int, ...]) -> tuple[int, ...]:
    """``n_buckets`` as a tuple of factors (one factor when it is an int)."""
    return (n_buckets,) if isinstance(n_buckets, int) else tuple(n_buckets)


def pads_anything(attention_mask: torch.Tensor | None) -> bool:
    """Whether ``attention_mask`` pads some token, which gives padding its own bucket. Inside
    torch.compile the answer cannot be read from the mask without breaking the graph, so any mask
    counts: an empty padding bucket changes the ids but not the sort order, hence not the attention."""
    if attention_mask is None:
        return False
    return torch.compiler.is_compiling() or not bool(attention_mask.bool().all())


def hash_vectors(
    vectors: torch.Tensor,
    rotations: torch.Tensor,
    n_buckets: int | tuple[int, ...],
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Bucket ids of every vector in every hash round, offset so that rounds never share an id.

    vectors: (B, H, L, d). rotations: (H, d, n_hashes, R / 2), R = n_buckets or sum(n_buckets).
    n_buckets: even int, or tuple of even factors b1, b2, ... (bucket = i1 + b1 * i2 + b1 * b2 * i3
    ..., factor k hashed with its own R-slice). attention_mask: (B, L), 0 = padding, or None.
    When the mask pads anything in the batch, padding tokens get the extra bucket n = prod(n_buckets)
    and every round has n + 1 buckets. Returns ``(buckets, num_keys)``: (B, H, n_hashes * L) int64,
    round r's ids in [r * n', (r + 1) * n'), and num_keys = n_hashes * n', the bound for
    ``sort_buckets``.
    """
    n_hashes = rotations.shape[2]
    # Hashing picks buckets; no gradient flows through an argmax.
    rotated = torch.einsum("bhld,hdnr->bhnlr", vectors.detach(), rotations)

    buckets = None
    start, n_buckets_per_round = 0, 1
    for factor in bucket_factors(n_buckets):
        part = rotated[..., start : start + factor // 2]
        start += factor // 2
        factor_buckets = torch.argmax(torch.cat([part, -part], dim=-1), dim=-1)
        buckets = factor_buckets if buckets is None else buckets + n_buckets_per_round * factor_buckets
        n_buckets_per_round *= factor

    if pads_anything(attention_mask):
        padding_bucket = n_buckets_per_round
        n_buckets_per_round += 1
        buckets = torch.where(attention_mask.bool()[:, None, None, :], buckets, padding_bucket)

    offsets = torch.arange(n_hashes, device=vectors.device)[:, None] * n_buckets_per_round
    return (buckets + offsets).flatten(2), n_hashes * n_buckets_per_round
