"""ReformerConfig: transformers' fields and defaults, JSON round trips both ways, clear errors."""
import json

import pytest
import transformers

from reformer_kernels.models import ReformerConfig

TINY = dict(hidden_size=16, attention_head_size=8, num_attention_heads=2, feed_forward_size=32, vocab_size=50,
            axial_pos_shape=[8, 8], axial_pos_embds_dim=[8, 8], max_position_embeddings=64)


def test_defaults_match_transformers():
    ours, theirs = ReformerConfig().to_dict(), transformers.ReformerConfig().to_dict()
    for name, value in ours.items():
        if name in theirs:
            assert value == theirs[name], name
    own_fields = {name for name in vars(transformers.ReformerConfig).get("__annotations__", {}) if not name.startswith("_")}
    own_fields -= {"model_type", "keys_to_ignore_at_inference", "attribute_map"}
    assert len(own_fields) > 30
    assert not own_fields - set(ours), f"fields of transformers' ReformerConfig we lack: {own_fields - set(ours)}"
    assert ReformerConfig().num_hidden_layers == transformers.ReformerConfig().num_hidden_layers


def test_dict_and_json_round_trip(tmp_path):
    config = ReformerConfig(**TINY, num_buckets=[4, 2], hash_seed=3, attn_layers=["lsh", "local", "lsh"], num_labels=3)
    assert ReformerConfig.from_dict(config.to_dict()) == config
    path = tmp_path / "config.json"
    config.to_json_file(path)
    assert ReformerConfig.from_json_file(path) == config
    config.save_pretrained(tmp_path / "saved")
    assert ReformerConfig.from_pretrained(tmp_path / "saved") == config
    assert ReformerConfig.from_pretrained(tmp_path / "saved", num_hashes=4).num_hashes == 4


def test_transformers_reads_ours_and_we_read_theirs(tmp_path):
    ours = ReformerConfig(**TINY, num_buckets=[4, 2], attn_layers=["lsh", "local"], is_decoder=True, num_labels=3)
    ours.save_pretrained(tmp_path / "ours")
    theirs = transformers.ReformerConfig.from_pretrained(tmp_path / "ours")
    for name, value in ours.to_dict().items():
        if name in ("id2label", "label2id", "architectures", "transformers_version"):
            continue
        got = getattr(theirs, name)
        assert (list(got) if isinstance(got, tuple) else got) == value, name
    assert theirs.num_labels == 3
    theirs.save_pretrained(tmp_path / "theirs")
    back = ReformerConfig.from_pretrained(tmp_path / "theirs")
    assert back.num_buckets == [4, 2] and back.attn_layers == ["lsh", "local"] and back.num_labels == 3 and back.is_decoder


@pytest.mark.parametrize(
    "override, field",
    [
        (dict(axial_pos_embds_dim=[8, 4]), "axial_pos_embds_dim"),
        (dict(axial_pos_embds_dim=[16]), "axial_pos_embds_dim"),
        (dict(attention_head_size=0), "attention_head_size"),
        (dict(num_attention_heads=2.0), "num_attention_heads"),
        (dict(lsh_attn_chunk_length=0), "lsh_attn_chunk_length"),
        (dict(local_attn_chunk_length=None, attn_layers=["local"]), "local_attn_chunk_length"),
        (dict(lsh_num_chunks_before=-1), "lsh_num_chunks_before"),
        (dict(attn_layers=["lsh", "global"]), "attn_layers"),
        (dict(attn_layers=[]), "attn_layers"),
        (dict(num_buckets=7), "num_buckets"),
        (dict(num_buckets=[4, 3]), "num_buckets"),
        (dict(num_buckets=[]), "num_buckets"),
        (dict(hidden_dropout_prob=1.5), "hidden_dropout_prob"),
        (dict(hidden_act="mish"), "hidden_act"),
        (dict(hash_seed="7"), "hash_seed"),
    ],
)
def test_invalid_fields_name_the_field(override, field):
    with pytest.raises(ValueError, match=field):
        ReformerConfig(**{**TINY, **override})


def test_unused_layer_type_chunk_length_is_not_checked():
    assert ReformerConfig(**TINY, attn_layers=["local"], lsh_attn_chunk_length=None).lsh_attn_chunk_length is None


def test_bad_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        ReformerConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ReformerConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type"):
        ReformerConfig.from_pretrained(tmp_path)
