"""`reformer-kernels generate` streaming and its prompt file: ``training.generate_stream`` yields
the continuation piece by piece as the tokens are chosen, and its text equals ``training.generate``'s;
``--prompt-file`` and its errors; the prompt-versus-positions check; a ≥ 100K-token prompt (slow)."""
import os

import pytest
import torch

from reformer_kernels import cli, training
from reformer_kernels.models import ReformerConfig, ReformerModelWithLMHead
from reformer_kernels.tokenization import ByteTokenizer, ReformerTokenizer

ENGLISH = os.path.join(os.path.dirname(__file__), "data", "english.txt")
PRINTABLE_ASCII = range(0x20 + ByteTokenizer.offset, 0x7F + ByteTokenizer.offset)


def _checkpoint(folder, tokenizer=None, vocab_size=ByteTokenizer.vocab_size, seq_len=64, eos_token_id=None, **overrides):
    """A folder as ``train`` writes it (config, weights, tokenizer) holding a random tiny model."""
    settings = training.model_settings(
        vocab_size=vocab_size, seq_len=seq_len, heads=1, head_dim=8, chunk_len=8, attn_layers=("local", "lsh"), num_hashes=1,
        pad_token_id=0, eos_token_id=eos_token_id,
    )
    model = ReformerModelWithLMHead(ReformerConfig(**{**settings, **overrides}))
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return model


def _only_tokens(folder, tokens):
    """Make the saved model choose among ``tokens`` only (sampling picks one of them at random)."""
    model = ReformerModelWithLMHead.from_pretrained(folder)
    with torch.no_grad():
        model.lm_head.decoder.weight.zero_()
        for bias in (model.lm_head.bias, model.lm_head.decoder.bias):  # the logits use decoder.bias; a save keeps both
            bias.fill_(-1e4)
            bias[list(tokens)] = 0.0
    model.save_pretrained(folder)


def _streamed(folder, prompt, max_new_tokens, **options):
    stream = training.generate_stream(folder, prompt, max_new_tokens, device="cpu", **options)
    return stream, list(stream)


@pytest.mark.parametrize("sampling", [{}, {"do_sample": True, "seed": 3}])
@pytest.mark.parametrize("prompt", ["The sea", "Café ☕ naïve"])
def test_byte_stream_equals_generate(tmp_path, prompt, sampling):
    """Random weights choose arbitrary bytes: characters split over tokens, bytes that never form
    one; the streamed text is generate's all the same."""
    _checkpoint(tmp_path, ByteTokenizer())
    stream, pieces = _streamed(tmp_path, prompt, 24, **sampling)
    assert stream.prompt_text == prompt and stream.new_tokens == 24
    assert stream.prompt_text + "".join(pieces) == training.generate(tmp_path, prompt, 24, device="cpu", **sampling)
    assert all(pieces)


def test_multi_byte_characters_come_whole(tmp_path):
    """A model that emits only the two bytes of 'é' (C3 A9): a piece never ends in a character's
    first byte; a lone or repeated first byte shows as U+FFFD once its next byte proves it invalid."""
    _checkpoint(tmp_path, ByteTokenizer())
    _only_tokens(tmp_path, [0xC3 + ByteTokenizer.offset, 0xA9 + ByteTokenizer.offset])
    stream, pieces = _streamed(tmp_path, "x", 40, do_sample=True, seed=1)
    text = training.generate(tmp_path, "x", 40, do_sample=True, seed=1, device="cpu")
    assert "x" + "".join(pieces) == text and "é" in text and "\ufffd" in text
    assert len(pieces) < stream.new_tokens
    for piece in pieces[:-1]:
        assert not piece.endswith("\ufffd")


def test_sentencepiece_stream_keeps_the_spaces_between_pieces(tmp_path):
    tokenizer = ReformerTokenizer.train(ENGLISH, vocab_size=300, progress=False)
    _checkpoint(tmp_path, tokenizer, vocab_size=tokenizer.vocab_size, eos_token_id=tokenizer.eos_token_id)
    for sampling in ({}, {"do_sample": True, "seed": 0}):
        stream, pieces = _streamed(tmp_path, "the old house", 12, **sampling)
        assert stream.prompt_text + "".join(pieces) == training.generate(tmp_path, "the old house", 12, device="cpu", **sampling)
    assert " " in "".join(pieces)


def test_a_task_model_streams_one_id_per_token(tmp_path):
    _checkpoint(tmp_path, vocab_size=8)
    stream, pieces = _streamed(tmp_path, "0 3 1", 6)
    assert stream.prompt_text == "0 3 1" and len(pieces) == 6 and all(p.startswith(" ") for p in pieces)
    assert stream.prompt_text + "".join(pieces) == training.generate(tmp_path, "0 3 1", 6, device="cpu")


def test_each_token_is_yielded_before_the_next_is_computed(tmp_path, monkeypatch):
    """The k-th piece comes after the model's k-th forward (the prompt's, then one cached step per
    token) and before its (k+1)-th: the tokens are not generated first and shown afterwards."""
    _checkpoint(tmp_path, ByteTokenizer())
    _only_tokens(tmp_path, PRINTABLE_ASCII)  # one character per token
    forwards = []
    forward = ReformerModelWithLMHead.forward
    monkeypatch.setattr(ReformerModelWithLMHead, "forward", lambda self, *a, **k: forwards.append(1) or forward(self, *a, **k))
    stream = training.generate_stream(tmp_path, "abc", 10, do_sample=True, device="cpu")
    seen = []
    for piece in stream:
        seen.append(piece)
        assert len(piece) == 1 and len(forwards) == len(seen) == stream.new_tokens
    assert len(seen) == 10 and stream.prefill_s > 0 and stream.decode_s > 0 and stream.decode_tokens_per_s > 0
    with pytest.raises(ValueError, match="runs once"):
        list(stream)


class _Terminal:
    """sys.stdout that records what was written and when it was flushed."""

    def __init__(self):
        self.events = []

    def write(self, text):
        self.events.append(("write", text))

    def flush(self):
        self.events.append(("flush", None))


def test_cli_streams_a_prompt_file_and_reports_the_rates(tmp_path, monkeypatch, capsys):
    run, prompt = tmp_path / "run", tmp_path / "prompt.txt"
    _checkpoint(run, ByteTokenizer())
    _only_tokens(run, PRINTABLE_ASCII)
    prompt.write_text("It was a dark and stormy night; ", encoding="utf-8")
    terminal, threads = _Terminal(), []
    monkeypatch.setattr("sys.stdout", terminal)
    monkeypatch.setattr(torch, "set_num_threads", threads.append)  # the test process keeps its threads
    assert cli.main(["generate", str(run), "--prompt-file", str(prompt), "--max-new-tokens", "8", "--do-sample", "--device", "cpu",
                     "--threads", "1"]) == 0
    assert threads == [1]
    written = "".join(text for kind, text in terminal.events if kind == "write")
    expected = training.generate(run, None, 8, prompt_file=prompt, do_sample=True, device="cpu")
    assert written == expected[len(prompt.read_text()):] + "\n"  # the file's prompt is not printed again
    # every token's character is flushed before the next one is written
    kinds = [kind for kind, text in terminal.events if kind == "flush" or text not in ("", "\n")]
    assert kinds[:16] == ["write", "flush"] * 8
    report = capsys.readouterr().err
    assert "prompt 32 tokens: prefill" in report and "8 new tokens: decoding" in report and "tokens/s" in report

    monkeypatch.undo()
    assert cli.main(["generate", str(run), "--prompt", "The sea", "--max-new-tokens", "3", "--device", "cpu"]) == 0
    assert capsys.readouterr().out == training.generate(run, "The sea", 3, device="cpu") + "\n"


def test_ctrl_c_keeps_the_text_so_far_and_reports_it(tmp_path, monkeypatch, capsys):
    _checkpoint(tmp_path, ByteTokenizer())
    _only_tokens(tmp_path, PRINTABLE_ASCII)
    forward = ReformerModelWithLMHead.forward

    def interrupted_at_the_fourth(self, *args, **kwargs):
        interrupted_at_the_fourth.calls += 1
        if interrupted_at_the_fourth.calls == 4:
            raise KeyboardInterrupt
        return forward(self, *args, **kwargs)

    interrupted_at_the_fourth.calls = 0
    monkeypatch.setattr(ReformerModelWithLMHead, "forward", interrupted_at_the_fourth)
    assert cli.main(["generate", str(tmp_path), "--prompt", "ab", "--max-new-tokens", "9", "--do-sample", "--device", "cpu"]) == 130
    captured = capsys.readouterr()
    assert len(captured.out) == len("ab") + 3 + 1 and captured.out.startswith("ab") and captured.out.endswith("\n")
    assert "3 new tokens: decoding" in captured.err and captured.err.rstrip().endswith("(interrupted)")


def _error(argv):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    return str(info.value.code)


def test_prompt_file_errors_name_the_file(tmp_path):
    run = tmp_path / "run"
    _checkpoint(run, ByteTokenizer(), seq_len=64)
    generate = ["generate", str(run), "--device", "cpu", "--prompt-file"]
    missing = tmp_path / "missing.txt"
    assert f"--prompt-file {str(missing)!r} is not a file" in _error([*generate, str(missing)])
    assert f"--prompt-file {str(tmp_path)!r} is not a file" in _error([*generate, str(tmp_path)])
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert f"--prompt-file {str(empty)!r} is empty" in _error([*generate, str(empty)])
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café".encode("latin-1"))
    assert f"--prompt-file {str(latin1)!r} is not UTF-8 text" in _error([*generate, str(latin1)])
    long = tmp_path / "long.txt"
    long.write_text("a" * 60)
    message = _error([*generate, str(long), "--max-new-tokens", "5"])
    assert f"--prompt-file {str(long)!r} has 60 tokens" in message and "need 65 positions" in message and "has 64" in message
    for argv in (["generate", str(run), "--prompt", "a", "--prompt-file", str(long)], ["generate", str(run)],
                 ["generate", str(run), "--prompt", "a", "--threads", "0"]):
        with pytest.raises(SystemExit) as usage:  # argparse: one of the two prompts, exactly; threads >= 1
            cli.main(argv)
        assert usage.value.code == 2
    with pytest.raises(ValueError, match="exactly one of --prompt TEXT and --prompt-file PATH"):
        training.generate_stream(run, "a", 1, prompt_file=long)
    assert latin1.read_bytes() == "café".encode("latin-1")  # nothing the user has is changed


def test_a_prompt_past_the_axial_positions_names_the_limit(tmp_path):
    run = tmp_path / "run"
    _checkpoint(run, ByteTokenizer(), axial_pos_embds=True, axial_pos_shape=[4, 8], axial_pos_embds_dim=[4, 4],
                max_position_embeddings=1024)
    message = _error(["generate", str(run), "--prompt", "a" * 30, "--max-new-tokens", "3", "--device", "cpu"])
    assert "--prompt 'aaa" in message and "has 30 tokens, which with --max-new-tokens 3 need 33 positions" in message
    assert "has 32 (max_position_embeddings, or prod(axial_pos_shape))" in message


@pytest.mark.slow
def test_a_100k_token_prompt_file_streams(tmp_path, capsys):
    """The long-context demo at its size: a 100K-token prompt file, positions (256, 512) = 131072."""
    run, prompt = tmp_path / "run", tmp_path / "prompt.txt"
    _checkpoint(run, ByteTokenizer(), seq_len=131072, axial_pos_embds=True, axial_pos_shape=[256, 512], axial_pos_embds_dim=[4, 4],
                num_buckets=[32, 64], max_position_embeddings=131072)
    with open(ENGLISH, encoding="utf-8") as f:
        text = f.read()
    prompt.write_text((text * (100_000 // len(text) + 1))[:100_000], encoding="utf-8")
    assert cli.main(["generate", str(run), "--prompt-file", str(prompt), "--max-new-tokens", "16", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert f"prompt {len(prompt.read_bytes())} tokens: prefill" in captured.err and "16 new tokens: decoding" in captured.err
    assert captured.out == training.generate(run, None, 16, prompt_file=prompt, device="cpu")[len(prompt.read_text()):] + "\n"
