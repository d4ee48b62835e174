"""Hostile inputs to ReformerTokenizer and ByteTokenizer: wrong types, None, bytes, absurd or
negative lengths, ids outside the vocabulary, missing or corrupt spiece.model and
tokenizer_config.json. Each is a TypeError or ValueError naming the argument or file."""
import os
import shutil

import pytest

from reformer_kernels.tokenization import ByteTokenizer, ReformerTokenizer

from .isolated import value_error_in_subprocess

ENGLISH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "english.txt")


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sp")
    ReformerTokenizer.train(ENGLISH, vocab_size=300, pad_token="<pad>", progress=False).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def byte_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("byte")
    ByteTokenizer(model_max_length=64).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=["sentencepiece", "byte"])
def tok(request, sp_dir, byte_dir):
    return ReformerTokenizer.from_pretrained(sp_dir) if request.param == "sentencepiece" else ByteTokenizer.from_pretrained(byte_dir)


@pytest.mark.parametrize("call, error, match", [
    (lambda t: t(None), TypeError, "text must be a str"),
    (lambda t: t(5), TypeError, "text must be a str"),
    (lambda t: t(["a", 3]), TypeError, r"text\[1\] must be a str"),
    (lambda t: t([["a"]]), TypeError, r"text\[0\] must be a str"),
    (lambda t: t.encode(None), TypeError, "text must be a str"),
    (lambda t: t("a\ud800b"), ValueError, "lone surrogate"),
    (lambda t: t("hello", max_length=-1, truncation=True), ValueError, "max_length=-1"),
    (lambda t: t("hello", max_length="5", truncation=True), ValueError, "max_length='5'"),
    (lambda t: t("hello", max_length=5.0, truncation=True), ValueError, "max_length=5.0"),
    # Was a MemoryError after minutes of swapping.
    (lambda t: t("hello", max_length=10**12, padding="max_length"), ValueError, "max_length"),
    (lambda t: t(["a"] * 3, max_length=2**30, padding="max_length", return_tensors="pt"), ValueError, "max_length"),
    (lambda t: t("hello", padding="sides"), ValueError, "padding='sides'"),
    (lambda t: t("hello", padding=True, pad_to_multiple_of=0), ValueError, "pad_to_multiple_of=0"),
    (lambda t: t("hello", padding=True, pad_to_multiple_of=-2), ValueError, "pad_to_multiple_of=-2"),
    (lambda t: t("hello", return_tensors="tf"), ValueError, "return_tensors='tf'"),
    (lambda t: t("hello", padding_side="up"), ValueError, "padding_side='up'"),
    (lambda t: t.decode(None), TypeError, "token_ids"),
    (lambda t: t.decode("abc"), TypeError, "token_ids"),
    (lambda t: t.decode([-1]), ValueError, "token_ids contains id -1"),
    (lambda t: t.decode([2**70]), ValueError, "token_ids contains id"),
    (lambda t: t.decode([1.5]), TypeError, "token_ids contains 1.5"),
    (lambda t: t.batch_decode("abc"), TypeError, "sequences"),
    (lambda t: t.convert_ids_to_tokens([10**9]), ValueError, "ids contains id"),
    (lambda t: t.convert_tokens_to_ids(None), TypeError, "tokens must be a str"),  # was 'NoneType' is not iterable
    (lambda t: t.convert_tokens_to_ids(5), TypeError, "tokens must be a str"),
])
def test_hostile_call(tok, call, error, match):
    with pytest.raises(error, match=match):
        call(tok)


@pytest.mark.parametrize("cls", [ReformerTokenizer, ByteTokenizer])
def test_from_pretrained_arguments(cls, sp_dir, byte_dir, tmp_path):
    folder = sp_dir if cls is ReformerTokenizer else byte_dir
    with pytest.raises(TypeError, match="save_directory must be a folder path"):
        cls.from_pretrained(None)
    with pytest.raises(ValueError, match="save_directory .* is not a directory"):
        cls.from_pretrained(tmp_path / "nothing")
    with pytest.raises(ValueError, match="model_max_length=-1"):
        cls.from_pretrained(folder, model_max_length=-1)


def test_vocab_file_arguments():
    with pytest.raises(TypeError, match="vocab_file must be a path"):
        ReformerTokenizer(None)
    with pytest.raises(ValueError, match="vocab_file .* does not exist"):
        ReformerTokenizer("/no/such/spiece.model")


CONFIG_DAMAGE = [
    (b"{bad", "not valid JSON"),
    (b"\xff\xfe{}", "not UTF-8"),                                        # was UnicodeDecodeError
    (b"[1, 2]", "must hold a JSON object"),                              # was AttributeError
    (b'{"added_tokens_decoder": {"a": "b"}}', "added_tokens_decoder"),   # was int()'s ValueError
    (b'{"added_tokens_decoder": [1]}', "added_tokens_decoder"),          # was AttributeError
    (b'{"additional_special_tokens": "abc"}', "additional_special_tokens"),  # was three special tokens a, b, c
    (b'{"model_max_length": "x"}', "model_max_length='x'"),
    (b'{"padding_side": 3}', "padding_side=3"),
    (b'{"eos_token": 5}', "special token 5"),
]


@pytest.mark.parametrize("content, match", CONFIG_DAMAGE)
def test_corrupt_tokenizer_config(sp_dir, tmp_path, content, match):
    folder = tmp_path / "tok"
    shutil.copytree(sp_dir, folder)
    (folder / "tokenizer_config.json").write_bytes(content)
    with pytest.raises(ValueError if match != "special token 5" else TypeError, match=match) as info:
        ReformerTokenizer.from_pretrained(folder)
    assert str(folder) in str(info.value)
    assert (folder / "tokenizer_config.json").read_bytes() == content


@pytest.mark.parametrize("content, match", CONFIG_DAMAGE[:3])
def test_corrupt_byte_tokenizer_config(byte_dir, tmp_path, content, match):
    folder = tmp_path / "tok"
    shutil.copytree(byte_dir, folder)
    (folder / "tokenizer_config.json").write_bytes(content)
    with pytest.raises(ValueError, match=match):
        ByteTokenizer.from_pretrained(folder)


def test_missing_spiece_model(sp_dir, tmp_path):
    folder = tmp_path / "tok"
    shutil.copytree(sp_dir, folder)
    os.remove(folder / "spiece.model")
    with pytest.raises(ValueError, match="has no spiece.model or tokenizer.model"):
        ReformerTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("content", [b"", b"garbage", b"\x0a\xff\xff\xff\xff\x0f" + b"\x00" * 64])
def test_corrupt_spiece_model_in_a_subprocess(sp_dir, tmp_path, content):
    """sentencepiece parses the proto in C++: run it where a crash cannot take pytest down."""
    folder = tmp_path / "tok"
    shutil.copytree(sp_dir, folder)
    (folder / "spiece.model").write_bytes(content)
    message = value_error_in_subprocess("from reformer_kernels.tokenization import ReformerTokenizer",
                                        f"ReformerTokenizer.from_pretrained({str(folder)!r})")
    assert "is not a sentencepiece model" in message
    assert (folder / "spiece.model").read_bytes() == content
