"""The cached LSH decoding step in plain PyTorch: the definition the C++ and Triton kernels are
tested against, and the "reference" backend of lsh_decode_step (the arguments of its schema, see
``__init__``).

The bucket order of a hash round is kept as sort keys, bucket * 2**POSITION_BITS + position, in
two sorted runs per (batch, head, round): ``merged`` and ``recent``, the latter holding the keys
inserted since the caller last merged the two. The new position is the last of its bucket, so its
rank is a binary search in ``merged`` plus a count in ``recent``, and the entry at any rank a
binary search over the ranks that the ``recent`` entries hold in the union.
"""
import torch

from ...reference.chunked import mask_scores
from ...reference.lsh_attention import gather_rows, shared_qk_keys

# A sort key packs (bucket, position) into one int64: bucket * 2**POSITION_BITS + position.
POSITION_BITS = 32


def attend_window(
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


def recent_ranks(merged: torch.Tensor, recent: torch.Tensor) -> torch.Tensor:
    """The ranks (B, H, n_hashes, n) that the sorted keys ``recent`` (B, H, n_hashes, n) hold in
    the union with ``merged``: entry j sits after its rank among the merged keys and the j recent
    ones before it."""
    return torch.searchsorted(merged, recent.contiguous()) + torch.arange(recent.shape[-1], device=recent.device)


def positions_at(
    merged: torch.Tensor, recent: torch.Tensor, rounds: torch.Tensor, ranks: torch.Tensor, padded_len: int
) -> torch.Tensor:
    """The positions at ``ranks`` (B, H, M, n) in rounds ``rounds`` (B, H, M) of the order that the
    sorted runs ``merged`` (B, H, n_hashes, m) and ``recent`` (B, H, n_hashes, n) give the
    positions [0, m + n) of each round, extended to ``padded_len`` positions by [m + n, padded_len)
    last, as ``forward`` sorts the padding past the input."""
    n_merged, n_recent = merged.shape[-1], recent.shape[-1]
    length = n_merged + n_recent
    inside = ranks.clamp(max=length - 1)
    # The number of recent entries ranked before a rank says which merged entry fills it otherwise.
    row_ranks = recent_ranks(merged, recent).gather(2, rounds[..., None].expand(*rounds.shape, n_recent))
    before = torch.searchsorted(row_ranks, inside)
    j = before.clamp(max=max(n_recent - 1, 0))
    keys = torch.zeros_like(inside)
    if n_merged:
        from_merged = (rounds[..., None] * n_merged + (inside - before).clamp(0, n_merged - 1)).flatten(2)
        keys = merged.flatten(2).gather(2, from_merged).view_as(inside)
    if n_recent:
        from_recent = (before < n_recent) & (row_ranks.gather(-1, j) == inside)
        recent_keys = recent.flatten(2).gather(2, (rounds[..., None] * n_recent + j).flatten(2)).view_as(inside)
        keys = torch.where(from_recent, recent_keys, keys)
    return torch.where(ranks < length, keys % 2**POSITION_BITS, ranks)


def insert(merged: torch.Tensor, recent: torch.Tensor, n_recent: int, sort_keys: torch.Tensor) -> torch.Tensor:
    """Insert ``sort_keys`` (B, H, n_hashes) into the sorted first ``n_recent`` keys of ``recent``
    (in place); returns their ranks (B, H, n_hashes) in the union with ``merged``."""
    below_recent = (recent[..., :n_recent] < sort_keys[..., None]).sum(dim=-1)
    rank = torch.searchsorted(merged, sort_keys[..., None].contiguous())[..., 0] + below_recent
    recent[..., n_recent] = sort_keys
    recent[..., : n_recent + 1] = recent[..., : n_recent + 1].sort(dim=-1).values
    return rank


def lsh_decode_step(
    qk: torch.Tensor, v: torch.Tensor, merged: torch.Tensor, recent: torch.Tensor, n_recent: int, sort_keys: torch.Tensor,
    key_valid: torch.Tensor, position: int, padded_len: int, chunk_len: int, n_chunks_before: int, n_chunks_after: int,
) -> torch.Tensor:
    """Insert position ``position`` into the bucket order and attend it within its windows: the
    (B, H, d) output that causal LSH attention over ``padded_len`` positions (the ones past
    ``position`` padding) computes there, rounds combined by their log-sum-exp."""
    n_hashes = merged.shape[2]
    rank = insert(merged, recent, n_recent, sort_keys)
    # The layout of forward: each round holds every position of the padded length (the ones past
    # the position are padding, sorted last), rounds concatenated and cut into chunks; the window
    # is the query's chunk and the neighbour chunks, around the ring of all rounds' chunks.
    n_chunks = n_hashes * padded_len // chunk_len
    device = qk.device
    rounds = torch.arange(n_hashes, device=device)
    neighbours = torch.arange(-n_chunks_before, n_chunks_after + 1, device=device)
    window_chunks = ((rounds * padded_len + rank) // chunk_len)[..., None] + neighbours
    window_starts = window_chunks % n_chunks * chunk_len
    window_rounds = window_starts // padded_len
    window_ranks = (window_starts % padded_len)[..., None] + torch.arange(chunk_len, device=device)
    batch, heads = qk.shape[:2]
    window_shape = (batch, heads, n_hashes, window_ranks.shape[3] * chunk_len)
    key_positions = positions_at(
        merged, recent[..., : n_recent + 1], window_rounds.flatten(2), window_ranks.flatten(2, 3), padded_len
    ).view(window_shape)
    real = key_positions.clamp(max=position)
    valid = (key_positions <= position) & key_valid[:, None, None, :].expand(*window_shape[:3], -1).gather(-1, real)
    rows = real.flatten(2)
    keys, values = qk[:, :, : position + 1], v[:, :, : position + 1]
    query = qk[:, :, position : position + 1, None]
    out, lse = attend_window(
        query, shared_qk_keys(gather_rows(keys, rows)).view(*window_shape, -1), gather_rows(values, rows).view(*window_shape, -1),
        position, key_positions, valid, causal=True, self_mask=True,
    )
    round_weights = torch.exp(lse - torch.logsumexp(lse, dim=2, keepdim=True))
    return (out * round_weights[..., None]).sum(dim=2)
