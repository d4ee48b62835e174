"""Hostile flags to `reformer-kernels train | generate`: a one-line error naming the flag (SystemExit
with the message, nothing written), never a traceback from torch."""
import os
import re
import subprocess
import sys

import pytest

from reformer_kernels import cli, training

TINY_TASK = ["--task", "duplication", "--vocab-size", "8", "--seq-len", "16", "--batch-size", "2", "--heads", "1",
             "--head-dim", "8", "--chunk-len", "4", "--steps", "1", "--eval-sequences", "4", "--quiet"]


def _error(argv):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    message = str(info.value.code)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert cli.main(["train", *TINY_TASK, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("flags, match", [
    (["--seed", str(2**63)], r"--seed 9223372036854775808: pass an integer in \[0, 2\*\*63 - 1\]"),  # was 'Overflow when unpacking long long'
    (["--seed", "99999999999999999999"], "--seed 99999999999999999999"),
    (["--seed", "-1"], "--seed -1"),  # torch took it as another seed
    (["--seq-len", "18"], "--seq-len 18 is not a multiple of --chunk-len 4: pass --seq-len 16 or 20"),
    (["--lr", "nan"], "--lr nan"),
    (["--save-every", "-1"], "--save-every -1"),
    (["--layers", "lsh,,global"], "--layers"),
])
def test_bad_train_flag_is_one_line(tmp_path, flags, match):
    out = tmp_path / "run"
    message = _error(["train", *TINY_TASK, *flags, "--out", str(out)])
    assert message.startswith("reformer-kernels train: ")
    assert re.search(match, message), message
    assert not out.exists()


def test_seq_len_a_multiple_of_chunk_len_trains(tmp_path):
    assert cli.main(["train", *TINY_TASK, "--seq-len", "20", "--out", str(tmp_path / "run")]) == 0


@pytest.mark.parametrize("flags, match", [
    (["--seed", str(2**64)], "--seed 18446744073709551616"),
    (["--seed", "-5"], "--seed -5"),
    (["--temperature", "nan"], "--temperature nan"),
    (["--temperature", "-1"], "--temperature -1.0"),
    (["--temperature", "inf"], "--temperature inf"),
    (["--top-p", "2"], "--top-p 2.0"),
    (["--top-p", "0"], "--top-p 0.0"),
    (["--max-new-tokens", "100"], "--max-new-tokens 100"),
    (["--device", "tpu9"], "--device"),
])
def test_bad_generate_flag_is_one_line(run_dir, flags, match):
    before = {name: (run_dir / name).read_bytes() for name in os.listdir(run_dir)}
    message = _error(["generate", str(run_dir), "--prompt", "0 1 2", *flags])
    assert message.startswith("reformer-kernels generate: ") and match in message
    assert {name: (run_dir / name).read_bytes() for name in os.listdir(run_dir)} == before


def test_generate_with_a_damaged_config_in_a_subprocess(run_dir, tmp_path):
    """The whole command, as a user runs it: one line on stderr, exit code 1, no traceback."""
    folder = tmp_path / "run"
    folder.mkdir()
    for name in os.listdir(run_dir):
        (folder / name).write_bytes((run_dir / name).read_bytes())
    (folder / "config.json").write_bytes(b"\xff\xfe not utf-8")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run = subprocess.run([sys.executable, "-m", "reformer_kernels.cli", "generate", str(folder), "--prompt", "0 1"],
                         capture_output=True, text=True, timeout=120, cwd=root, env={**os.environ, "PYTHONPATH": root})
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip().count("\n") == 0 and "config.json" in run.stderr and "not UTF-8" in run.stderr


def test_api_checks_the_seed_too(run_dir):
    with pytest.raises(ValueError, match="--seed -1"):
        training.generate(str(run_dir), "0 1", 2, seed=-1)
