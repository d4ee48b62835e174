"""Hostile ReformerConfig fields and config.json files: each is a ValueError that names the field
(and the file), never a config that builds a model giving NaN or failing inside torch; the configs
transformers itself builds still load."""
import json

import pytest
import torch

from reformer_kernels.models import ReformerConfig, ReformerModel

TINY = dict(hidden_size=16, attention_head_size=8, num_attention_heads=2, feed_forward_size=32, vocab_size=50,
            axial_pos_shape=[8, 8], axial_pos_embds_dim=[8, 8], max_position_embeddings=64)


@pytest.mark.parametrize(
    "override, field",
    [
        (dict(layer_norm_eps=-1.0), "layer_norm_eps"),  # every output was NaN
        (dict(layer_norm_eps=0), "layer_norm_eps"),
        (dict(layer_norm_eps=float("nan")), "layer_norm_eps"),
        (dict(layer_norm_eps="1e-12"), "layer_norm_eps"),
        (dict(initializer_range=-0.02), "initializer_range"),
        (dict(axial_norm_std=float("inf")), "axial_norm_std"),
        (dict(pad_token_id=50), "pad_token_id"),  # failed inside torch's embedding
        (dict(pad_token_id=-1), "pad_token_id"),
        (dict(eos_token_id=-3), "eos_token_id"),
        (dict(eos_token_id=[1, 99]), "eos_token_id"),
        (dict(bos_token_id=50), "bos_token_id"),
        (dict(hidden_dropout_prob=1.0), "hidden_dropout_prob"),
        (dict(hidden_dropout_prob=float("nan")), "hidden_dropout_prob"),
        (dict(lsh_attention_probs_dropout_prob=-0.1), "lsh_attention_probs_dropout_prob"),
        (dict(local_attention_probs_dropout_prob=True), "local_attention_probs_dropout_prob"),
        (dict(classifier_dropout=2.0), "classifier_dropout"),
        (dict(num_hashes=0), "num_hashes"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(hidden_size=True), "hidden_size"),
        (dict(max_position_embeddings=-4), "max_position_embeddings"),
        (dict(chunk_size_lm_head=None), "chunk_size_lm_head"),
        (dict(chunk_size_feed_forward=-1), "chunk_size_feed_forward"),
        (dict(local_num_chunks_after=1.5), "local_num_chunks_after"),
        (dict(num_buckets=[4, "2"]), "num_buckets"),
        (dict(num_buckets=3), "num_buckets"),
        (dict(attn_layers="lsh"), "attn_layers"),  # was read letter by letter
        (dict(attn_layers=["lsh", 1]), "attn_layers"),
        (dict(axial_pos_shape=None), "axial_pos_shape"),  # was a TypeError from list(None)
        (dict(axial_pos_shape=[8, 0]), "axial_pos_shape"),
        (dict(axial_pos_embds_dim=[8, 9]), "axial_pos_embds_dim"),
        (dict(axial_pos_embds_dim="88"), "axial_pos_embds_dim"),
        (dict(is_decoder="yes"), "is_decoder"),
        (dict(axial_pos_embds="no"), "axial_pos_embds"),
        (dict(use_cache=1), "use_cache"),
        (dict(id2label=["a", "b"]), "id2label"),  # was an AttributeError
        (dict(id2label={"x": "a"}), "id2label"),
        (dict(num_labels=0), "num_labels"),
    ],
)
def test_bad_field_is_a_value_error_naming_it(override, field):
    with pytest.raises(ValueError, match=field):
        ReformerConfig(**{**TINY, **override})


def test_unused_layer_type_fields_may_be_none_as_in_transformers_tests():
    # transformers' ReformerLocalAttnModelTest / ReformerLSHAttnModelTest build such configs.
    local = ReformerConfig(**TINY, attn_layers=["local", "local"], lsh_attn_chunk_length=None, lsh_num_chunks_before=None,
                           lsh_num_chunks_after=None, lsh_attention_probs_dropout_prob=None, num_buckets="unused")
    lsh = ReformerConfig(**TINY, attn_layers=["lsh"], local_attn_chunk_length=None, local_num_chunks_before=None,
                         local_num_chunks_after=None, local_attention_probs_dropout_prob=None)
    assert ReformerModel(local)(torch.zeros(1, 8, dtype=torch.long)).last_hidden_state.isfinite().all()
    assert ReformerModel(lsh)(torch.zeros(1, 8, dtype=torch.long)).last_hidden_state.isfinite().all()
    with pytest.raises(ValueError, match="lsh_num_chunks_before"):
        ReformerConfig(**TINY, attn_layers=["lsh"], lsh_num_chunks_before=None)


def test_transformers_configs_are_accepted():
    import transformers
    # transformers' ReformerModelTester (local): lsh_* None, and 512 positions over a 4 x 8 axial shape.
    tester = dict(vocab_size=32, hidden_size=32, num_attention_heads=2, attention_head_size=16, feed_forward_size=32,
                  hidden_act="gelu", hidden_dropout_prob=0.1, local_attention_probs_dropout_prob=0.1,
                  lsh_attention_probs_dropout_prob=None, max_position_embeddings=512, is_decoder=True, axial_pos_embds=True,
                  axial_pos_shape=(4, 8), axial_pos_embds_dim=(16, 16), local_attn_chunk_length=4, local_num_chunks_after=0,
                  local_num_chunks_before=1, num_hashes=1, num_buckets=None, lsh_attn_chunk_length=None,
                  lsh_num_chunks_after=None, lsh_num_chunks_before=None, attn_layers=["local", "local"], pad_token_id=0,
                  hash_seed=0)
    ReformerConfig.from_dict(transformers.ReformerConfig(**tester).to_dict())
    ReformerConfig(**tester)
    ReformerConfig(**TINY, eos_token_id=[1, 2], bos_token_id=None, pad_token_id=None)
    ReformerConfig(**TINY, eos_token_id=(1, 2))
    # The config.json of google/reformer-crime-and-punishment, with its bookkeeping keys.
    crime = dict(attention_head_size=64, attn_layers=["local", "lsh"] * 3, axial_norm_std=1.0, axial_pos_embds=True,
                 axial_pos_embds_dim=[64, 192], axial_pos_shape=[512, 1024], chunk_size_feed_forward=0, chunk_size_lm_head=0,
                 eos_token_id=2, feed_forward_size=512, hash_seed=None, hidden_act="relu", hidden_dropout_prob=0.05,
                 hidden_size=256, initializer_range=0.02, is_decoder=True, layer_norm_eps=1e-12,
                 local_attention_probs_dropout_prob=0.05, local_attn_chunk_length=64, local_num_chunks_after=0,
                 local_num_chunks_before=1, lsh_attention_probs_dropout_prob=0.0, lsh_attn_chunk_length=64,
                 lsh_num_chunks_after=0, lsh_num_chunks_before=1, max_position_embeddings=524288, model_type="reformer",
                 num_attention_heads=2, num_buckets=[64, 128], num_chunks_after=0, num_chunks_before=1, num_hashes=1,
                 num_hidden_layers=6, output_past=True, pad_token_id=0, vocab_size=320)
    ReformerConfig.from_dict(crime)


def test_field_set_after_building_is_checked_by_the_model():
    config = ReformerConfig(**TINY)
    config.layer_norm_eps = -1.0
    with pytest.raises(ValueError, match="layer_norm_eps"):
        ReformerModel(config)


@pytest.mark.parametrize(
    "content, match",
    [
        (b"\xff\xfe{}", "not UTF-8"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({**TINY, "hidden_size": "16"}).encode(), "hidden_size"),
        (json.dumps({**TINY, "layer_norm_eps": -1}).encode(), "layer_norm_eps"),
        (json.dumps({**TINY, "attn_layers": "lsh"}).encode(), "attn_layers"),
    ],
)
def test_bad_config_json_names_the_file_and_field(tmp_path, content, match):
    path = tmp_path / "config.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as info:
        ReformerConfig.from_pretrained(tmp_path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == content  # nothing the user has is modified
