"""The CPU local attention kernels against the float64 reference: forward and gradients for q, k,
v over lengths that are and are not multiples of the chunk, gradcheck, opcheck, determinism."""
import pytest
import torch

from reformer_kernels import functional, reference
from tests.tolerance import assert_within_rule

from .helpers import local_attention_cpu, outputs_and_grads, padding_mask, requires_extension

pytestmark = requires_extension

# (batch, heads, seq_len, head_dim, chunk_len, before, after, causal, mask)
CASES = [
    (1, 1, 16, 1, 1, 1, 0, False, None),
    (3, 8, 30, 16, 4, 2, 1, True, "fully_padded"),
    (1, 8, 200, 64, 64, 1, 0, True, None),
    (3, 1, 300, 128, 128, 0, 0, False, "padded"),
    (1, 1, 100, 64, 128, 1, 0, True, "padded"),
    (3, 1, 50, 16, 4, 0, 0, True, "fully_padded"),
    (1, 8, 37, 16, 4, 1, 0, False, "padded"),
    (2, 2, 70, 20, 12, 1, 1, True, "padded"),
]


def _run(impl, q, k, v, chunk_len, before, after, causal, attention_mask, upstream):
    def fn(q, k, v):
        return impl(q, k, v, chunk_len=chunk_len, n_chunks_before=before, n_chunks_after=after, causal=causal,
                    attention_mask=attention_mask)

    return outputs_and_grads(fn, (q, k, v), upstream)


def _inputs(batch, heads, seq_len, head_dim, mask_kind=None):
    q, k, v = (torch.randn(batch, heads, seq_len, head_dim, dtype=torch.float64) for _ in range(3))
    return q, k, v, padding_mask(batch, seq_len, mask_kind)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_matches_reference_float32(case):
    batch, heads, seq_len, head_dim, chunk_len, before, after, causal, mask_kind = case
    q, k, v, attention_mask = _inputs(batch, heads, seq_len, head_dim, mask_kind)
    args = (chunk_len, before, after, causal, attention_mask, (torch.randn_like(q),))
    expected = _run(reference.local_attention, q, k, v, *args)
    baseline = _run(reference.local_attention, q.float(), k.float(), v.float(), *args)
    actual = _run(local_attention_cpu, q.float(), k.float(), v.float(), *args)
    for name, a, e, b in zip(("out", "grad_q", "grad_k", "grad_v"), actual, expected, baseline):
        assert a.dtype == torch.float32, name
        assert_within_rule(a, e, b, atol=2e-5, what=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_matches_reference(dtype):
    q, k, v, attention_mask = _inputs(2, 2, 40, 16, "fully_padded")
    args = (16, 1, 0, True, attention_mask, (torch.randn_like(q),))
    expected = _run(reference.local_attention, q, k, v, *args)
    baseline = _run(reference.local_attention, q.to(dtype), k.to(dtype), v.to(dtype), *args)
    actual = _run(local_attention_cpu, q.to(dtype), k.to(dtype), v.to(dtype), *args)
    for name, a, e, b in zip(("out", "grad_q", "grad_k", "grad_v"), actual, expected, baseline):
        assert a.dtype == dtype, name
        assert_within_rule(a, e, b, atol=1e-3, what=name)


@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck(causal):
    q, k, v, attention_mask = _inputs(2, 2, 10, 3, "padded")

    def fn(q, k, v):
        return local_attention_cpu(q, k, v, 4, 1, 1, causal, attention_mask)

    assert torch.autograd.gradcheck(fn, tuple(t.requires_grad_() for t in (q, k, v)))


@pytest.mark.parametrize("dropout", [False, True])
def test_opcheck(dropout):
    q, k, v, attention_mask = (t.float() if t is not None and t.is_floating_point() else t for t in _inputs(2, 2, 20, 8, "padded"))
    keep = torch.rand(reference.dropout_mask_shape(2, 2, 24, 8, 1, 0)) > 0.3 if dropout else None
    fwd_args = (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), 8, 1, 0, True, attention_mask, keep, 0.3)
    torch.library.opcheck(torch.ops.reformer_kernels.local_attention_fwd.default, fwd_args)
    out, lse = torch.ops.reformer_kernels.local_attention_fwd(q.detach(), k.detach(), v.detach(), 8, 1, 0, True, attention_mask, keep,
                                                              0.3)
    bwd_args = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out, lse, 8, 1, 0, True, attention_mask, keep, 0.3)
    torch.library.opcheck(torch.ops.reformer_kernels.local_attention_bwd.default, bwd_args)


def test_deterministic_across_runs_and_thread_counts():
    q, k, v, attention_mask = _inputs(1, 3, 130, 16, "padded")
    args = (32, 1, 1, True, attention_mask, (torch.randn_like(q),))
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 2, 1):
            torch.set_num_threads(n)
            results.append(_run(local_attention_cpu, q.float(), k.float(), v.float(), *args))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_functional_cpu_backend_matches_reference():
    q, k, v, attention_mask = _inputs(2, 2, 45, 16, "padded")
    kw = dict(chunk_len=16, n_chunks_before=1, n_chunks_after=1, causal=False, attention_mask=attention_mask)
    expected = functional.local_attention(q, k, v, backend="reference", **kw)
    baseline = functional.local_attention(q.float(), k.float(), v.float(), backend="reference", **kw)
    actual = functional.local_attention(q.float(), k.float(), v.float(), backend="cpu", **kw)
    assert_within_rule(actual, expected, baseline, atol=2e-5, what="out")


def test_direct_op_calls_reject_bad_inputs():
    q, k, v, _ = _inputs(1, 2, 8, 4)

    def call(q=q, k=k, v=v, chunk_len=4, before=1, mask=None):
        return torch.ops.reformer_kernels.local_attention_fwd(q, k, v, chunk_len, before, 0, False, mask)

    with pytest.raises(TypeError, match="floating"):
        call(q=q.long())
    with pytest.raises(TypeError, match="dtype of q"):
        call(k=k.float())
    with pytest.raises(ValueError, match="shape of q"):
        call(v=v[:, :1])
    with pytest.raises(ValueError, match="shape \\(batch, heads"):
        call(q=q[0], k=k[0], v=v[0])
    with pytest.raises(ValueError, match="chunk_len must be >= 1"):
        call(chunk_len=0)
    with pytest.raises(ValueError, match="n_chunks_before"):
        call(before=-2)
    with pytest.raises(ValueError, match="attention_mask"):
        call(mask=torch.ones(2, 8, dtype=torch.bool))


def test_head_split_views_are_read_in_place():
    """q, k, v as (B, L, H, d).transpose(1, 2) views, as a layer's projections give them: same bits
    as contiguous inputs, forward and backward."""
    q, k, v, attention_mask = _inputs(2, 3, 40, 8, "padded")
    args = (16, 1, 0, True, attention_mask, (torch.randn_like(q),))

    def as_view(t):
        return t.float().transpose(1, 2).contiguous().transpose(1, 2)

    strided = _run(local_attention_cpu, *(as_view(t) for t in (q, k, v)), *args)
    contiguous = _run(local_attention_cpu, q.float(), k.float(), v.float(), *args)
    for a, b in zip(strided, contiguous):
        assert torch.equal(a, b)


def test_cpu_backend_dropout_is_the_references_with_the_same_generator_state():
    """As for LSH: the cpu backend applies the very mask the reference draws (float64)."""
    q, k, v, attention_mask = _inputs(2, 2, 37, 8, "padded")
    kwargs = dict(chunk_len=8, n_chunks_before=1, n_chunks_after=1, causal=False, attention_mask=attention_mask,
                  dropout_p=0.3)
    upstream = (torch.randn_like(q),)
    results = {}
    for backend in ("cpu", "reference"):
        torch.manual_seed(7)
        results[backend] = outputs_and_grads(
            lambda q, k, v: functional.local_attention(q, k, v, **kwargs, backend=backend), (q, k, v), upstream
        )
    for a, e in zip(results["cpu"], results["reference"]):
        torch.testing.assert_close(a, e, rtol=1e-7, atol=1e-7)
    torch.manual_seed(8)
    other = functional.local_attention(q, k, v, **kwargs, backend="cpu")
    assert not torch.allclose(other, results["cpu"][0])
