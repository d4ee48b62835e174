"""Hostile arguments to the functional ops: every backend gets functional's checks, so each case
runs on "reference" and "cpu" (the C++ kernels' own bounds are tests/test_kernel_bounds.py), and
random hostile calls of every op (``fuzz_ops.py``) in a subprocess."""
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from reformer_kernels import functional as RF

from ..marks import requires_extension

BACKENDS = ["reference", pytest.param("cpu", marks=requires_extension)]
ROOT = pathlib.Path(__file__).resolve().parents[2]


def _attention_calls(mask):
    qk = torch.randn(2, 1, 16, 8)
    rotations = torch.randn(1, 8, 1, 2)
    idx = torch.arange(16).expand(2, 1, 16)
    return {
        "lsh_hash": lambda b: RF.lsh_hash(qk, rotations, 4, attention_mask=mask, backend=b),
        "lsh_attention": lambda b: RF.lsh_attention(qk, qk, idx, n_hashes=1, chunk_len=4, attention_mask=mask, backend=b),
        "local_attention": lambda b: RF.local_attention(qk, qk, qk, chunk_len=4, attention_mask=mask, backend=b),
        "lsh_self_attention": lambda b: RF.lsh_self_attention(qk, qk, rotations, 4, chunk_len=4, attention_mask=mask,
                                                              backend=b),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["lsh_hash", "lsh_attention", "local_attention", "lsh_self_attention"])
@pytest.mark.parametrize("kind", ["additive", "soft"])
def test_masks_that_are_not_zero_one_are_refused(backend, op, kind):
    """transformers' additive mask (0 for tokens, -10000 for padding) would be read inverted by
    .bool(), a soft one (0.5) as all ones: both are refused, naming the argument and the fix."""
    tokens = torch.ones(2, 16)
    tokens[1, -5:] = 0
    mask = (tokens - 1) * 10000.0 if kind == "additive" else tokens * 0.5
    with pytest.raises(ValueError, match=rf"{op}: attention_mask must hold only 1 \(token\) and 0 \(padding\).*\(mask == 0\)"):
        _attention_calls(mask)[op](backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["lsh_hash", "lsh_attention", "local_attention", "lsh_self_attention"])
def test_zero_one_masks_of_any_dtype_give_the_bool_mask_result(backend, op):
    tokens = torch.ones(2, 16, dtype=torch.bool)
    tokens[1, -5:] = False
    torch.manual_seed(0)
    expected = _attention_calls(tokens)[op](backend)
    for dtype in (torch.int64, torch.float32):
        torch.manual_seed(0)
        actual = _attention_calls(tokens.to(dtype))[op](backend)
        for a, e in zip(actual, expected) if isinstance(expected, tuple) else [(actual, expected)]:
            assert torch.equal(torch.as_tensor(a), torch.as_tensor(e)), (op, dtype)


def _fuzz_in_subprocess(seed: int, count: int, passes: int) -> dict:
    # glibc's thresholds pinned, so that the resident peak follows live memory on every machine
    env = {**os.environ, "GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072:glibc.malloc.mmap_threshold=131072"}
    done = subprocess.run([sys.executable, "-m", "tests.robustness.fuzz_ops", str(seed), str(count), str(passes)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"seed {seed}: the fuzzing process died with {done.returncode}:\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def _check_fuzz(seed: int, count: int) -> None:
    """Random hostile calls of every op end in a result or a ValueError/TypeError (a crash or hang
    fails the subprocess; its timeout bounds a hang); repeating them grows no memory (a leak)."""
    result = _fuzz_in_subprocess(seed, count, passes=3)
    assert not result["bad"], "\n".join(result["bad"])
    assert result["outcomes"].get("ok", 0) >= count // 20, f"too few calls got through the checks to test the kernels: {result}"
    first, *later = result["peak_kib"]
    assert max(later) <= first + 16 * 1024, f"seed {seed}: peak resident KiB per pass {result['peak_kib']}: a leak"


@requires_extension
def test_random_hostile_calls_end_in_a_result_or_a_clear_error():
    _check_fuzz(seed=0, count=500)


@requires_extension
@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 11))
def test_random_hostile_calls_end_in_a_result_or_a_clear_error_many_seeds(seed):
    _check_fuzz(seed=seed, count=2000)
