"""The code on docs/reformer.md runs, as the page's header says: every block in order in one
temporary folder holding corpus.txt; a python block in a fresh namespace, its printed output equal
to the text block right after it; a bash block with `reformer-kernels` meaning this checkout's CLI;
a block whose first line is the slow marker only under -m slow. README.md's python blocks run too,
except those listed in README_NOT_RUNNABLE with the reason.
"""
import contextlib
import dataclasses
import io
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "reformer.md")
README = os.path.join(ROOT, "README.md")
CORPUS = os.path.join(ROOT, "tests", "data", "english.txt")
SLOW_MARKER = "# docs: slow"
RUNNABLE = ("python", "bash")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)

# README python blocks that cannot run as they stand: a distinctive piece of each, and why.
README_NOT_RUNNABLE = {
    'from_pretrained("my-checkpoint")': "loads a checkpoint folder named my-checkpoint that the reader is to supply, "
    "and uses torch, reformer_kernels, prompt_ids and prompt_mask without importing or defining them",
    'from_pretrained("google/reformer-enwik8")': "downloads google/reformer-enwik8 from the Hugging Face hub (the "
    "tests run offline) and uses transformers without importing it",
    "fully_shard(layer)": "runs one process per rank (dist.init_process_group reads RANK and WORLD_SIZE that "
    "torchrun sets) on the reader's config and batches; tests/models/test_fsdp.py runs the recipe in 2 and 4 "
    "gloo processes",
}


@dataclasses.dataclass
class Block:
    language: str
    code: str
    line: int  # of the opening fence
    output: str | None  # the text block right after a python block: what it must print

    @property
    def slow(self):
        return self.code.startswith(SLOW_MARKER + "\n")

    def where(self, path):
        return f"{os.path.relpath(path, ROOT)}:{self.line}"


def read_blocks(path):
    """The fenced blocks of ``path`` (text blocks attached to the python block they follow)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    fences = list(FENCE.finditer(text))
    blocks = []
    for i, fence in enumerate(fences):
        language, code = fence.group(1), fence.group(2)
        line = text.count("\n", 0, fence.start()) + 1
        if language == "text":
            previous = fences[i - 1] if i else None
            follows_python = previous is not None and previous.group(1) == "python" and not text[previous.end() : fence.start()].strip()
            assert follows_python, f"{os.path.relpath(path, ROOT)}:{line}: a text block must directly follow the python block whose output it is"
            blocks[-1].output = code
            continue
        blocks.append(Block(language, code, line, None))
    return blocks


def run_python(block, path):
    printed = io.StringIO()
    # Leading newlines make a traceback's line numbers those of the file.
    code = compile("\n" * block.line + block.code, path, "exec")
    with contextlib.redirect_stdout(printed):
        exec(code, {"__name__": "__docs__"})
    if block.output is not None:
        assert printed.getvalue() == block.output, f"{block.where(path)} printed:\n{printed.getvalue()}"


def run_bash(block, path, folder):
    # The installed reformer-kernels script may import another checkout; run this one's CLI.
    cli = f'reformer-kernels() {{ {shlex.quote(sys.executable)} -m reformer_kernels.cli "$@"; }}\n'
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    done = subprocess.run(["bash", "-e", "-c", cli + block.code], cwd=folder, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{block.where(path)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"


def run_in_order(blocks, path, folder, monkeypatch):
    shutil.copy(CORPUS, folder / "corpus.txt")
    monkeypatch.chdir(folder)
    for block in blocks:
        if block.language == "python":
            run_python(block, path)
        elif block.language == "bash":
            run_bash(block, path, folder)


def test_doc_layout():
    blocks = read_blocks(DOC)
    assert all(b.language in RUNNABLE for b in blocks), [(b.where(DOC), b.language) for b in blocks if b.language not in RUNNABLE]
    assert sum(b.output is not None for b in blocks) >= 5
    headings = re.findall(r"^## (.+)$", open(DOC, encoding="utf-8").read(), re.MULTILINE)
    assert headings == ["Axial Positional Encodings", "LSH Self Attention", "Local Self Attention", "Training", "Tips"]


def test_doc_blocks_run(tmp_path, monkeypatch):
    run_in_order([b for b in read_blocks(DOC) if not b.slow], DOC, tmp_path, monkeypatch)


@pytest.mark.slow
def test_doc_blocks_run_with_slow_ones(tmp_path, monkeypatch):
    blocks = read_blocks(DOC)
    assert any(b.slow for b in blocks)
    run_in_order(blocks, DOC, tmp_path, monkeypatch)


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    python = [b for b in read_blocks(README) if b.language == "python"]
    for piece in README_NOT_RUNNABLE:
        assert sum(piece in b.code for b in python) == 1, f"README_NOT_RUNNABLE is stale: {piece!r}"
    runnable = [b for b in python if not any(piece in b.code for piece in README_NOT_RUNNABLE)]
    assert runnable
    run_in_order(runnable, README, tmp_path, monkeypatch)
