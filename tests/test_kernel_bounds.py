"""Hostile sizes reach the C++ kernels as a clear ValueError, never a crash (issue 32).

Each call that once crashed the process (SIGSEGV from an overflowed window size, std::bad_alloc
from a counter per bucket) runs in a subprocess, so that a regression fails its test instead of
killing pytest; the subprocess prints what each call raised as JSON.
"""
import json
import pathlib
import subprocess
import sys

import pytest
import torch

from reformer_kernels import functional, reference

from .marks import requires_extension

pytestmark = requires_extension

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_isolated(setup: str, calls: dict[str, str]) -> dict[str, list[str]]:
    """{name: [exception type, message]} ("none" if the call returned) of each call, run in order
    in a fresh interpreter after `setup`."""
    body = "\n".join(
        f"try:\n    {code}\n    raised[{name!r}] = ['none', '']\n"
        f"except Exception as e:\n    raised[{name!r}] = [type(e).__name__, str(e)]"
        for name, code in calls.items()
    )
    script = f"import json, torch\nfrom reformer_kernels import functional as RF, reference\n{setup}\nraised = {{}}\n{body}\nprint(json.dumps(raised))"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"the subprocess died with {done.returncode}:\n{done.stderr[-2000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_attention_windows_past_the_int32_keys_raise_value_error():
    setup = (
        "q = torch.randn(1, 1, 16, 4)\nidx = torch.arange(16).view(1, 1, 16)\nlse = torch.zeros(1, 1, 16)\n"
        # 2^31 positions as a stride-0 view: the length check comes before any data is read
        "huge = torch.zeros(1, 1, 1, 4).expand(1, 1, 2**31, 4)"
    )
    calls = {
        "local before 2^62": "torch.ops.reformer_kernels.local_attention_fwd(q, q, q, 4, 2**62, 0, False, None)",
        "local after 2^31": "torch.ops.reformer_kernels.local_attention_fwd(q, q, q, 4, 0, 2**31, False, None)",
        "local bwd before 2^40": "torch.ops.reformer_kernels.local_attention_bwd(q, q, q, q, q, lse, 4, 2**40, 0, False, None)",
        "lsh before 2^62": "torch.ops.reformer_kernels.lsh_attention_fwd(q, q, idx, 1, 4, 2**62, 0, False, None)",
        "lsh after 2^40": "torch.ops.reformer_kernels.lsh_attention_fwd(q, q, idx, 1, 4, 0, 2**40, False, None)",
        "lsh n_hashes 2^62": "torch.ops.reformer_kernels.lsh_attention_fwd(q, q, idx, 2**62, 4, 1, 0, False, None)",
        "local 2^31 positions": "torch.ops.reformer_kernels.local_attention_fwd(huge, huge, huge, 64, 1, 0, False, None)",
    }
    raised = run_isolated(setup, calls)
    for name, value in [
        ("local before 2^62", "n_chunks_before = 4611686018427387904"),
        ("local after 2^31", "n_chunks_after = 2147483648"),
        ("local bwd before 2^40", "n_chunks_before = 1099511627776"),
        ("lsh before 2^62", "n_chunks_before = 4611686018427387904"),
        ("lsh after 2^40", "n_chunks_after = 1099511627776"),
    ]:
        kind, message = raised[name]
        assert kind == "ValueError", (name, kind, message)
        assert value in message and "chunk_len = 4" in message, (name, message)
        assert "2^31 - 1" in message and "use fewer neighbour chunks" in message, (name, message)
    kind, message = raised["lsh n_hashes 2^62"]
    assert kind == "ValueError" and "n_hashes = 4611686018427387904" in message, message
    kind, message = raised["local 2^31 positions"]
    assert kind == "ValueError" and "2^31 - 1 positions" in message, message


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_functional_refuses_windows_past_the_ring_of_chunks(backend):
    """functional checks the window for every backend before any kernel or the reference sizes it:
    16 positions in chunks of 4 are a ring of 4 chunks, so a neighbour is at most 4 away."""
    setup = f"q = torch.randn(1, 1, 16, 4)\nidx = torch.arange(16).view(1, 1, 16)\nrot = torch.randn(1, 4, 1, 2)\nb = {backend!r}"
    calls = {
        "local": "RF.local_attention(q, q, q, chunk_len=4, n_chunks_before=2**62, backend=b)",
        "lsh": "RF.lsh_attention(q, q, idx, n_hashes=1, chunk_len=4, n_chunks_after=2**40, backend=b)",
        "lsh_self": "RF.lsh_self_attention(q, q, rot, 4, chunk_len=4, n_chunks_before=5, backend=b)",
        "widest": "RF.local_attention(q, q, q, chunk_len=4, n_chunks_before=4, n_chunks_after=4, backend=b)",
    }
    raised = run_isolated(setup, calls)
    assert raised.pop("widest") == ["none", ""]
    for name, (kind, message) in raised.items():
        assert kind == "ValueError", (name, kind, message)
        assert "reaches past the 4 chunk(s) of this input" in message and "at most 4" in message, (name, message)


def test_bucket_sort_memory_follows_the_input_not_num_buckets():
    setup = "buckets = torch.tensor([[3, 2**33 - 1, 0, 3], [5, 5, 2**32, 1]])"
    calls = {
        "sort 2^33": 'ours = RF.bucket_sort(buckets, 2**33, backend="cpu"); ref = reference.sort_buckets(buckets, 2**33); '
        "assert all(torch.equal(a, b) for a, b in zip(ours, ref)), (ours, ref)",
        "sort 2^62": "torch.ops.reformer_kernels.bucket_sort(buckets, 2**62)",
    }
    raised = run_isolated(setup, calls)
    assert raised == {"sort 2^33": ["none", ""], "sort 2^62": ["none", ""]}, raised


@pytest.mark.parametrize("shape", [(3, 5, 37), (1, 1), (2, 64)])
@pytest.mark.parametrize("num_buckets", [1, 2, 37, 38, 64, 65, 10**6])
def test_bucket_sort_equals_reference_on_both_sides_of_the_row_length(shape, num_buckets):
    # a few ids from the whole range, so that rows hold ties whatever num_buckets is
    buckets = torch.randint(0, num_buckets, (5,))[torch.randint(0, 5, shape)]
    ours = functional.bucket_sort(buckets, num_buckets, backend="cpu")
    ref = reference.sort_buckets(buckets, num_buckets)
    assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])


def test_bucket_sort_out_of_range_id_is_a_value_error_when_sorting_pairs():
    with pytest.raises(ValueError, match=r"bucket id 5 in row 0 is outside \[0, num_buckets=3\)"):
        torch.ops.reformer_kernels.bucket_sort(torch.tensor([[0, 5]]), 3)


@pytest.mark.parametrize("causal", [False, True])
def test_windows_wider_than_the_sequence_still_repeat_keys_as_the_reference(causal):
    """A window wider than the sequence (6 chunks on a ring of 3, each side at most 3 away, the
    bound functional keeps) wraps past the sequence's chunks and repeats keys, as the reference does."""
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 1, 2, 12, 8, dtype=torch.float64).unbind(0)
    args = dict(chunk_len=4, n_chunks_before=3, n_chunks_after=2, causal=causal)
    ours = functional.local_attention(q, k, v, **args, backend="cpu")
    ref = functional.local_attention(q, k, v, **args, backend="reference")
    torch.testing.assert_close(ours, ref)
    qk, idx = q, torch.arange(12).expand(1, 2, 12)
    ours = functional.lsh_attention(qk, v, idx, n_hashes=1, **args, backend="cpu")
    ref = functional.lsh_attention(qk, v, idx, n_hashes=1, **args, backend="reference")
    torch.testing.assert_close(ours, ref)
