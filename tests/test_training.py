"""reformer_kernels.training and the `reformer-kernels train | generate` commands: the duplication
task and its accuracy, checkpoints that resume bit for bit, Ctrl-C, the loss plot, bad arguments."""
import errno
import json
import os
import shutil
import signal
import sys
import types

import pytest
import torch
from safetensors.torch import load_file

from reformer_kernels import cli, training
from reformer_kernels.models import ReformerModelWithLMHead
from reformer_kernels.training import TrainingArguments, loop

ENGLISH = os.path.join(os.path.dirname(__file__), "data", "english.txt")
# A model small enough that a step takes milliseconds.
TINY_TASK = dict(
    task="duplication", vocab_size=8, seq_len=16, batch_size=4, heads=1, head_dim=8, chunk_len=4, steps=4, eval_sequences=64,
)
TINY_TEXT = dict(text=ENGLISH, seq_len=32, batch_size=2, heads=1, head_dim=8, chunk_len=8, steps=3)


def _tiny_task(out, **overrides):
    return TrainingArguments(out=str(out), **{**TINY_TASK, **overrides})


def _weights(folder):
    return load_file(os.path.join(folder, "model.safetensors"))


def _assert_same_checkpoint(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    sa, sb = training.read_state(a), training.read_state(b)
    assert sa["step"] == sb["step"] and sa["losses"] == sb["losses"]
    assert {**sa["args"], "save_every": 0} == {**sb["args"], "save_every": 0}
    oa = torch.load(os.path.join(a, training.OPTIMIZER_FILE), weights_only=True)
    ob = torch.load(os.path.join(b, training.OPTIMIZER_FILE), weights_only=True)
    for key in ("torch", "data"):
        assert torch.equal(oa["rng"][key], ob["rng"][key]), key
    for pa, pb in zip(oa["optimizer"]["state"].values(), ob["optimizer"]["state"].values()):
        for key in pa:
            assert torch.equal(pa[key], pb[key]), key


# ---- the duplication task ---------------------------------------------------------------------


def test_duplication_batch_is_0w0w():
    tokens = training.duplication_batch(64, 20, 5, torch.Generator().manual_seed(3))
    assert tokens.shape == (64, 20) and tokens.dtype == torch.long
    assert (tokens[:, 0] == 0).all() and (tokens[:, 10] == 0).all()
    assert torch.equal(tokens[:, 1:10], tokens[:, 11:])
    assert tokens[:, 1:10].min() == 1 and tokens[:, 1:10].max() == 4
    again = training.duplication_batch(64, 20, 5, torch.Generator().manual_seed(3))
    assert torch.equal(tokens, again)


def test_duplication_accuracy_scores_the_second_half():
    tokens = training.duplication_batch(8, 12, 6, torch.Generator().manual_seed(0))
    seen = {}

    def oracle(input_ids, num_hashes):
        # Predicts the true next token everywhere except at position 8, where it predicts the
        # separator 0, which w never holds.
        seen["num_hashes"] = num_hashes
        logits = torch.nn.functional.one_hot(input_ids.roll(-1, dims=1), 6).float()
        logits[:, 8] = torch.nn.functional.one_hot(torch.zeros(8, dtype=torch.long), 6).float()
        return types.SimpleNamespace(logits=logits)

    accuracy = training.duplication_accuracy(oracle, tokens, num_hashes=4)
    assert seen["num_hashes"] == 4
    assert accuracy == pytest.approx(4 / 5)  # 5 predicted positions of w (6..10), one always wrong


@pytest.mark.slow
def test_duplication_reaches_95_percent(tmp_path):
    # The README's command at its default size (minutes on two CPU cores).
    result = training.train(TrainingArguments(out=str(tmp_path / "run"), task="duplication"), progress=False)
    assert result.accuracy[2] >= 0.95, result.accuracy


# ---- checkpoints, resume, Ctrl-C --------------------------------------------------------------


def test_resume_continues_exactly_as_the_uninterrupted_run(tmp_path):
    saved_steps = []

    def read_saved_step(step, loss):
        if step > 2:
            saved_steps.append(training.read_state(tmp_path / "whole")["step"])

    # --save-every 2 writes step 2's checkpoint, which steps 3 and 4 see; saving changes no result.
    whole = training.train(_tiny_task(tmp_path / "whole", save_every=2), progress=False, on_step=read_saved_step)
    assert saved_steps == [2, 2]
    first = training.train(_tiny_task(tmp_path / "parts", steps=2), progress=False)
    assert first.step == 2 and training.read_state(tmp_path / "parts")["step"] == 2
    rest = training.train(TrainingArguments(out=str(tmp_path / "parts"), steps=4, eval_sequences=64), resume=True, progress=False)
    assert rest.step == whole.step == 4 and len(rest.losses) == 4
    assert rest.losses == whole.losses
    assert rest.accuracy == whole.accuracy and set(whole.accuracy) == {1, 2, 4, 8}
    _assert_same_checkpoint(tmp_path / "whole", tmp_path / "parts")


def test_ctrl_c_saves_after_the_step_and_resumes(tmp_path):
    def press_ctrl_c(step, loss):
        if step == 2:
            signal.raise_signal(signal.SIGINT)

    previous = signal.getsignal(signal.SIGINT)
    stopped = training.train(_tiny_task(tmp_path / "stopped"), progress=False, on_step=press_ctrl_c)
    assert signal.getsignal(signal.SIGINT) is previous  # the handler is put back
    assert stopped.interrupted and stopped.step == 2 and stopped.accuracy is None
    assert training.read_state(tmp_path / "stopped")["step"] == 2
    resumed = training.train(TrainingArguments(out=str(tmp_path / "stopped"), eval_sequences=64), resume=True, progress=False)
    assert resumed.step == 4 and not resumed.interrupted  # --steps comes from the checkpoint
    training.train(_tiny_task(tmp_path / "whole"), progress=False)
    _assert_same_checkpoint(tmp_path / "whole", tmp_path / "stopped")


def test_checkpoint_folder_loads_in_transformers(tmp_path):
    import transformers
    out = tmp_path / "run"
    training.train(_tiny_task(out, steps=1), progress=False)
    hf = transformers.ReformerModelWithLMHead.from_pretrained(str(out))
    ours = ReformerModelWithLMHead.from_pretrained(out)
    # One chunk (4 tokens) is full attention: no random rotations, so the outputs must agree.
    tokens = training.duplication_batch(2, 16, 8, torch.Generator().manual_seed(0))[:, :4]
    with torch.no_grad():
        assert torch.allclose(ours.eval()(tokens).logits, hf.eval()(tokens).logits, atol=1e-5)


def test_loss_plot_and_its_message_without_matplotlib(tmp_path, monkeypatch, capsys):
    path = tmp_path / "loss.png"
    assert training.plot_losses([3.0, 2.5, 2.0] * 40, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    assert not training.plot_losses([1.0], str(tmp_path / "none.png"))
    assert "pip install matplotlib" in capsys.readouterr().out and not (tmp_path / "none.png").exists()


# ---- the commands -----------------------------------------------------------------------------


def _flags(options):
    flags = []
    for name, value in options.items():
        flags += [f"--{name.replace('_', '-')}", str(value)]
    return flags


def test_cli_train_text_then_generate(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *_flags(TINY_TEXT), "--layers", "local,lsh", "--out", str(out), "--quiet"]) == 0
    assert "saved step 3" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == sorted(
        ["config.json", "model.safetensors", "optimizer.pt", "trainer_state.json", "tokenizer_config.json", "loss.png"]
    )
    state = training.read_state(out)
    assert state["tokenizer"] == "byte" and state["args"]["attn_layers"] == ["local", "lsh"]
    assert len(state["losses"]) == 3 and all(loss > 0 for loss in state["losses"])
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 258
    assert cli.main(["generate", str(out), "--prompt", "The sea", "--max-new-tokens", "5"]) == 0
    text = capsys.readouterr().out.rstrip("\n")
    assert text.startswith("The sea") and len(text.encode()) >= len("The sea")
    assert cli.main(["generate", str(out), "--prompt", "The sea", "--max-new-tokens", "5", "--do-sample", "--top-k", "3", "--seed", "1"]) == 0
    sampled = capsys.readouterr().out
    assert cli.main(["generate", str(out), "--prompt", "The sea", "--max-new-tokens", "5", "--do-sample", "--top-k", "3", "--seed", "1"]) == 0
    assert capsys.readouterr().out == sampled  # the same seed samples the same text


def test_cli_sentencepiece_tokenizer(tmp_path, capsys):
    out = tmp_path / "run"
    options = dict(TINY_TEXT, steps=2, tokenizer="sentencepiece", vocab_size=300)
    assert cli.main(["train", *_flags(options), "--out", str(out), "--quiet"]) == 0
    assert (out / "spiece.model").is_file() and training.read_state(out)["tokenizer"] == "sentencepiece"
    capsys.readouterr()
    assert cli.main(["generate", str(out), "--prompt", "the old house", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("the old house")
    # A saved tokenizer folder is a --tokenizer too.
    again = tmp_path / "again"
    assert cli.main(["train", *_flags(dict(TINY_TEXT, steps=1, tokenizer=str(out))), "--out", str(again), "--quiet"]) == 0
    assert (again / "spiece.model").read_bytes() == (out / "spiece.model").read_bytes()


def test_cli_task_generate_continues_ids(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *_flags(TINY_TASK), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| eval hashes | accuracy |" in printed and (out / training.ACCURACY_FILE).is_file()
    assert cli.main(["generate", str(out), "--prompt", "0 3 1 2 5 6 7 4 0", "--max-new-tokens", "7"]) == 0
    ids = [int(t) for t in capsys.readouterr().out.split()]
    assert ids[:9] == [0, 3, 1, 2, 5, 6, 7, 4, 0] and len(ids) == 16 and all(0 <= i < 8 for i in ids)


def _error(argv):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    return str(info.value.code)


def test_bad_arguments_name_the_argument(tmp_path):
    out = str(tmp_path / "run")
    assert "exactly one of --text FILE" in _error(["train", "--out", out])
    assert "--text 'no-such.txt' is not a file" in _error(["train", "--text", "no-such.txt", "--out", out])
    assert "--tokenizer 'words'" in _error(["train", "--text", ENGLISH, "--tokenizer", "words", "--out", out])
    assert "--tokenizer 'byte' does not apply" in _error(["train", "--task", "duplication", "--tokenizer", "byte", "--out", out])
    assert "--layers 'lsh,dense'" in _error(["train", "--task", "duplication", "--layers", "lsh,dense", "--out", out])
    assert "--seq-len 4 < --chunk-len 8" in _error(["train", "--task", "duplication", "--seq-len", "4", "--out", out])
    assert "an even --seq-len" in _error(["train", "--task", "duplication", "--seq-len", "17", "--chunk-len", "4", "--out", out])
    assert "--lr -1.0" in _error(["train", "--task", "duplication", "--lr", "-1", "--out", out])
    assert "--save-every -2" in _error(["train", "--task", "duplication", "--save-every", "-2", "--out", out])
    assert "fewer than --seq-len 100000" in _error(["train", "--text", ENGLISH, "--seq-len", "100000", "--chunk-len", "64", "--out", out])
    assert "has no trainer_state.json" in _error(["train", "--out", out, "--resume"])
    with pytest.raises(SystemExit) as both:  # argparse: not allowed with argument --text
        cli.main(["train", "--text", ENGLISH, "--task", "duplication", "--out", out])
    assert both.value.code == 2

    training.train(_tiny_task(out, steps=1), progress=False)
    assert "exists and is not empty: pass --resume" in _error(["train", "--task", "duplication", "--out", out])
    assert "--lr 0.5 differs from the checkpoint's 0.001" in _error(["train", "--out", out, "--resume", "--lr", "0.5"])
    assert "checkpoint is at step 1; pass a larger --steps" in _error(["train", "--out", out, "--resume"])
    assert "pass integers separated by spaces" in _error(["generate", out, "--prompt", "hello"])
    assert "ids [9] outside the vocabulary [0, 8)" in _error(["generate", out, "--prompt", "0 9"])
    assert "gives no tokens" in _error(["generate", out, "--prompt", " "])
    assert "is not a folder" in _error(["generate", str(tmp_path / "nothing"), "--prompt", "0"])


# ---- failures: a save that fails, a diverged run, a damaged checkpoint ------------------------


def _files(folder):
    """{name: bytes} of every file in ``folder`` (temporary files of a save included)."""
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def test_a_save_that_fails_midway_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    out = tmp_path / "parts"
    training.train(_tiny_task(out, steps=2, eval_sequences=8), progress=False)
    before = _files(out)
    save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        # optimizer.pt comes after the model's and before trainer_state.json: the first files are written.
        assert any(name.startswith(".model.safetensors.") for name in os.listdir(out))
        raise OSError(errno.ENOSPC, "No space left on device", f.name)

    monkeypatch.setattr(torch, "save", disk_full)
    message = _error(["train", "--out", str(out), "--resume", "--steps", "4", "--quiet"])
    assert message.startswith("reformer-kernels train: [Errno 28] No space left on device") and "\n" not in message
    assert _files(out) == before  # no new file, no temporary file left, the step-2 checkpoint whole
    monkeypatch.setattr(torch, "save", save)

    resumed = training.train(TrainingArguments(out=str(out), steps=4, eval_sequences=8), resume=True, progress=False)
    assert resumed.step == 4
    training.train(_tiny_task(tmp_path / "whole", eval_sequences=8), progress=False)
    _assert_same_checkpoint(tmp_path / "whole", out)


def test_a_non_finite_loss_stops_the_run_without_saving(tmp_path, monkeypatch):
    # --lr inf: step 1's update makes the weights infinite, so step 2's loss is NaN.
    out = tmp_path / "inf"
    message = _error(["train", *_flags(TINY_TASK), "--lr", "inf", "--out", str(out), "--quiet"])
    assert message.startswith("reformer-kernels train: step 2: the loss is nan, not finite") and "nothing was saved" in message
    assert "\n" not in message and not out.exists()
    # A single step: the weights are checked before the save.
    message = _error(["train", *_flags(dict(TINY_TASK, steps=1)), "--lr", "inf", "--out", str(out), "--quiet"])
    assert "step 1: the weights are not finite after the update (loss 2." in message and not out.exists()

    # Resumed: a step that ruins the weights leaves the last good checkpoint as it was.
    good = tmp_path / "good"
    training.train(_tiny_task(good, steps=2), progress=False)
    before = _files(good)
    step = torch.optim.AdamW.step

    def ruin(self, *args, **kwargs):
        result = step(self, *args, **kwargs)
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    p.fill_(float("nan"))
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", ruin)
    message = _error(["train", "--out", str(good), "--resume", "--steps", "4", "--quiet"])
    assert f"step 4: the loss is nan, not finite: the run diverged and stops without saving ({str(good)!r} keeps its checkpoint of step 2)" in message
    assert _files(good) == before


def test_a_damaged_checkpoint_is_a_one_line_error_that_changes_nothing(tmp_path):
    good = tmp_path / "good"
    training.train(_tiny_task(good, steps=1), progress=False)
    damages = {
        "no optimizer": (lambda d: (d / "optimizer.pt").unlink(), "optimizer.pt' is missing"),
        "truncated optimizer": (lambda d: (d / "optimizer.pt").write_bytes((good / "optimizer.pt").read_bytes()[:500]),
                                "optimizer.pt' could not be read"),
        "empty state": (lambda d: (d / "trainer_state.json").write_text("{}"), "trainer_state.json' has step None"),
        "truncated state": (lambda d: (d / "trainer_state.json").write_text('{"step": 1'), "trainer_state.json' is not valid JSON"),
        "no weights": (lambda d: (d / "model.safetensors").unlink(), "no weights in"),
    }
    for name, (damage, expected) in damages.items():
        folder = tmp_path / name.replace(" ", "-")
        shutil.copytree(good, folder)
        damage(folder)
        before = _files(folder)
        message = _error(["train", "--out", str(folder), "--resume", "--steps", "3", "--quiet"])
        assert expected in message and "\n" not in message, (name, message)
        assert _files(folder) == before, name

    under_a_file = good / "config.json" / "run"
    message = _error(["train", *_flags(TINY_TASK), "--out", str(under_a_file), "--quiet"])
    assert f"is under {str(good / 'config.json')!r}, which is a file" in message
    (good / "tokenizer_config.json").write_text("{")
    message = _error(["generate", str(good), "--prompt", "0 1"])
    assert "tokenizer_config.json is not valid JSON" in message and "\n" not in message


def test_a_second_ctrl_c_during_a_save_is_one_line_and_saves_nothing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"

    def second_ctrl_c(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", second_ctrl_c)
    assert cli.main(["train", *_flags(dict(TINY_TASK, steps=1)), "--out", str(out), "--quiet"]) == 130
    assert capsys.readouterr().err == f"reformer-kernels train: interrupted without saving; --out {str(out)!r} keeps its last checkpoint\n"
    assert not out.exists()
