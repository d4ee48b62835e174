"""What the per-op fuzz tests share: hypothesis settings by run, dtypes per backend, random masks,
the forward-and-backward runner, and the tolerance rule applied to outputs and gradients.

Each op's property body ``check(backend, device, case)`` runs from two tests: a default one (50
examples per backend) and a ``slow`` one (1000). ``case`` is a dict of plain values, the torch
seed of its tensors among them, so a failure reproduces exactly: the assertion message and
hypothesis' "Failing test case" print the dict, and ``check("cpu", torch.device("cpu"), {...})``
reruns it (or put the printed ``@reproduce_failure`` on ``property_holds`` below)."""
from typing import Callable, Sequence

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.tolerance import assert_within_rule

# Examples per test by run. Under TRITON_INTERPRET=1 every program of every launch runs in Python,
# hundreds of times slower than compiled kernels, so triton draws fewer cases (and its strategies
# tinier shapes: at most 2 heads and 16 positions in chunks of 2 or more for the attention ops,
# whose interpreted cost grows with the number of (batch * head, chunk) programs) to keep the
# interpreter pass within two minutes; on a GPU they are fast, but the counts stay fixed so that
# a run's cost does not depend on the machine.
EXAMPLES = {"default": 50, "slow": 1000}
TRITON_EXAMPLES = {"default": 10, "slow": 200}

# atol of the tolerance rule, for outputs and gradients of order one; float64 kernels are held to
# round-off (torch's own float64 error is zero by definition, so atol is the whole allowance).
# float16 gets a few of its roundings at the magnitudes these ops reach (dot products over
# head_dim, dropout's 1 / (1 - p): values of 2-8, where one fp16 rounding is 1e-3 to 4e-3): torch's
# own fp16 error can be exactly zero where the kernel's cannot, e.g. a softmax over one key has a zero
# score gradient in torch, while FlashAttention's D = rowsum(dO * O) takes the rounded O and leaves
# its rounding in grad qk (found by this fuzzing: 3.4e-3 in an fp16 lsh_self_attention case).
ATOL = {torch.float64: 1e-9, torch.float32: 2e-5, torch.float16: 1e-2}

# The dtypes a backend computes in. The reference is the oracle in float64 (its float32 run is
# the rule's baseline, so comparing it in float32 would compare it with itself). Triton takes no
# float64, and no bf16 here: the interpreter's bf16 dot and fp32 -> bf16 casts are wrong.
DTYPES = {
    "reference": [torch.float64],
    "cpu": [torch.float32, torch.float64, torch.float16],
    "triton": [torch.float32, torch.float16],
}

# A list drawn uniformly, so repeats bias the draw towards small head dims (cheap cases) while
# 64 and 128 (the published configurations) still come up.
HEAD_DIMS = [8, 8, 8, 16, 16, 24, 32, 64, 128]
TRITON_HEAD_DIMS = [8, 8, 16, 16, 32, 64]
MASK_KINDS = [None, "random", "fully_padded"]


def draw_attention_settings(draw, widest: int = 2) -> dict:
    """What every attention fuzz case draws besides its shapes: neighbour chunks (each at most
    ``widest``), causality, the padding kind, attention dropout, and whether the inputs come as
    head-split views ((B, L, H, d) memory viewed as (B, H, L, d))."""
    return dict(
        before=draw(st.integers(0, widest)),
        after=draw(st.integers(0, widest)),
        causal=draw(st.booleans()),
        mask=draw(st.sampled_from(MASK_KINDS)),
        dropout_p=draw(st.sampled_from([0.0, 0.0, 0.3])),
        head_split=draw(st.booleans()),
    )


def backend_device(backend: str) -> torch.device:
    """Where ``backend`` runs its kernels: a GPU for triton when one is visible, else the CPU."""
    if backend == "triton" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def fuzz(check: Callable, cases: Callable[[str], st.SearchStrategy], backend: str, device: torch.device, run: str) -> None:
    """Runs ``check(backend, device, case)`` on hypothesis-drawn ``cases(backend)``.

    The @given test is built here rather than at module level so that the number of examples and
    the strategy can depend on the backend fixture's value (fewer, tinier cases under triton)."""

    @settings(
        max_examples=(TRITON_EXAMPLES if backend == "triton" else EXAMPLES)[run],
        deadline=None,  # the first call of a shape compiles or traces; times vary with the shared CPUs
        derandomize=False,
        print_blob=True,
    )
    @given(case=cases(backend))
    def property_holds(case):
        check(backend, device, case)

    property_holds()


def fuzz_tests(check: Callable, cases: Callable[[str], st.SearchStrategy]) -> tuple[Callable, Callable]:
    """An op module's two fuzz tests over one property body, to bind at module level as
    ``test_fuzz, test_fuzz_slow = fuzz_tests(check, cases)``: the default run's examples, and the
    slow run's (marked slow)."""

    def test_fuzz(backend, device):
        fuzz(check, cases, backend, device, "default")

    @pytest.mark.slow
    def test_fuzz_slow(backend, device):
        fuzz(check, cases, backend, device, "slow")

    return test_fuzz, test_fuzz_slow


def padding_mask(kind: str | None, batch: int, seq_len: int) -> torch.Tensor | None:
    """None, a random (B, L) bool padding mask (True = keep), or one that also pads all of batch 0."""
    if kind is None:
        return None
    mask = torch.rand(batch, seq_len) > 0.3
    if kind == "fully_padded":
        mask[0] = False
    return mask


def head_split(t: torch.Tensor) -> torch.Tensor:
    """A (B, H, L, d) tensor as the head-split view of a (B, L, H, d) one, the layout that the
    attention layers hand the ops (non-contiguous: kernels must honour the strides)."""
    return t.transpose(1, 2).contiguous().transpose(1, 2)


def forward_backward(fn: Callable, inputs: Sequence[torch.Tensor], dtype: torch.dtype, device: torch.device, upstream: Sequence[torch.Tensor],
                     head_split_views: bool = False):
    """``fn(*leaves)`` (a tuple of float outputs) on ``inputs`` cast to ``dtype`` on ``device`` (4-D
    ones as head-split views if ``head_split_views``), and the gradients of sum(output * upstream)
    for every input. Returns (outputs, gradients)."""
    leaves = [t.detach().to(device=device, dtype=dtype) for t in inputs]
    if head_split_views:
        leaves = [head_split(t) if t.dim() == 4 else t for t in leaves]
    leaves = [t.requires_grad_(True) for t in leaves]
    outputs = fn(*leaves)
    loss = sum((o * u.to(device=o.device, dtype=o.dtype)).sum() for o, u in zip(outputs, upstream))
    grads = torch.autograd.grad(loss, leaves)
    return [o.detach() for o in outputs], [g.detach() for g in grads]


def assert_all_within_rule(names: Sequence[str], actual, expected64, baseline, dtype: torch.dtype, what: str) -> None:
    for name, a, e, b in zip(names, actual, expected64, baseline, strict=True):
        assert_within_rule(a.cpu(), e.cpu(), b.cpu(), ATOL[dtype], f"{what}: {name}")


def compare_with_reference(fn: Callable, backend: str, inputs: Sequence[torch.Tensor], dtype: torch.dtype, device: torch.device,
                           upstream: Sequence[torch.Tensor], names: Sequence[str], what: str, oracle: str = "reference",
                           output_dtype: torch.dtype | None = None, head_split_views: bool = False) -> None:
    """``fn(backend_name, *leaves)`` run by ``backend`` in ``dtype`` against ``fn(oracle, ...)`` in
    float64, outputs and the gradients of every input, by the tolerance rule (baseline: the oracle
    in ``dtype``). ``names``: the outputs' names then the inputs' names. ``output_dtype``: the
    first output's dtype (default ``dtype``). ``head_split_views``: the backend gets its 4-D inputs
    as non-contiguous head-split views (the oracle runs get them contiguous)."""
    outputs64, grads64 = forward_backward(lambda *t: fn(oracle, *t), inputs, torch.float64, device, upstream)
    if dtype == torch.float64:
        baseline, baseline_grads = outputs64, grads64
    else:
        baseline, baseline_grads = forward_backward(lambda *t: fn(oracle, *t), inputs, dtype, device, upstream)
    outputs, grads = forward_backward(lambda *t: fn(backend, *t), inputs, dtype, device, upstream, head_split_views)
    expected_dtype = output_dtype or dtype
    assert outputs[0].dtype == expected_dtype, f"{what}: output is {outputs[0].dtype}, expected {expected_dtype}"
    n_out = len(outputs)
    assert_all_within_rule(names[:n_out], outputs, outputs64, baseline, dtype, what)
    assert_all_within_rule([f"grad {n}" for n in names[n_out:]], grads, grads64, baseline_grads, dtype, what)


def near_ties(vectors: torch.Tensor, rotations: torch.Tensor, factors: Sequence[int], rel: float) -> torch.Tensor:
    """(B, H, n_hashes * L) bool: where some bucket factor's argmax over [xR, -xR] is decided by a
    relative gap of at most ``rel`` (float64 products of the given values)."""
    rotated = torch.einsum("bhld,hdnr->bhnlr", vectors.double(), rotations.double())
    tie = torch.zeros(rotated.shape[:-1], dtype=torch.bool, device=vectors.device)
    start = 0
    for factor in factors:
        part = rotated[..., start : start + factor // 2]
        start += factor // 2
        top2 = torch.cat([part, -part], dim=-1).topk(2, dim=-1).values
        tie |= (top2[..., 0] - top2[..., 1]) <= rel * top2[..., 0].abs()
    return tie.flatten(2)


# Relative gap between the two best rotated coordinates below which a dtype's rounding may pick
# either bucket (a few ulps of the dtype, scaled for the d-term dot product).
NEAR_TIE = {torch.float64: 0.0, torch.float32: 1e-5, torch.float16: 2e-3}


def n_buckets_strategy(small: bool = False) -> st.SearchStrategy:
    """An even int, or a tuple of two or three even factors (transformers' factorized buckets)."""
    even = st.integers(1, 4 if small else 8).map(lambda k: 2 * k)
    return st.one_of(even, st.lists(even, min_size=2, max_size=2 if small else 3).map(tuple))
