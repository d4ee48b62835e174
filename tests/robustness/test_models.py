"""Hostile inputs to the models' entry points (forward, cached decoding, generate): a ValueError or
TypeError naming the argument, never silently wrong outputs; a refused cache is left untouched."""
import copy

import pytest
import torch

from reformer_kernels.models import ReformerConfig, ReformerModel, ReformerModelWithLMHead

TINY = dict(hidden_size=16, attention_head_size=8, num_attention_heads=2, feed_forward_size=32, vocab_size=50,
            axial_pos_shape=[8, 8], axial_pos_embds_dim=[8, 8], max_position_embeddings=64, hidden_dropout_prob=0.0,
            local_attention_probs_dropout_prob=0.0, attn_layers=["local", "lsh"], local_attn_chunk_length=4,
            lsh_attn_chunk_length=4, is_decoder=True, hash_seed=0)


def _lm(**overrides):
    torch.manual_seed(0)
    return ReformerModelWithLMHead(ReformerConfig(**{**TINY, **overrides})).eval()


@pytest.fixture(scope="module")
def lm():
    return _lm()


IDS = torch.arange(20).reshape(2, 10) % 50


@pytest.mark.parametrize("mask", [
    torch.full((2, 10), 0.5),                                            # soft weights
    torch.cat([torch.zeros(2, 7), torch.full((2, 3), -10000.0)], 1),     # transformers' additive mask
    torch.full((2, 10), 2, dtype=torch.long),
])
def test_mask_that_is_not_0_1_is_refused(lm, mask):
    with pytest.raises(ValueError, match="attention_mask.*pass 1 for tokens and 0 for padding"):
        lm(IDS, attention_mask=mask)
    with pytest.raises(ValueError, match="attention_mask"):
        lm.reformer(IDS, attention_mask=mask)
    with pytest.raises(ValueError, match="attention_mask.*pass 1 for tokens and 0 for padding"):
        lm.generate(IDS, 2, attention_mask=mask)


def test_0_1_masks_of_any_dtype_agree(lm):
    mask = torch.ones(2, 10)
    mask[0, :3] = 0
    want = lm(IDS, attention_mask=mask.bool()).logits
    for dtype in (torch.float32, torch.float16, torch.int32, torch.long, torch.uint8):
        torch.testing.assert_close(lm(IDS, attention_mask=mask.to(dtype)).logits, want, rtol=0, atol=0)


def test_complex_mask_is_a_type_error(lm):
    with pytest.raises(TypeError, match="attention_mask"):
        lm(IDS, attention_mask=torch.ones(2, 10, dtype=torch.complex64))


def test_mask_of_a_cached_step_is_checked_before_the_cache_changes(lm):
    cache = lm(IDS, use_cache=True).past_buckets_states
    before = (cache.length, cache.attention_mask.clone(), [layer.keys.clone() for layer in cache.layers])
    with pytest.raises(ValueError, match="attention_mask"):
        lm(IDS[:, :1], attention_mask=torch.full((2, 11), -10000.0), past_buckets_states=cache, use_cache=True)
    assert cache.length == before[0] and torch.equal(cache.attention_mask, before[1])
    assert all(torch.equal(layer.keys, keys) for layer, keys in zip(cache.layers, before[2]))


@pytest.mark.parametrize("position_ids, match", [
    (torch.tensor(3), r"position_ids.*got torch.int64 \(\)"),            # was IndexError
    (torch.zeros(2, 10, 1, dtype=torch.long), "position_ids"),
    (torch.zeros(10, dtype=torch.bool), "position_ids"),
    (torch.arange(10.0), "position_ids"),
    (torch.arange(10) + 60, "position_ids.*max_position_embeddings"),
])
def test_bad_position_ids(lm, position_ids, match):
    with pytest.raises(ValueError, match=match):
        lm(IDS, position_ids=position_ids)


def test_wider_inputs_embeds_dtype_names_the_mismatch(lm):
    embeds = torch.randn(2, 10, 16, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"inputs_embeds is torch.float64 but the model is torch.float32.*\.to\(torch.float32\)"):
        lm(inputs_embeds=embeds)
    # A narrower dtype is promoted by the model as before.
    assert lm(inputs_embeds=embeds.half()).logits.dtype == torch.float32


@pytest.mark.parametrize("input_ids, error, match", [
    (torch.full((2, 10), 50), ValueError, r"input_ids span \[50, 50\].*vocab_size=50"),
    (torch.full((2, 10), -1), ValueError, "input_ids span"),
    (torch.zeros(2, 10), TypeError, "input_ids must hold integer"),
    (torch.zeros(10, dtype=torch.long), ValueError, r"input_ids must be \(batch, seq_len\)"),
    (torch.zeros(1, 65, dtype=torch.long), ValueError, "seq_len 65 > max_position_embeddings 64"),
    ([[1, 2]], TypeError, "input_ids must be a torch.Tensor"),
])
def test_bad_input_ids(lm, input_ids, error, match):
    with pytest.raises(error, match=match):
        lm(input_ids)


def test_generate_prompt_longer_than_the_positions(lm):
    with pytest.raises(ValueError, match="generate: input_ids has prompt_len 70 > the 64 positions"):
        lm.generate(torch.zeros(1, 70, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="max_new_tokens 10 > the 64 positions"):
        lm.generate(torch.zeros(1, 60, dtype=torch.long), 10)


@pytest.mark.parametrize("other, match", [
    (dict(attn_layers=["local"]), "attn_layers"),                                   # fewer layers: zip dropped one
    (dict(attn_layers=["local", "lsh", "local"]), "attn_layers"),                   # more layers
    (dict(attn_layers=["lsh", "local"]), "attn_layers"),                            # other layer types
    (dict(num_attention_heads=4, attention_head_size=4), "num_attention_heads"),    # other head size
])
def test_cache_of_another_model_is_refused_untouched(lm, other, match):
    cache = lm(IDS, use_cache=True).past_buckets_states
    snapshot = copy.deepcopy(cache)
    with pytest.raises(ValueError, match=f"past_buckets_states.*{match}"):
        _lm(**other)(IDS[:, :1], past_buckets_states=cache, use_cache=True)
    assert cache.length == snapshot.length and torch.equal(cache.attention_mask, snapshot.attention_mask)
    for layer, kept in zip(cache.layers, snapshot.layers):
        assert torch.equal(layer.keys, kept.keys) and layer.length == kept.length
    lm(IDS[:, :1], past_buckets_states=cache, use_cache=True)  # still good for its own model


def test_cache_of_another_dtype_or_batch_is_refused(lm):
    cache = lm(IDS, use_cache=True).past_buckets_states
    with pytest.raises(ValueError, match="past_buckets_states.*dtype torch.float64"):
        copy.deepcopy(lm).double()(IDS[:, :1], past_buckets_states=cache, use_cache=True)
    with pytest.raises(ValueError, match="past_buckets_states holds 2 rows but the input has 1"):
        lm(IDS[:1, :1], past_buckets_states=cache, use_cache=True)
    assert cache.length == 10


def test_cache_whose_layers_were_tampered_with_is_refused(lm):
    cache = lm(IDS, use_cache=True).past_buckets_states
    cache.layers = cache.layers[:1]
    with pytest.raises(ValueError, match="past_buckets_states holds 1 layers but this model has 2"):
        lm(IDS[:, :1], past_buckets_states=cache, use_cache=True)
    cache = lm(IDS, use_cache=True).past_buckets_states
    cache.layers[1].keys = cache.layers[1].keys[:1]
    with pytest.raises(ValueError, match="past_buckets_states layer 1"):
        lm(IDS[:, :1], past_buckets_states=cache, use_cache=True)


def test_cache_that_is_not_ours_is_a_type_error(lm):
    with pytest.raises(TypeError, match="past_buckets_states"):
        lm(IDS[:, :1], past_buckets_states=[(torch.zeros(1), torch.zeros(1))], use_cache=True)


def test_base_model_checks_too():
    model = ReformerModel(ReformerConfig(**{**TINY, "is_decoder": False})).eval()
    with pytest.raises(ValueError, match="attention_mask"):
        model(IDS, attention_mask=torch.full((2, 10), -10000.0))
    with pytest.raises(ValueError, match="position_ids"):
        model(IDS, position_ids=torch.tensor(0))


@pytest.fixture(scope="module")
def heads():
    from reformer_kernels.models import ReformerForQuestionAnswering, ReformerForSequenceClassification

    config = dict(TINY, is_decoder=False)
    torch.manual_seed(0)
    return (ReformerForSequenceClassification(ReformerConfig(**config, num_labels=3)).eval(),
            ReformerForQuestionAnswering(ReformerConfig(**config)).eval())


@pytest.mark.parametrize("labels, error, match", [
    (torch.tensor([0, 5]), ValueError, r"labels holds class 5 outside \[0, num_labels=3\)"),   # was IndexError
    (torch.tensor([0, -3]), ValueError, "labels holds class -3"),
    (torch.tensor([0, 1, 2]), ValueError, r"labels must be one class id per row \(2,\)"),
    (torch.tensor([0.5, 1.0]), ValueError, r"labels must be \(batch, num_labels\) = \(2, 3\)"),
    ([0, 1], TypeError, "labels must be a torch.Tensor"),                                       # was AttributeError
])
def test_bad_classification_labels(heads, labels, error, match):
    with pytest.raises(error, match=match):
        heads[0](IDS, labels=labels)


def test_ignored_classification_label_still_works(heads):
    assert heads[0](IDS, labels=torch.tensor([1, -100])).loss.isfinite()


@pytest.mark.parametrize("start, match", [
    (torch.tensor([0.5, 1.0]), "start_positions must be an integer tensor"),  # was a RuntimeError from cross_entropy
    (torch.tensor([1, 2, 3]), r"start_positions .* one position per row \(2,\)"),
])
def test_bad_question_answering_positions(heads, start, match):
    with pytest.raises(ValueError, match=match):
        heads[1](IDS, start_positions=start, end_positions=torch.tensor([1, 2]))


# ---- the nn modules, built directly --------------------------------------------------------------


def _nn():
    from reformer_kernels import nn as rk_nn

    return rk_nn


@pytest.mark.parametrize("build, match", [
    (lambda nn: nn.LSHSelfAttention(16, 2, 8, num_hashes=0), "LSHSelfAttention: num_hashes"),
    (lambda nn: nn.LSHSelfAttention(16, 0, 8), "LSHSelfAttention: num_attention_heads"),
    (lambda nn: nn.LSHSelfAttention(16, 2, 8, chunk_len=0), "LSHSelfAttention: chunk_len"),
    (lambda nn: nn.LSHSelfAttention(16, 2, 8, n_chunks_before=-1), "LSHSelfAttention: n_chunks_before"),
    (lambda nn: nn.LSHSelfAttention(16, 2, 8, num_buckets=3), "LSHSelfAttention: num_buckets"),
    (lambda nn: nn.LSHSelfAttention(16, 2, 8, num_buckets=[4, 3]), "LSHSelfAttention: num_buckets"),
    (lambda nn: nn.LSHSelfAttention(16, 2, 8, dropout=1.5), "LSHSelfAttention: dropout"),
    (lambda nn: nn.LSHSelfAttention(16, 2, 8, hash_seed="1"), "LSHSelfAttention: hash_seed"),
    (lambda nn: nn.LocalSelfAttention(16, 2, 8, chunk_len=None), "LocalSelfAttention: chunk_len"),
    (lambda nn: nn.LocalSelfAttention(16, 2, 8, dropout=-0.1), "LocalSelfAttention: dropout"),
    (lambda nn: nn.AxialPositionEmbeddings([8, 0], [8, 8]), "AxialPositionEmbeddings: every entry of axial_pos_shape"),
    (lambda nn: nn.AxialPositionEmbeddings([8, 8], [8, 8], dropout=2.0), "AxialPositionEmbeddings: dropout"),
    (lambda nn: nn.ChunkedFeedForward(16, 32, layer_norm_eps=-1.0), "ChunkedFeedForward: layer_norm_eps"),
    (lambda nn: nn.ChunkedFeedForward(16, 32, chunk_size=-1), "ChunkedFeedForward: chunk_size"),
    (lambda nn: nn.ChunkedFeedForward(16, 32, dropout=1.0), "ChunkedFeedForward: dropout"),
    (lambda nn: nn.ReversibleBlock(None, None, dropout=float("nan")), "ReversibleBlock: dropout"),
])
def test_nn_module_with_a_bad_argument_is_not_built(build, match):
    with pytest.raises(ValueError, match=match):
        build(_nn())


def test_nn_forward_arguments():
    nn = _nn()
    with pytest.raises(ValueError, match="LSHSelfAttention: num_hashes"):
        nn.LSHSelfAttention(16, 2, 8, chunk_len=4)(torch.randn(1, 8, 16), None, 0)
    with pytest.raises(TypeError, match="AxialPositionEmbeddings: position_ids must be an integer tensor"):
        nn.AxialPositionEmbeddings([8, 8], [8, 8])(torch.zeros(1, 4))
