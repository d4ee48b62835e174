"""Hostile checkpoints for from_pretrained: wrong dtypes, shapes, keys and damaged files are a
ValueError naming the key or file, the stored and the expected; the files stay as they were."""
import json
import os
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from reformer_kernels.models import ReformerConfig, ReformerModel, ReformerModelWithLMHead

from .isolated import value_error_in_subprocess

TINY = dict(hidden_size=16, attention_head_size=8, num_attention_heads=2, feed_forward_size=32, vocab_size=50,
            axial_pos_shape=[8, 8], axial_pos_embds_dim=[8, 8], max_position_embeddings=64, attn_layers=["local", "lsh"],
            local_attn_chunk_length=4, lsh_attn_chunk_length=4, is_decoder=True, hash_seed=0)
WORDS = "reformer.embeddings.word_embeddings.weight"


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    ReformerModelWithLMHead(ReformerConfig(**TINY)).save_pretrained(tmp_path)
    return tmp_path


def _rewrite(folder, change):
    state = load_file(folder / "model.safetensors")
    change(state)
    save_file(state, folder / "model.safetensors")
    return (folder / "model.safetensors").read_bytes()


def _files(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


@pytest.mark.parametrize("change, match", [
    # An int32 copy of a float weight loaded silently truncated.
    (lambda s: s.update({WORDS: (s[WORDS] * 100).to(torch.int32)}),
     rf"{WORDS}' is stored as torch.int32 \(50, 16\) but the model expects torch.float32 \(50, 16\)"),
    (lambda s: s.update({WORDS: s[WORDS].bool()}), rf"{WORDS}' is stored as torch.bool"),
    (lambda s: s.update({WORDS: s[WORDS][:, :8].contiguous()}),
     rf"{WORDS}' is stored as torch.float32 \(50, 8\) but the model expects torch.float32 \(50, 16\)"),
    (lambda s: s.update({"lm_head.decoder.weight": s["lm_head.decoder.weight"][:10].contiguous()}), "lm_head.decoder.weight"),
    (lambda s: s.pop(WORDS), rf"missing keys \['{WORDS}'\]"),
    (lambda s: s.update({"reformer.extra": torch.zeros(1)}), r"unexpected keys \['reformer.extra'\]"),
])
def test_tensor_that_does_not_fit_the_model_is_named(saved, change, match):
    _rewrite(saved, change)
    before = _files(saved)
    with pytest.raises(ValueError, match=match) as info:
        ReformerModelWithLMHead.from_pretrained(saved)
    assert str(saved) in str(info.value)
    assert _files(saved) == before


def test_float_of_another_width_is_cast_as_in_transformers(saved):
    _rewrite(saved, lambda s: s.update({WORDS: s[WORDS].half()}))
    model = ReformerModelWithLMHead.from_pretrained(saved)
    assert model.reformer.embeddings.word_embeddings.weight.dtype == torch.float32


@pytest.mark.parametrize("kept", ["lm_head.bias", "lm_head.decoder.bias"])
def test_either_lm_head_bias_name_loads(saved, kept):
    dropped = "lm_head.decoder.bias" if kept == "lm_head.bias" else "lm_head.bias"
    _rewrite(saved, lambda s: s.pop(dropped))
    ReformerModelWithLMHead.from_pretrained(saved)


def test_config_that_does_not_belong_to_the_weights(saved):
    config = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps({**config, "feed_forward_size": 64}))
    with pytest.raises(ValueError, match=r"feed_forward.*is stored as torch.float32 \(32,?.*\) but the model expects torch.float32 \(64"):
        ReformerModelWithLMHead.from_pretrained(saved)


def test_base_model_checkpoint_checks_too(saved):
    _rewrite(saved, lambda s: s.update({WORDS: s[WORDS].to(torch.int64)}))
    with pytest.raises(ValueError, match="word_embeddings.weight' is stored as torch.int64"):
        ReformerModel.from_pretrained(saved)


DAMAGE = {
    "truncated": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
    # A header length far past the end of the file.
    "huge header": lambda data: struct.pack("<Q", 2**62) + data[8:],
    "garbage header": lambda data: data[:8] + b"\xff" * 64 + data[72:],
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_safetensors_is_a_value_error_in_a_subprocess(saved, damage):
    path = saved / "model.safetensors"
    path.write_bytes(DAMAGE[damage](path.read_bytes()))
    before = _files(saved)
    message = value_error_in_subprocess("from reformer_kernels.models import ReformerModelWithLMHead",
                                        f"ReformerModelWithLMHead.from_pretrained({str(saved)!r})")
    assert "model.safetensors" in message
    assert _files(saved) == before


def test_damaged_pytorch_bin_is_a_value_error(saved):
    os.remove(saved / "model.safetensors")
    (saved / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ValueError, match="pytorch_model.bin"):
        ReformerModelWithLMHead.from_pretrained(saved)
    torch.save({"a": 1}, saved / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pytorch_model.bin"):
        ReformerModelWithLMHead.from_pretrained(saved)


def test_not_a_directory_is_an_os_error_as_in_transformers(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing' is not a directory"):
        ReformerModelWithLMHead.from_pretrained(tmp_path / "nothing")
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="file' is not a directory"):
        ReformerModelWithLMHead.from_pretrained(tmp_path / "file")
