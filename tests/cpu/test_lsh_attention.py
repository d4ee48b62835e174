"""The CPU LSH attention kernels against the float64 reference: forward (out and per-round lse),
gradients for qk and v (through out and lse), gradcheck, opcheck, determinism, bad inputs."""
import pytest
import torch

from reformer_kernels import functional, reference
from tests.tolerance import assert_within_rule

from .helpers import local_attention_cpu, lsh_attention_cpu, lsh_inputs, outputs_and_grads, padding_mask, requires_extension

pytestmark = requires_extension

# (batch, heads, seq_len, head_dim, n_hashes, chunk_len, before, after, causal, mask): a sampled
# grid that covers each value of every axis at least once.
CASES = [
    (1, 1, 16, 1, 1, 1, 1, 0, False, None),
    (3, 8, 32, 16, 2, 4, 2, 1, True, "fully_padded"),
    (1, 8, 64, 64, 8, 64, 1, 0, True, None),
    (3, 1, 256, 128, 1, 128, 0, 0, False, "padded"),
    (1, 1, 128, 64, 2, 128, 2, 1, False, None),
    (3, 1, 48, 16, 8, 4, 0, 0, True, "fully_padded"),
    (1, 8, 40, 1, 2, 4, 1, 0, False, "padded"),
    (3, 1, 64, 16, 1, 64, 1, 0, True, "padded"),
    # head_dim and chunk_len of whole vectors plus a remainder (the key transposes' edges)
    (2, 2, 90, 20, 2, 12, 1, 1, True, "padded"),
]


def _run(impl, qk, v, sorted_idx, n_hashes, chunk_len, before, after, causal, attention_mask, upstream):
    def fn(qk, v):
        return impl(qk, v, sorted_idx, n_hashes=n_hashes, chunk_len=chunk_len, n_chunks_before=before,
                    n_chunks_after=after, causal=causal, attention_mask=attention_mask)

    return outputs_and_grads(fn, (qk, v), upstream)


def _reference(qk, v, sorted_idx, **kw):
    return reference.lsh_attention(qk, v, sorted_idx, **kw)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_matches_reference_float32(case):
    batch, heads, seq_len, head_dim, n_hashes, chunk_len, before, after, causal, mask_kind = case
    qk, v, sorted_idx, attention_mask = lsh_inputs(batch, heads, seq_len, head_dim, n_hashes, mask_kind)
    upstream = (torch.randn_like(qk), torch.randn(batch, heads, n_hashes, seq_len, dtype=torch.float64))
    args = (sorted_idx, n_hashes, chunk_len, before, after, causal, attention_mask, upstream)
    expected = _run(_reference, qk, v, *args)
    baseline = _run(_reference, qk.float(), v.float(), *args)
    actual = _run(lsh_attention_cpu, qk.float(), v.float(), *args)
    for name, a, e, b in zip(("out", "lse", "grad_qk", "grad_v"), actual, expected, baseline):
        assert a.dtype == torch.float32, name
        assert_within_rule(a, e, b, atol=2e-5, what=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_matches_reference(dtype):
    qk, v, sorted_idx, attention_mask = lsh_inputs(2, 2, 64, 16, 2, "fully_padded")
    upstream = (torch.randn_like(qk), torch.randn(2, 2, 2, 64, dtype=torch.float64))
    args = (sorted_idx, 2, 16, 1, 0, True, attention_mask, upstream)
    expected = _run(_reference, qk, v, *args)
    baseline = _run(_reference, qk.to(dtype), v.to(dtype), *args)
    actual = _run(lsh_attention_cpu, qk.to(dtype), v.to(dtype), *args)
    for name, a, e, b in zip(("out", "lse", "grad_qk", "grad_v"), actual, expected, baseline):
        # the kernel keeps lse in float32 for its backward; functional hands it out in the input dtype
        assert a.dtype == (torch.float32 if name == "lse" else dtype), name
        assert_within_rule(a, e, b, atol=1e-3, what=name)


# (seq_len, head_dim, chunk_len): whole 4-lane double vectors, then vectors plus a remainder
@pytest.mark.parametrize("seq_len, head_dim, chunk_len", [(32, 8, 8), (30, 6, 6)])
def test_float64_matches_reference_closely(seq_len, head_dim, chunk_len):
    qk, v, sorted_idx, attention_mask = lsh_inputs(2, 3, seq_len, head_dim, 2, "padded")
    upstream = (torch.randn_like(qk), torch.randn(2, 3, 2, seq_len, dtype=torch.float64))
    args = (sorted_idx, 2, chunk_len, 1, 1, True, attention_mask, upstream)
    for a, e in zip(_run(lsh_attention_cpu, qk, v, *args), _run(_reference, qk, v, *args)):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck(causal):
    qk, v, sorted_idx, attention_mask = lsh_inputs(2, 2, 8, 3, 2, "padded")
    qk.requires_grad_()
    v.requires_grad_()

    def fn(qk, v):
        return lsh_attention_cpu(qk, v, sorted_idx, 2, 4, 1, 0, causal, attention_mask)

    assert torch.autograd.gradcheck(fn, (qk, v))


@pytest.mark.parametrize("dropout", [False, True])
def test_opcheck(dropout):
    qk, v, sorted_idx, attention_mask = lsh_inputs(2, 2, 16, 8, 2, "padded")
    keep = torch.rand(reference.dropout_mask_shape(2, 2, 32, 8, 1, 0)) > 0.3 if dropout else None
    fwd_args = (qk.float().requires_grad_(), v.float().requires_grad_(), sorted_idx, 2, 8, 1, 0, True, attention_mask, keep,
                0.3)
    torch.library.opcheck(torch.ops.reformer_kernels.lsh_attention_fwd.default, fwd_args)
    out, lse = torch.ops.reformer_kernels.lsh_attention_fwd(*(a.detach() if isinstance(a, torch.Tensor) else a for a in fwd_args))
    grad_out, grad_lse = torch.randn_like(out), torch.randn_like(lse)
    for grad_lse_arg in (grad_lse, None):
        bwd_args = (grad_out, grad_lse_arg, qk.float(), v.float(), sorted_idx, out, lse, 2, 8, 1, 0, True, attention_mask, keep,
                    0.3)
        torch.library.opcheck(torch.ops.reformer_kernels.lsh_attention_bwd.default, bwd_args)


def test_deterministic_across_runs_and_thread_counts():
    qk, v, sorted_idx, attention_mask = lsh_inputs(1, 3, 128, 16, 2, "padded")
    upstream = (torch.randn_like(qk), torch.randn(1, 3, 2, 128, dtype=torch.float64))
    args = (sorted_idx, 2, 16, 1, 0, True, attention_mask, upstream)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 2, 1):
            torch.set_num_threads(n)
            results.append(_run(lsh_attention_cpu, qk.float(), v.float(), *args))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_full_attention_through_functional():
    """A sequence of one chunk: sorted_idx = arange(L), the path lsh_self_attention takes."""
    qk = torch.randn(2, 2, 24, 16, dtype=torch.float64)
    v = torch.randn_like(qk)
    rotations = torch.randn(2, 16, 1, 2, dtype=torch.float64)
    attention_mask = padding_mask(2, 24, "fully_padded")
    kw = dict(chunk_len=32, causal=True, attention_mask=attention_mask)
    expected = functional.lsh_self_attention(qk, v, rotations, 4, backend="reference", **kw)
    baseline = functional.lsh_self_attention(qk.float(), v.float(), rotations.float(), 4, backend="reference", **kw)
    actual = functional.lsh_self_attention(qk.float(), v.float(), rotations.float(), 4, backend="cpu", **kw)
    assert_within_rule(actual, expected, baseline, atol=2e-5, what="out")


@pytest.mark.parametrize("seq_len", [50, 64])
def test_lsh_self_attention_pads_any_length(seq_len):
    qk = torch.randn(3, 2, seq_len, 16, dtype=torch.float64)
    v = torch.randn_like(qk)
    rotations = torch.randn(2, 16, 2, 4, dtype=torch.float64)
    kw = dict(chunk_len=8, causal=False, attention_mask=padding_mask(3, seq_len, "padded"))
    expected = functional.lsh_self_attention(qk, v, rotations, 8, backend="reference", **kw)
    baseline = functional.lsh_self_attention(qk.float(), v.float(), rotations.float(), 8, backend="reference", **kw)
    actual = functional.lsh_self_attention(qk.float(), v.float(), rotations.float(), 8, backend="cpu", **kw)
    assert_within_rule(actual, expected, baseline, atol=2e-5, what="out")


def test_keyword_and_positional_calls_agree():
    qk, v, sorted_idx, attention_mask = lsh_inputs(1, 2, 16, 4, 1)
    positional = lsh_attention_cpu(qk, v, sorted_idx, 1, 4, 1, 0, False, attention_mask)
    keyword = lsh_attention_cpu(qk=qk, v=v, sorted_idx=sorted_idx, n_hashes=1, chunk_len=4, n_chunks_before=1,
                                n_chunks_after=0, causal=False, attention_mask=attention_mask)
    for a, b in zip(positional, keyword):
        assert torch.equal(a, b)


def _direct(qk, v, sorted_idx, n_hashes=2, chunk_len=4, before=1, after=0, mask=None):
    return torch.ops.reformer_kernels.lsh_attention_fwd(qk, v, sorted_idx, n_hashes, chunk_len, before, after, False, mask)


def test_direct_op_calls_reject_bad_inputs():
    qk, v, sorted_idx, _ = lsh_inputs(1, 2, 8, 4, 2)
    qk, v = qk.float(), v.float()
    with pytest.raises(TypeError, match="floating"):
        _direct(qk.long(), v, sorted_idx)
    with pytest.raises(TypeError, match="dtype of qk"):
        _direct(qk, v.double(), sorted_idx)
    with pytest.raises(TypeError, match="int64"):
        _direct(qk, v, sorted_idx.int())
    with pytest.raises(ValueError, match="shape of qk"):
        _direct(qk, v[..., :3], sorted_idx)
    with pytest.raises(ValueError, match="n_hashes \\* seq_len"):
        _direct(qk, v, sorted_idx[..., :8])
    with pytest.raises(ValueError, match="multiple of chunk_len"):
        _direct(qk, v, sorted_idx, chunk_len=3)
    with pytest.raises(ValueError, match="chunk_len must be >= 1"):
        _direct(qk, v, sorted_idx, chunk_len=0)
    with pytest.raises(ValueError, match="n_chunks_before"):
        _direct(qk, v, sorted_idx, before=-1)
    with pytest.raises(ValueError, match="outside"):
        _direct(qk, v, sorted_idx + 100)
    with pytest.raises(ValueError, match="attention_mask"):
        _direct(qk, v, sorted_idx, mask=torch.ones(1, 7, dtype=torch.bool))
    # 2^31 positions, as stride-0 views: the length check comes before any data is read.
    huge = torch.zeros(1, 1, 1, 4).expand(1, 1, 2**31, 4)
    with pytest.raises(ValueError, match="2\\^31 - 1 positions"):
        _direct(huge, huge, torch.zeros(1, 1, 1, dtype=torch.long).expand(1, 1, 2**31), n_hashes=1, chunk_len=64)
    out, lse = _direct(qk, v, sorted_idx)
    with pytest.raises(TypeError, match="lse must be"):
        torch.ops.reformer_kernels.lsh_attention_bwd(out, None, qk, v, sorted_idx, out, lse.double(), 2, 4, 1, 0, False, None)


def test_cpu_backend_dropout_is_the_references_with_the_same_generator_state():
    """With dropout the cpu backend draws the reference's mask (same generator, same draw) and
    applies it in the kernels: same forward and gradients as the reference (float64, where both are
    exact to rounding), and the mask matters (a different seed gives a different output)."""
    qk, v, sorted_idx, attention_mask = lsh_inputs(2, 2, 32, 8, 2, "padded")  # float64: no fp32 reference error
    kwargs = dict(n_hashes=2, chunk_len=8, n_chunks_before=1, n_chunks_after=0, causal=True,
                  attention_mask=attention_mask, dropout_p=0.3)
    upstream = (torch.randn_like(qk),)
    results = {}
    for backend in ("cpu", "reference"):
        torch.manual_seed(7)
        results[backend] = outputs_and_grads(
            lambda qk, v: functional.lsh_attention(qk, v, sorted_idx, **kwargs, backend=backend), (qk, v), upstream
        )
    for a, e in zip(results["cpu"], results["reference"]):
        torch.testing.assert_close(a, e, rtol=1e-7, atol=1e-7)
    torch.manual_seed(8)
    other = functional.lsh_attention(qk, v, sorted_idx, **kwargs, backend="cpu")
    assert not torch.allclose(other, results["cpu"][0])


def test_head_split_views_are_read_in_place():
    """qk and v as (B, L, H, d).transpose(1, 2) views, as a layer's projections give them: same bits
    as contiguous inputs, forward and backward."""
    qk, v, sorted_idx, attention_mask = lsh_inputs(2, 3, 32, 8, 2, "padded")
    upstream = (torch.randn_like(qk), torch.randn(2, 3, 2, 32, dtype=torch.float64))
    args = (sorted_idx, 2, 8, 1, 0, True, attention_mask, upstream)

    def as_view(t):
        return t.float().transpose(1, 2).contiguous().transpose(1, 2)

    strided = _run(lsh_attention_cpu, as_view(qk), as_view(v), *args)
    contiguous = _run(lsh_attention_cpu, qk.float(), v.float(), *args)
    for a, b in zip(strided, contiguous):
        assert torch.equal(a, b)


def test_outputs_are_laid_out_like_head_split_inputs():
    """out, grad_qk and grad_v come back with the strides of (B, L, H, d).transpose(1, 2) inputs, so
    merging the heads back into (B, L, H * d) (and the projections' backward) needs no copy."""
    qk, v, sorted_idx, _ = lsh_inputs(2, 3, 32, 8, 2)
    qk, v = (t.float().transpose(1, 2).contiguous().transpose(1, 2) for t in (qk, v))
    window = (2, 8, 1, 0, True, None)
    out, lse = torch.ops.reformer_kernels.lsh_attention_fwd(qk, v, sorted_idx, *window)
    assert out.stride() == qk.stride() and out.transpose(1, 2).is_contiguous()
    grad_out = torch.randn(2, 32, 3, 8).transpose(1, 2)
    grad_qk, grad_v = torch.ops.reformer_kernels.lsh_attention_bwd(grad_out, None, qk, v, sorted_idx, out, lse, *window)
    assert grad_qk.stride() == qk.stride() and grad_v.stride() == v.stride()
    dense = [t.contiguous() for t in (qk, v, out)]
    expected = torch.ops.reformer_kernels.lsh_attention_bwd(grad_out.contiguous(), None, dense[0], dense[1], sorted_idx,
                                                            dense[2], lse, *window)
    assert torch.equal(grad_qk, expected[0]) and torch.equal(grad_v, expected[1])


@pytest.mark.slow
def test_torch_compile_fullgraph():

    qk, v, sorted_idx, attention_mask = lsh_inputs(1, 2, 32, 8, 2, "padded")
    qk, v = qk.float(), v.float()
    upstream = (torch.randn_like(qk), torch.randn(1, 2, 2, 32))

    def lsh(qk, v):
        return lsh_attention_cpu(qk, v, sorted_idx, 2, 8, 1, 0, True, attention_mask)

    def local(q, v):
        return local_attention_cpu(q, q, v, 8, 1, 0, True, attention_mask)

    for fn, outputs in ((lsh, upstream), (local, upstream[:1])):
        compiled = outputs_and_grads(torch.compile(fn, fullgraph=True), (qk, v), outputs)
        eager = outputs_and_grads(fn, (qk, v), outputs)
        for a, b in zip(compiled, eager):
            assert torch.equal(a, b)


def test_bad_dropout_mask_or_p_is_refused():
    qk, v, sorted_idx, _ = lsh_inputs(1, 2, 16, 8, 2)
    qk, v = qk.float(), v.float()
    args = (qk, v, sorted_idx, 2, 8, 1, 0, True, None)
    good = torch.ones(reference.dropout_mask_shape(1, 2, 32, 8, 1, 0), dtype=torch.bool)
    with pytest.raises(ValueError, match=r"dropout_mask must have the chunked score shape \[1, 2, 4, 8, 16\]"):
        torch.ops.reformer_kernels.lsh_attention_fwd(*args, good[..., :8], 0.1)
    with pytest.raises(TypeError, match=r"dropout_mask must be bool \(True where a probability is kept\)"):
        torch.ops.reformer_kernels.lsh_attention_fwd(*args, good.float(), 0.1)
    with pytest.raises(ValueError, match=r"dropout_p must lie in \[0, 1\), got 1"):
        torch.ops.reformer_kernels.lsh_attention_fwd(*args, good, 1.0)
    # an all-True mask keeps every probability, scaled by 1 / (1 - p); in float64, because with a
    # mask the keys are gathered in bucket order and without one in position order (other sums)
    args = (qk.double(), v.double(), *args[2:])
    out, _ = torch.ops.reformer_kernels.lsh_attention_fwd(*args, good, 0.5)
    torch.testing.assert_close(out, 2 * torch.ops.reformer_kernels.lsh_attention_fwd(*args)[0], rtol=1e-12, atol=0)
