"""reformer_kernels._atomic: a save that fails leaves the previous files whole and no temporary
file behind, for one file, for a group of files, and for the saves that use it (model, tokenizer)."""
import errno
import os

import pytest
import safetensors.torch
import torch

from reformer_kernels._atomic import all_or_nothing, atomic_write
from reformer_kernels.models import ReformerConfig, ReformerModelWithLMHead
from reformer_kernels.tokenization import ByteTokenizer


def _files(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_one_file_is_replaced_whole_or_not_at_all(tmp_path):
    path = tmp_path / "a.txt"
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write("old")
    with pytest.raises(OSError, match="No space left"):
        with atomic_write(path, "w", encoding="utf-8") as f:
            f.write("new, half")
            _disk_full()
    assert _files(tmp_path) == {"a.txt": b"old"}
    with atomic_write(path) as f:
        f.write(b"new")
    assert _files(tmp_path) == {"a.txt": b"new"}


def test_a_group_of_files_is_replaced_together_in_order(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with all_or_nothing():
            with atomic_write(tmp_path / "a") as f:
                f.write(b"new")
            raise KeyboardInterrupt  # a second Ctrl-C between two files
    assert _files(tmp_path) == {"a": b"old", "b": b"old"}
    renamed = []
    with all_or_nothing():
        for name in ("a", "b"):
            with atomic_write(tmp_path / name) as f:
                f.write(b"new")
            with all_or_nothing():  # a nested block joins the outer one
                with atomic_write(tmp_path / "c") as f:
                    f.write(b"c")
            renamed.append(_files(tmp_path))
    assert all(files["a"] == b"old" and "c" not in files for files in renamed)  # nothing renamed before the end
    assert _files(tmp_path) == {"a": b"new", "b": b"new", "c": b"c"}


def test_model_save_pretrained_that_fails_keeps_config_and_weights(tmp_path, monkeypatch):
    model = ReformerModelWithLMHead(ReformerConfig(
        vocab_size=8, hidden_size=8, num_attention_heads=1, attention_head_size=8, feed_forward_size=8,
        attn_layers=["local"], axial_pos_embds=False, max_position_embeddings=8, is_decoder=True,
    ))
    model.save_pretrained(tmp_path)
    before = _files(tmp_path)
    model.config.vocab_size = 9  # config.json would change: it is written before the weights
    monkeypatch.setattr(safetensors.torch, "save_file", _disk_full)
    with pytest.raises(OSError, match="No space left"):
        model.save_pretrained(tmp_path)
    assert _files(tmp_path) == before
    loaded = ReformerModelWithLMHead.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_tokenizer_save_that_fails_keeps_the_previous_files(tmp_path, monkeypatch):
    ByteTokenizer().save_pretrained(tmp_path)
    before = _files(tmp_path)
    monkeypatch.setattr(os, "fsync", _disk_full)
    with pytest.raises(OSError, match="No space left"):
        ByteTokenizer(padding_side="left").save_pretrained(tmp_path)
    assert _files(tmp_path) == before
