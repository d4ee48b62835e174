"""What the fixed-case per-op tests share (the fuzz tests' share is in fuzz.py): which backends a
test runs on (a subset of the ``backend`` fixture's, or the CUDA kernels on a GPU), inputs
(padding masks, hashed orders), the forward-and-backward runner, thread counts,
the chunk-window draws of the CPU attention kernels, and the checks: a backend against the float64
reference by the tolerance rule, the cpu backend's dropout against the reference's, a Triton op's
schema against the C++ op's, a backend impl called by the schema's names, bytes saved for backward,
the torch ops and Triton kernels a Triton launcher runs."""
import contextlib
from typing import Callable, Sequence

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from reformer_kernels import _extension, backends, reference
from tests.tolerance import assert_within_rule
from tests.triton_launches import launched_function, recorded_launches

from .fuzz import padding_mask

__all__ = ["padding_mask"]  # re-exported: the random masks of fuzz.py, for the fixed cases too

TRITON = pytest.param("triton", marks=pytest.mark.triton_interpret)


def on_backends(*names: str) -> pytest.MarkDecorator:
    """Runs a test on some of the ``backend`` fixture's backends (through that fixture, so its skips
    apply): e.g. the compiled kernels only, where the reference in float32 would be its own baseline."""
    return pytest.mark.parametrize("backend", [TRITON if name == "triton" else name for name in names], indirect=True)


triton_only = on_backends("triton")


def requires_cuda_kernels(test):
    """The CUDA kernels of reformer_kernels._C on a real GPU. Without one the test skips;
    tests/test_build.py still checks that the CUDA code was compiled and registered."""
    for mark in (
        pytest.mark.gpu,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
        pytest.mark.skipif(not _extension.with_cuda(), reason="reformer_kernels._C was built without CUDA"),
    ):
        test = mark(test)
    return test


# atol of the tolerance rule per dtype for the fixed cases, outputs and gradients of order one.
ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def skip_if_interpreter_lacks(backend: str, dtype: torch.dtype) -> None:
    # The interpreter's bf16 tl.dot returns garbage and its fp32 -> bf16 casts truncate.
    if backend == "triton" and dtype == torch.bfloat16 and backends.triton_interpreted():
        pytest.skip("bf16 needs compiled kernels (a GPU without TRITON_INTERPRET): the interpreter's bf16 dot and casts are wrong")


def fixed_padding_mask(kind: str, batch: int, seq_len: int, device: torch.device) -> torch.Tensor | None:
    """None ("none"), a padded last quarter of the last sequence ("tail"), or a last sequence that
    is all padding ("full_row")."""
    if kind == "none":
        return None
    mask = torch.ones(batch, seq_len, dtype=torch.bool, device=device)
    mask[-1, seq_len * 3 // 4 :] = False
    if kind == "full_row":
        mask[-1] = False
    return mask


def lsh_inputs(batch, heads, seq_len, head_dim, n_hashes, mask_kind=None, n_buckets=4):
    """float64 qk, v, a random attention_mask (``padding_mask`` kinds) and the sorted_idx of hashing
    qk with random rotations."""
    qk = torch.randn(batch, heads, seq_len, head_dim, dtype=torch.float64)
    v = torch.randn(batch, heads, seq_len, head_dim, dtype=torch.float64)
    attention_mask = padding_mask(mask_kind, batch, seq_len)
    rotations = torch.randn(heads, head_dim, n_hashes, n_buckets // 2, dtype=torch.float64)
    buckets, num_keys = reference.hash_vectors(qk, rotations, n_buckets, attention_mask)
    sorted_idx, _ = reference.sort_buckets(buckets, num_keys)
    return qk, v, sorted_idx, attention_mask


def hashed_order(qk: torch.Tensor, n_hashes: int, mask: torch.Tensor | None) -> torch.Tensor:
    """sorted_idx of real hashing (4 buckets per round, so buckets span several chunks)."""
    rotations = torch.randn(qk.shape[1], qk.shape[3], n_hashes, 2, dtype=qk.dtype, device=qk.device)
    buckets, num_keys = reference.hash_vectors(qk, rotations, 4, mask)
    return reference.sort_buckets(buckets, num_keys)[0]


def outputs_and_grads(fn, inputs, upstream):
    """Runs ``fn(*inputs)`` (a tensor or tuple of tensors) with gradients on ``inputs`` and returns
    the outputs followed by the gradients of sum(output * upstream)."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    outputs = fn(*leaves)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    loss = sum((o * u.to(o.dtype)).sum() for o, u in zip(outputs, upstream))
    grads = torch.autograd.grad(loss, leaves)
    return [o.detach() for o in outputs] + [g.detach() for g in grads]


@contextlib.contextmanager
def num_threads(n: int):
    """torch (and so the C++ kernels' at::parallel_for) on ``n`` threads inside the block."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def assert_same_bits_on_thread_counts(run: Callable[[], Sequence[torch.Tensor]], counts=(1, 2, 2, 1)) -> None:
    """``run()`` gives the same bits on every thread count in ``counts``."""
    results = []
    for n in counts:
        with num_threads(n):
            results.append(run())
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


def assert_cpu_dropout_is_the_references(run: Callable, tensors: Sequence[torch.Tensor], upstream) -> None:
    """``run(backend, *tensors)`` with attention dropout: the cpu backend takes the reference's
    Philox key (same generator, same draw) and draws the same keep decisions inside its kernels,
    so it gives the reference's forward and gradients (float64, where both are exact to rounding);
    and the mask matters (a different seed gives a different output)."""
    results = {}
    for backend in ("cpu", "reference"):
        torch.manual_seed(7)
        results[backend] = outputs_and_grads(lambda *leaves: run(backend, *leaves), tensors, upstream)
    for a, e in zip(results["cpu"], results["reference"], strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)
    torch.manual_seed(8)
    assert not torch.allclose(run("cpu", *tensors), results["cpu"][0])


# The torch ops that copy data: ``.contiguous()`` of a strided tensor (clone), a cast (_to_copy),
# a copy into a buffer (copy_).
def bytes_saved_for_backward(fn: Callable):
    """``fn()`` and the bytes of the tensors autograd saved for backward while it ran."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        result = fn()
    return result, sum(t.numel() * t.element_size() for t in saved)


def _forward_backward(run: Callable, backend: str, tensors: Sequence[torch.Tensor], dtype: torch.dtype, weights: list):
    leaves = [t.detach().to(dtype).requires_grad_(True) for t in tensors]
    outputs = run(backend, *leaves)
    if not weights:
        # Quarter-integers are exact in every float dtype, so each run sees the same upstream gradient.
        weights.extend(torch.randint(-4, 5, o.shape, device=o.device).double() / 4 for o in outputs)
    loss = sum((o * w.to(o.dtype)).sum() for o, w in zip(outputs, weights))
    return outputs, torch.autograd.grad(loss, leaves)


def assert_matches_reference(run: Callable, backend: str, tensors: Sequence[torch.Tensor], dtype: torch.dtype, what: str) -> None:
    """``run(backend, *tensors)`` returns a tuple of float outputs. The ``backend`` run in ``dtype``
    is compared with the reference in float64, outputs and the gradients of every tensor, each
    within twice the reference's own error in ``dtype`` plus ATOL."""
    weights: list = []
    outputs64, grads64 = _forward_backward(run, "reference", tensors, torch.float64, weights)
    baseline_outputs, baseline_grads = _forward_backward(run, "reference", tensors, dtype, weights)
    outputs, grads = _forward_backward(run, backend, tensors, dtype, weights)
    for i, (actual, ref64, baseline) in enumerate(zip(outputs, outputs64, baseline_outputs)):
        assert actual.dtype == dtype, f"{what}: output {i} is {actual.dtype}, expected {dtype}"
        assert_within_rule(actual, ref64, baseline, ATOL[dtype], f"{what} output {i}")
    for i, (actual, ref64, baseline) in enumerate(zip(grads, grads64, baseline_grads)):
        assert_within_rule(actual, ref64, baseline, ATOL[dtype], f"{what} gradient of input {i}")


COPIES = {"clone", "_to_copy", "copy_", "contiguous"}


class TorchOps(TorchDispatchMode):
    """Records the torch ops run inside it: ``calls``, every op as (namespace.name, arguments,
    outputs); ``ops``, those that are not views as (name, outputs)."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.calls.append((f"{func.namespace}.{func.overloadpacket.__name__}", args, out))
        if not func.is_view:
            self.ops.append((func.overloadpacket.__name__, out))
        return out


ALLOCATIONS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}


def launcher_work(call: Callable) -> tuple[list[str], list[torch.Tensor], list[str]]:
    """What a Triton op's launcher ``call()`` would run on a GPU, its launches recorded, not run:
    (the Triton kernels it launches, the tensors it allocates, every other torch op it runs), in order."""
    with recorded_launches() as launches, TorchOps() as seen:
        call()
    allocated = [out for name, out in seen.ops if name in ALLOCATIONS]
    return ([launched_function(kernel).fn.__name__ for kernel, _, _ in launches], allocated,
            [name for name, _ in seen.ops if name not in ALLOCATIONS])


def assert_same_schema(compiled: str, triton_op) -> None:
    """One schema per op: the Triton op takes exactly the arguments (names, types, defaults) and
    returns what csrc/reformer.cpp declares for the C++ op ``compiled``, so every backend is called
    alike."""
    if not hasattr(torch.ops.reformer_kernels, compiled):
        pytest.skip("reformer_kernels._C is not loaded, so the C++ schema is unknown")
    expected = getattr(torch.ops.reformer_kernels, compiled).default._schema
    actual = getattr(torch.ops.reformer_kernels, triton_op._name).default._schema

    def arguments(schema):
        # a Python custom op declares list[int] as SymInt[], which C++ reads as int[]
        return [(a.name, str(a.type).replace("SymInt", "int"), a.default_value) for a in schema.arguments]

    assert arguments(actual) == arguments(expected)
    assert [str(r.type) for r in actual.returns] == [str(r.type) for r in expected.returns]


def assert_impl_takes_schema_names(op: str, backend: str, **kwargs) -> None:
    """functional calls every backend's impl of ``op`` with the schema's argument names
    (csrc/reformer.cpp): ``backend``'s impl called so gives the reference impl's answer (float64)."""
    device = next(t for t in kwargs.values() if isinstance(t, torch.Tensor)).device
    _, impl = backends.select(op, device, backend)
    _, reference_impl = backends.select(op, device, "reference")
    actual, expected = impl(**kwargs), reference_impl(**kwargs)
    for a, e in zip(actual, expected) if isinstance(expected, tuple) else [(actual, expected)]:
        torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(e), rtol=1e-10, atol=1e-10)


def small_lsh_inputs(seq_len: int = 12, n_hashes: int = 2, n_buckets: int = 4, dtype: torch.dtype = torch.float32):
    """qk, v (2, 2, seq_len, 4) and rotations (2, 4, n_hashes, n_buckets / 2): the argument checks'
    inputs."""
    qk, v = torch.randn(2, 2, seq_len, 4, dtype=dtype), torch.randn(2, 2, seq_len, 4, dtype=dtype)
    rotations = torch.randn(2, 4, n_hashes, n_buckets // 2, dtype=dtype)
    return qk, v, rotations


def sorted_idx_for(qk: torch.Tensor, rotations: torch.Tensor, n_buckets: int = 4) -> torch.Tensor:
    buckets, num_keys = reference.hash_vectors(qk, rotations, n_buckets)
    return reference.sort_buckets(buckets, num_keys)[0]


def schema_mask(batch: int = 2, seq_len: int = 12) -> torch.Tensor:
    """A (batch, seq_len) bool mask whose second row pads its last three positions."""
    mask = torch.ones(batch, seq_len, dtype=torch.bool)
    mask[1, -3:] = False
    return mask


# The chunk-window properties of the CPU attention kernels (test_lsh_attention, test_local_attention):
# drawn lengths, chunk sizes, windows (chunks before/after, also wider than the sequence has chunks),
# head sizes off the vector width, masks, causality and thread counts. The kernels keep the key
# window of one chunk for the next and regather only the newest neighbour; these cases are where
# that could go wrong (wrap-around, windows that hold one chunk twice, a thread's range of chunks
# starting mid-row).
WINDOW_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# What both kernels draw besides their shapes.
WINDOW_DRAWS = dict(
    chunk_len=st.integers(1, 9),
    before=st.integers(0, 3),
    after=st.integers(0, 2),
    causal=st.booleans(),
    mask_kind=st.sampled_from([None, "padded"]),
    threads=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
    dropout=st.sampled_from([0.0, 0.3]),
)


def dropout_key(p: float) -> dict:
    """The attention-dropout keyword arguments of the ops for rate p: p and a Philox key (seed,
    offset) drawn from the default generator; none for p = 0."""
    if p == 0.0:
        return {}
    return dict(dropout_p=p, dropout_seed=int(torch.randint(2**63 - 1, ())), dropout_offset=4 * int(torch.randint(2**20, ())))


def assert_float32_kernel_meets_reference(impl, reference_impl, inputs, upstream, threads, names):
    """impl on float32 copies of ``inputs`` against reference_impl in float64 and in float32 by the
    tolerance rule."""

    def call(fn, dtype):
        return outputs_and_grads(fn, [t.to(dtype) for t in inputs], upstream)

    expected = call(reference_impl, torch.float64)
    baseline = call(reference_impl, torch.float32)
    with num_threads(threads):
        actual = call(impl, torch.float32)
    for name, a, e, b in zip(names, actual, expected, baseline):
        assert_within_rule(a, e, b, atol=2e-5, what=name)


def rng_state(device: torch.device) -> torch.Tensor:
    """The state of ``device``'s default generator."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


@contextlib.contextmanager
def generator_at(state: torch.Tensor, device: torch.device):
    """Run the body with the device's default generator at ``state``, as the reversible backward does."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if device.type == "cuda":
            torch.cuda.set_rng_state(state, device)
        else:
            torch.set_rng_state(state)
        yield
