"""Cached decoding in ReformerModelWithLMHead (use_cache / past_buckets_states), float64.

The contract: a cached step's logits equal a full recompute on the same prefix (1e-10) wherever
the full forward is prefix-stable, for any batch and padding; where it is not (an LSH layer below
another layer, on more than one chunk) the tests show that the full forward itself changes the
earlier positions when a token is appended, which is why no cache can follow it there.
"""
import warnings

import pytest
import torch

from reformer_kernels import models

from .hf_reference import TINY, model_pair

PROMPT, SEQ_LEN = 3, 30  # chunks of 8: the steps cross three chunk boundaries


def lm(attn_layers, n_hashes=2, **overrides):
    torch.manual_seed(0)
    config = {**TINY, "attn_layers": attn_layers, "is_decoder": True, "num_hashes": n_hashes, "hash_seed": 0, **overrides}
    return models.ReformerModelWithLMHead(models.ReformerConfig(**config)).double().eval()


def prompts(batch, padded, seq_len=SEQ_LEN):
    torch.manual_seed(1)
    ids = torch.randint(1, 50, (batch, seq_len))
    mask = torch.ones(batch, seq_len, dtype=torch.long)
    if padded:
        mask[-1, :2] = 0  # the last row is left-padded
    return ids, (mask if padded else None)


def step_and_full_logits(model, ids, mask, prompt=PROMPT, reseed=False):
    """Per step t >= prompt: (cached step's logits at t, full forward on [0, t]'s logits at t)."""
    pairs = []
    with torch.no_grad():
        out = model(input_ids=ids[:, :prompt], attention_mask=None if mask is None else mask[:, :prompt], use_cache=True)
        cache = out.past_buckets_states
        for t in range(prompt, ids.shape[1]):
            prefix_mask = None if mask is None else mask[:, : t + 1]
            if reseed:
                torch.manual_seed(t)
            step = model(input_ids=ids[:, t : t + 1], attention_mask=prefix_mask, past_buckets_states=cache, use_cache=True)
            if reseed:
                torch.manual_seed(t)
            full = model(input_ids=ids[:, : t + 1], attention_mask=prefix_mask)
            pairs.append((step.logits[:, -1], full.logits[:, -1]))
    assert cache.length == ids.shape[1]
    return pairs


def worst(pairs):
    return max((step - full).abs().max().item() for step, full in pairs)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("n_hashes", [1, 2, 4])
@pytest.mark.parametrize("attn_layers", [["local", "local"], ["lsh"], ["local", "lsh"]], ids="-".join)
def test_cached_steps_equal_full_recompute_where_the_model_is_prefix_stable(attn_layers, n_hashes, batch, padded):
    """Local layers are prefix-stable; an LSH layer on top sees the same cached inputs as a recompute."""
    ids, mask = prompts(batch, padded)
    assert worst(step_and_full_logits(lm(attn_layers, n_hashes), ids, mask)) < 1e-10


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("n_hashes", [1, 2, 4])
def test_lsh_models_equal_full_recompute_while_the_prefix_fits_one_chunk(n_hashes, batch, padded):
    ids, mask = prompts(batch, padded, seq_len=TINY["lsh_attn_chunk_length"])
    assert worst(step_and_full_logits(lm(["lsh", "local", "lsh"], n_hashes), ids, mask, prompt=1)) < 1e-10


def test_fresh_rotations_bucket_count_from_length_and_unequal_chunks():
    """hash_seed=None (rotations from the global generator, as the full forward draws them),
    num_buckets=None (from the padded length) and local chunk 4 / LSH chunk 8 (padding to their lcm)."""
    model = lm(["local", "lsh"], hash_seed=None, num_buckets=None, local_attn_chunk_length=4)
    ids, mask = prompts(3, True, seq_len=60)
    assert worst(step_and_full_logits(model, ids, mask, reseed=True)) < 1e-10


def test_the_full_forward_of_a_multi_chunk_lsh_model_is_not_prefix_stable():
    """The limit of the contract, shown: appending one token to an LSH model longer than a chunk
    changes the logits the full forward gives the EARLIER positions (the token joins a bucket and
    shifts the sorted chunks of every token sorted after it), even with one LSH layer. A cache keeps
    the earlier positions' states, so below another layer its steps differ from a recompute (and
    match it while the prefix fits one chunk)."""
    chunk = TINY["lsh_attn_chunk_length"]
    ids, _ = prompts(1, False)
    with torch.no_grad():
        for attn_layers in (["lsh"], ["lsh", "local"]):
            model = lm(attn_layers)
            changes = [
                (model(input_ids=ids[:, :t]).logits - model(input_ids=ids[:, : t + 1]).logits[:, :t]).abs().max().item()
                for t in range(2, SEQ_LEN)
            ]
            assert max(changes[: chunk - 2]) < 1e-12  # t + 1 <= chunk: full attention on both
            # Past one chunk most appended tokens move earlier logits (one that sorts last in
            # every round, with an unchanged padded length, moves none).
            moved = [change > 1e-9 for change in changes[chunk - 2 :]]
            assert sum(moved) >= 0.8 * len(moved) and max(changes) > 1e-5
    pairs = step_and_full_logits(lm(["lsh", "local"]), ids, None)
    assert worst(pairs[: chunk - PROMPT]) < 1e-10
    assert worst(pairs[chunk - PROMPT :]) > 1e-10


def test_batch_rows_are_independent_and_transformers_are_not():
    """transformers' cached LSH step reads batch row 0's buckets for every row: its batch-3 step
    differs from its own batch-1 steps; ours equal per-row results (and the full recompute)."""
    config = dict(TINY, attn_layers=["lsh"], is_decoder=True, num_hashes=2, hash_seed=0, num_buckets=4)
    theirs, ours = model_pair(config)
    theirs, ours = theirs.double().eval(), ours.double().eval()
    torch.manual_seed(1)
    ids, new = torch.randint(1, 50, (3, 16)), torch.randint(1, 50, (3, 1))

    def cached_logits(model, rows):
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cache = model(input_ids=ids[rows], use_cache=True).past_buckets_states
            return model(input_ids=new[rows], past_buckets_states=cache, use_cache=True).logits[:, -1]

    def batch_vs_rows(model):
        per_row = torch.cat([cached_logits(model, slice(i, i + 1)) for i in range(3)])
        return (cached_logits(model, slice(0, 3)) - per_row).abs().max().item()

    assert batch_vs_rows(theirs) > 1e-7
    assert batch_vs_rows(ours) < 1e-12
    with torch.no_grad():
        full = ours(input_ids=torch.cat([ids, new], dim=1)).logits[:, -1]
    assert (cached_logits(ours, slice(0, 3)) - full).abs().max().item() < 1e-10


@pytest.mark.parametrize("attn_layers", [["local", "local"], ["local", "lsh"]], ids="-".join)
def test_generate_with_the_cache_equals_full_forwards_greedy_and_sampled(attn_layers):
    model = lm(attn_layers)
    ids, mask = prompts(3, True, seq_len=5)
    for kwargs in (dict(), dict(do_sample=True, temperature=1.5, top_k=10, top_p=0.9)):
        cached = model.generate(ids, 20, attention_mask=mask, use_cache=True, generator=torch.Generator().manual_seed(4), **kwargs)
        full = model.generate(ids, 20, attention_mask=mask, use_cache=False, generator=torch.Generator().manual_seed(4), **kwargs)
        assert torch.equal(cached, full)


def test_generate_allocates_the_cache_once():
    """Memory per step is constant: the cache is sized for prompt + new tokens up front."""
    model = lm(["local", "lsh"])
    seen = []
    original = models.modeling.ReformerDecodingCache.reserve

    def reserve(cache, length):
        original(cache, length)
        seen.append((cache.capacity, cache.attention_mask is None or cache.attention_mask.data_ptr(),
                     tuple(layer.keys.data_ptr() for layer in cache.layers)))

    models.modeling.ReformerDecodingCache.reserve = reserve
    try:
        model.generate(prompts(2, False, seq_len=4)[0], 20)
    finally:
        models.modeling.ReformerDecodingCache.reserve = original
    assert {capacity for capacity, *_ in seen} == {24}
    assert len({pointers for *_, pointers in seen[1:]}) == 1


def test_cached_decoding_bad_use():
    model = lm(["local", "lsh"])
    ids = torch.randint(1, 50, (2, 4))
    with torch.no_grad():
        cache = model(input_ids=ids, use_cache=True).past_buckets_states
        with pytest.raises(ValueError, match="rows"):
            model(input_ids=ids[:1, :1], past_buckets_states=cache)
        with pytest.raises(ValueError, match="attention_mask"):
            model(input_ids=ids[:, :1], attention_mask=torch.ones(2, 1), past_buckets_states=cache)
        with pytest.raises(ValueError, match="position_ids"):
            model(input_ids=ids[:, :1], position_ids=torch.tensor([4]), past_buckets_states=cache)
        with pytest.raises(TypeError, match="ReformerDecodingCache"):
            model(input_ids=ids[:, :1], past_buckets_states=[(torch.zeros(1), torch.zeros(1))])
        model.train()
        with pytest.raises(ValueError, match="eval"):
            model(input_ids=ids, use_cache=True)
        with pytest.raises(ValueError, match="eval"):
            model.generate(ids, 2)


@pytest.mark.parametrize("padded", [False, True])
def test_the_prompt_of_cached_decoding_costs_one_forward(padded):
    """The prompt runs once: its logits, hidden states and attentions equal the forward's, and it
    does no more multiply-adds than the forward (each layer's projections are cached as the
    forward computes them, not recomputed)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = lm(["local", "lsh"])
    ids, mask = prompts(2, padded, seq_len=21)
    outputs = {}
    with torch.no_grad():
        for use_cache in (False, True):
            with FlopCounterMode(display=False) as flops:
                out = model(input_ids=ids, attention_mask=mask, use_cache=use_cache, output_hidden_states=True,
                            output_attentions=True)
            outputs[use_cache] = (out, flops.get_total_flops())
    (plain, plain_flops), (cached, cached_flops) = outputs[False], outputs[True]
    assert cached_flops <= plain_flops
    for a, b in zip((plain.logits, *plain.hidden_states, *plain.attentions), (cached.logits, *cached.hidden_states, *cached.attentions)):
        assert a.shape == b.shape and (a - b).abs().max().item() < 1e-12
    assert cached.past_buckets_states.length == 21 and cached.past_buckets_states.layers[1].order.length == 21


def test_a_step_past_the_positions_the_model_has_is_refused_before_the_cache_changes():
    model = lm(["local", "lsh"], max_position_embeddings=32, axial_pos_shape=[4, 8])
    ids, _ = prompts(2, False, seq_len=31)
    with torch.no_grad():
        cache = model(input_ids=ids, use_cache=True).past_buckets_states
        with pytest.raises(ValueError, match="input_ids: 2 new tokens after the 31 in past_buckets_states make 33 > the 32 positions"):
            model(input_ids=ids[:, :2], past_buckets_states=cache, use_cache=True)
        assert cache.length == 31 and all(layer.length == 31 for layer in cache.layers)
        with pytest.raises(ValueError, match="max_position_embeddings"):
            model(input_ids=torch.cat([ids, ids[:, :2]], dim=1), use_cache=True)
        model(input_ids=ids[:, :1], past_buckets_states=cache, use_cache=True)  # the cache is still good
    assert cache.length == 32
