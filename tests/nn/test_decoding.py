"""Cached decoding at layer level: decode_step at position t equals the module's forward on
positions [0, t] at its last position, in float64 to 1e-10."""
import pytest
import torch

from reformer_kernels import use_backend
from reformer_kernels.nn import DecodingCache, LocalSelfAttention, LSHSelfAttention
from reformer_kernels.nn.attention import BucketOrder
from reformer_kernels.ops.lsh_decode_step.reference import POSITION_BITS, insert, positions_at

HIDDEN, HEADS, HEAD_DIM, CHUNK, SEQ_LEN, PROMPT = 16, 2, 8, 4, 23, 2


def padding_mask(batch: int, padded: bool) -> torch.Tensor:
    mask = torch.ones(batch, SEQ_LEN, dtype=torch.bool)
    if padded:
        mask[-1, :3] = False  # a left-padded row
        mask[0, 5] = False  # a padding token inside row 0
    return mask


def max_step_error(
    module, batch: int, padded: bool, *, reseed: bool = False, merge_every: int = 5, prompt: int = PROMPT, **step_kwargs
) -> float:
    """Worst |decode_step - forward[:, -1]| over positions prompt..SEQ_LEN-1 whose query is a token.

    A padding query in a local layer has every key masked, so forward averages scores that are all
    -1e9, padding it made up included: that output is meaningless and not compared.
    ``merge_every`` small: the steps cross the bucket order's merges. The prompt's fill_cache
    returns forward's output (a prompt of whole chunks also sorts the LSH bucket order there)."""
    x = torch.randn(batch, SEQ_LEN, HIDDEN, dtype=torch.float64)
    mask = padding_mask(batch, padded)
    cache = DecodingCache(merge_every)
    prompt_mask = mask[:, :prompt] if padded else None
    with torch.no_grad():
        if reseed:
            torch.manual_seed(prompt)
        filled = module.fill_cache(x[:, :prompt], cache, attention_mask=prompt_mask)
        if reseed:
            torch.manual_seed(prompt)
        assert (filled - module(x[:, :prompt], prompt_mask)).abs().max().item() < 1e-12
    worst = 0.0
    with torch.no_grad():
        for t in range(prompt, SEQ_LEN):
            if reseed:
                torch.manual_seed(t)
            step = module.decode_step(x[:, t : t + 1], cache, mask[:, : t + 1], **step_kwargs)
            if reseed:
                torch.manual_seed(t)
            full = module(x[:, : t + 1], mask[:, : t + 1] if padded else None)[:, -1:]
            error = (step - full).abs().amax(dim=-1)[:, 0]
            worst = max(worst, error.masked_fill(~mask[:, t], 0.0).max().item())
    return worst


@pytest.fixture(params=["auto", "reference"])
def backend(request):
    with use_backend(request.param):
        yield


@pytest.mark.parametrize("num_buckets", [None, 4, (2, 4)])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("n_hashes", [1, 2, 4])
def test_lsh_decode_step_equals_forward_at_the_last_position(backend, n_hashes, batch, padded, num_buckets):
    torch.manual_seed(n_hashes * 10 + batch)
    module = LSHSelfAttention(
        HIDDEN, HEADS, HEAD_DIM, num_hashes=n_hashes, num_buckets=num_buckets, chunk_len=CHUNK, n_chunks_before=1,
        causal=True, hash_seed=3, max_position_embeddings=64,
    ).double()
    assert max_step_error(module, batch, padded) < 1e-10


@pytest.mark.parametrize("num_buckets", [None, (2, 4)])
def test_lsh_decode_step_with_eight_hashes(num_buckets):
    torch.manual_seed(8)
    module = LSHSelfAttention(
        HIDDEN, HEADS, HEAD_DIM, num_hashes=8, num_buckets=num_buckets, chunk_len=CHUNK, n_chunks_before=1,
        causal=True, hash_seed=3, max_position_embeddings=64,
    ).double()
    assert max_step_error(module, 3, True, prompt=8) < 1e-10


@pytest.mark.parametrize("hash_seed", [None, 7])
@pytest.mark.parametrize("n_chunks", [(1, 0), (2, 0), (1, 1)])
def test_lsh_decode_step_with_other_windows_and_fresh_rotations(n_chunks, hash_seed):
    """hash_seed=None: the step draws the rotations from the global generator as forward does (and
    rehashes the cached positions); chunks after the query's in sorted order hold earlier tokens,
    and windows at a round's first or last chunk reach into the neighbour round."""
    torch.manual_seed(0)
    module = LSHSelfAttention(
        HIDDEN, HEADS, HEAD_DIM, num_hashes=2, chunk_len=CHUNK, n_chunks_before=n_chunks[0], n_chunks_after=n_chunks[1],
        causal=True, hash_seed=hash_seed, max_position_embeddings=64,
    ).double()
    assert max_step_error(module, 3, True, reseed=True, merge_every=3, prompt=8) < 1e-10


@pytest.mark.parametrize("merge_every", [1, 4, 64])
def test_bucket_order_gives_the_sorted_order_at_every_rank(merge_every):
    """Positions inserted one at a time, each the last of its bucket, with the merges of
    ``BucketOrder``: at every length the rank the insertion returns is the key's in a full sort,
    and the runs give the full sort of the (bucket, position) keys at every rank, then the
    positions past the length."""
    torch.manual_seed(merge_every)
    n_buckets, length, padded_len = 5, 40, 48
    buckets = torch.randint(0, n_buckets, (2, 3, 2, length))
    keys = buckets * 2**POSITION_BITS + torch.arange(length)
    order = BucketOrder(keys[..., :1].contiguous(), (2, n_buckets), torch.zeros(0), merge_every)
    rounds = torch.arange(2).expand(2, 3, 2)
    for n in range(1, length + 1):
        if n > 1:
            rank = insert(order.merged, order.recent, order.n_recent, keys[..., n - 1])
            assert torch.equal(rank, (keys[..., : n - 1] < keys[..., n - 1 : n]).sum(-1))
            order.n_recent += 1
            order.merge_if_full()
        expected = torch.cat([keys[..., :n].sort(dim=-1).values % 2**POSITION_BITS,
                              torch.arange(n, padded_len).expand(2, 3, 2, -1)], dim=-1)
        got = positions_at(order.merged, order.recent[..., : order.n_recent], rounds,
                           torch.arange(padded_len).expand(2, 3, 2, -1), padded_len)
        assert torch.equal(got, expected), n
    assert order.length == length


def test_lsh_decode_step_follows_a_longer_layout():
    """layout_len: the step reproduces forward on the sequence padded with masked positions (the
    models pad to a chunk multiple): bucket count and chunks of that length."""
    torch.manual_seed(1)
    module = LSHSelfAttention(HIDDEN, HEADS, HEAD_DIM, num_hashes=2, chunk_len=CHUNK, causal=True, hash_seed=5,
                              max_position_embeddings=64).double()
    x = torch.randn(3, 13, HIDDEN, dtype=torch.float64)
    mask = padding_mask(3, True)[:, :13]
    cache = DecodingCache()
    module.fill_cache(x[:, :12], cache)
    with torch.no_grad():
        step = module.decode_step(x[:, 12:], cache, mask, layout_len=32)
        padded_x = torch.cat([x, torch.zeros(3, 19, HIDDEN, dtype=torch.float64)], dim=1)
        padded_mask = torch.cat([mask, torch.zeros(3, 19, dtype=torch.bool)], dim=1)
        full = module(padded_x, padded_mask)[:, 12:13]
    assert (step - full).abs().max().item() < 1e-10


@pytest.mark.parametrize("n_chunks_before", [1, 2])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
def test_local_decode_step_equals_forward_at_the_last_position(backend, batch, padded, n_chunks_before):
    torch.manual_seed(batch)
    module = LocalSelfAttention(HIDDEN, HEADS, HEAD_DIM, chunk_len=CHUNK, n_chunks_before=n_chunks_before, causal=True).double()
    assert max_step_error(module, batch, padded) < 1e-10


def test_steps_write_into_the_preallocated_cache():
    """Memory per step is constant: with room for every position, no step reallocates, and with a
    fixed hash_seed the bucket order is built once (the first step past one chunk) and then only
    inserted into: nothing per step grows with the context."""
    torch.manual_seed(2)
    module = LSHSelfAttention(HIDDEN, HEADS, HEAD_DIM, num_hashes=2, num_buckets=4, chunk_len=CHUNK, causal=True, hash_seed=1).double()
    x = torch.randn(2, SEQ_LEN, HIDDEN, dtype=torch.float64)
    cache = DecodingCache()
    module.fill_cache(x[:, :PROMPT], cache, capacity=SEQ_LEN)
    mask = torch.ones(2, SEQ_LEN, dtype=torch.bool)
    pointers: dict[str, int] = {}
    with torch.no_grad():
        for t in range(PROMPT, SEQ_LEN):
            module.decode_step(x[:, t : t + 1], cache, mask[:, : t + 1], capacity=SEQ_LEN)
            tensors = {"keys": cache.keys, "values": cache.values}
            if cache.order is not None:  # from the first hashed step (t >= CHUNK) on
                tensors.update(order=cache.order, recent=cache.order.recent, merged=cache.order.merged)
            for name, tensor in tensors.items():
                assert pointers.setdefault(name, id(tensor)) == id(tensor), (name, t)
    assert set(pointers) == {"keys", "values", "order", "recent", "merged"} and cache.keys.shape[2] == SEQ_LEN


def test_the_bucket_order_is_rebuilt_only_when_the_bucket_count_changes():
    """num_buckets=None: the count follows the length (layout_len), so the cached positions are
    rehashed at each new count (a doubling of the length: amortized O(1) per step), not per step."""
    torch.manual_seed(3)
    module = LSHSelfAttention(HIDDEN, HEADS, HEAD_DIM, num_hashes=2, chunk_len=2, causal=True, hash_seed=1,
                              max_position_embeddings=64).double()
    x = torch.randn(1, SEQ_LEN, HIDDEN, dtype=torch.float64)
    cache = DecodingCache()
    module.fill_cache(x[:, :PROMPT], cache)
    orders, counts = [], []
    with torch.no_grad():
        for t in range(PROMPT, SEQ_LEN):
            module.decode_step(x[:, t : t + 1], cache, torch.ones(1, t + 1, dtype=torch.bool))
            orders.append(id(cache.order))
            counts.append(cache.order.hashed_with)
    rebuilds = sum(a != b for a, b in zip(orders, orders[1:]))
    changes = sum(a != b for a, b in zip(counts, counts[1:]))
    assert rebuilds == changes and 2 <= changes <= 4


def test_decode_step_refuses_bidirectional_layers_several_positions_and_a_cache_out_of_step():
    module = LocalSelfAttention(HIDDEN, HEADS, HEAD_DIM, chunk_len=CHUNK, causal=False)
    with pytest.raises(ValueError, match="causal"):
        module.decode_step(torch.randn(1, 1, HIDDEN), DecodingCache(), torch.ones(1, 1, dtype=torch.bool))
    module = LocalSelfAttention(HIDDEN, HEADS, HEAD_DIM, chunk_len=CHUNK, causal=True)
    with pytest.raises(ValueError, match="one position"):
        module.decode_step(torch.randn(1, 2, HIDDEN), DecodingCache(), torch.ones(1, 2, dtype=torch.bool))
    cache = DecodingCache()
    module.fill_cache(torch.randn(1, 3, HIDDEN), cache)
    with pytest.raises(ValueError, match="holds 3 positions"):
        module.decode_step(torch.randn(1, 1, HIDDEN), cache, torch.ones(1, 5, dtype=torch.bool))


def test_a_prompt_of_whole_chunks_sorts_the_bucket_order_once_in_its_forward():
    """fill_cache keeps the order its forward sorted (no rehash at the first step) for the
    positions before cached_len, the steps then equal forward, and positions past cached_len must
    be padding."""
    torch.manual_seed(4)
    module = LSHSelfAttention(HIDDEN, HEADS, HEAD_DIM, num_hashes=2, num_buckets=4, chunk_len=CHUNK, causal=True, hash_seed=2,
                              max_position_embeddings=64).double()
    x = torch.randn(2, 13, HIDDEN, dtype=torch.float64)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[1, :3] = False
    mask[:, 12:] = False  # a prompt of 12 padded to 16, as a model pads to a multiple of its chunks
    padded = torch.cat([x[:, :12], torch.zeros(2, 4, HIDDEN, dtype=torch.float64)], dim=1)
    cache = DecodingCache()
    with torch.no_grad():
        module.fill_cache(padded, cache, attention_mask=mask, cached_len=12)
        order = cache.order
        assert cache.length == 12 and order.length == 12
        key_valid = torch.cat([mask[:, :12], torch.ones(2, 1, dtype=torch.bool)], dim=1)
        step = module.decode_step(x[:, 12:], cache, key_valid, layout_len=16)
        full = module(torch.cat([x, torch.zeros(2, 3, HIDDEN, dtype=torch.float64)], dim=1),
                      torch.cat([key_valid, torch.zeros(2, 3, dtype=torch.bool)], dim=1))[:, 12:13]
    assert cache.order is order and (step - full).abs().max().item() < 1e-10
    with pytest.raises(ValueError, match="cached_len"):
        module.fill_cache(padded, DecodingCache(), cached_len=12)
    with pytest.raises(ValueError, match="cached_len"):
        module.fill_cache(padded, DecodingCache(), attention_mask=mask, cached_len=17)


def test_decode_step_refuses_a_cache_of_other_rows_or_layers_and_bad_arguments_before_writing():
    torch.manual_seed(5)
    module = LSHSelfAttention(HIDDEN, HEADS, HEAD_DIM, num_hashes=2, num_buckets=4, chunk_len=CHUNK, causal=True, hash_seed=1)
    cache = DecodingCache()
    module.fill_cache(torch.randn(2, 8, HIDDEN), cache)
    keys, order = cache.keys.clone(), cache.order
    other = LSHSelfAttention(HIDDEN, 4, 4, chunk_len=CHUNK, causal=True)
    for call, match in (
        (lambda: module.decode_step(torch.randn(1, 1, HIDDEN), cache, torch.ones(1, 9, dtype=torch.bool)), "batch=1"),
        (lambda: other.decode_step(torch.randn(2, 1, HIDDEN), cache, torch.ones(2, 9, dtype=torch.bool)), "heads=4"),
        (lambda: module.decode_step(torch.randn(2, 1, HIDDEN).double(), cache, torch.ones(2, 9, dtype=torch.bool)), "float64"),
        (lambda: module.decode_step(torch.randn(2, 1, HIDDEN), cache, torch.ones(2, 9, dtype=torch.bool), num_hashes=0), "num_hashes"),
        (lambda: module.decode_step(torch.randn(2, 1, HIDDEN), cache, torch.ones(2, 9, dtype=torch.bool), layout_len=8.5), "layout_len"),
        (lambda: module.decode_step(torch.randn(2, 1, HIDDEN), cache, torch.ones(2, 10, dtype=torch.bool)), "holds 8 positions"),
    ):
        with pytest.raises(ValueError, match=match):
            call()
        assert cache.length == 8 and cache.order is order and order.length == 8 and torch.equal(cache.keys, keys)
