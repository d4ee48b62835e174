"""local_attention: every backend against the float64 reference, out and the gradients of q, k
and v under a random upstream gradient, by the tolerance rule: any length (one chunk or less,
not a multiple of the chunk), 0-2 neighbour chunks each side, causal or not, padding masks, and
attention dropout (drawn by ``functional`` from the default generator, re-seeded per call).

Then fixed cases: the compiled kernels (cpu, triton) against the reference through ``functional``;
the C++ op's grids, gradcheck, the chunk-window properties, strided inputs, determinism over runs
and thread counts; both ops' opcheck and schema, torch.compile; padding equivalence, and the
errors of functional and of the ops."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from reformer_kernels import backends, functional, reference
from reformer_kernels.ops.local_attention import triton_kernels as triton_local_attention
from tests.marks import requires_extension
from tests.triton_launches import recorded_launches
from tests.tolerance import assert_within_rule

from .fuzz import (
    DTYPES,
    HEAD_DIMS,
    TRITON_HEAD_DIMS,
    compare_with_reference,
    draw_attention_settings,
    fuzz_tests,
    head_split,
    padding_mask,
)
from .inputs import (COPIES, WINDOW_DRAWS, WINDOW_SETTINGS, TorchOps, assert_cpu_dropout_is_the_references,
                     assert_float32_kernel_meets_reference, assert_impl_takes_schema_names, assert_matches_reference,
                     assert_same_bits_on_thread_counts, assert_same_schema, dropout_key, fixed_padding_mask,
                     launcher_work, lsh_inputs, on_backends, outputs_and_grads, schema_mask, skip_if_interpreter_lacks,
                     small_lsh_inputs, triton_only)


@st.composite
def cases(draw, backend):
    tiny = backend == "triton"
    return dict(
        seed=draw(st.integers(0, 2**31 - 1)),
        dtype=draw(st.sampled_from(DTYPES[backend])),
        batch=draw(st.sampled_from([1, 2, 3])),
        heads=draw(st.integers(1, 2 if tiny else 4)),
        seq_len=draw(st.integers(1, 16 if tiny else 70)),
        head_dim=draw(st.sampled_from(TRITON_HEAD_DIMS if tiny else HEAD_DIMS)),
        chunk_len=draw(st.integers(2 if tiny else 1, 8 if tiny else 24)),
        **draw_attention_settings(draw),
    )


def check(backend, device, case):
    torch.manual_seed(case["seed"])
    shape = tuple(case[k] for k in ("batch", "heads", "seq_len", "head_dim"))
    q, k, v = (torch.randn(shape, dtype=torch.float64) for _ in range(3))
    mask = padding_mask(case["mask"], case["batch"], case["seq_len"])
    mask = None if mask is None else mask.to(device)
    upstream = (torch.randn(shape),)
    dropout_seed = case["seed"] + 1

    def run(name, q, k, v):
        torch.manual_seed(dropout_seed)
        out = functional.local_attention(
            q, k, v, chunk_len=case["chunk_len"], n_chunks_before=case["before"], n_chunks_after=case["after"],
            causal=case["causal"], attention_mask=mask, dropout_p=case["dropout_p"], backend=name,
        )
        return (out,)

    compare_with_reference(run, backend, (q, k, v), case["dtype"], device, upstream, ("out", "q", "k", "v"), f"local_attention {case}",
                           head_split_views=case["head_split"])


test_fuzz, test_fuzz_slow = fuzz_tests(check, cases)


# ----------------------------------------------------------------------------- the compiled kernels
# dtype, batch, heads, seq_len, head_dim, chunk_len, before, after, causal, padding, dropout_p
KERNEL_CASES = [
    # 40 = 2.5 chunks: the kernels pad to 48 with masked keys without copying
    (torch.float32, 1, 2, 40, 16, 16, 1, 0, False, "tail", 0.0),
    (torch.float32, 2, 1, 64, 64, 32, 1, 1, True, "full_row", 0.0),
    (torch.float16, 1, 1, 50, 16, 16, 1, 0, True, "none", 0.0),
    # one chunk (24 <= 32): full attention over a length that is not a power of two
    (torch.float16, 2, 1, 24, 100, 32, 1, 0, False, "tail", 0.0),
    (torch.bfloat16, 1, 2, 40, 64, 16, 1, 0, True, "tail", 0.0),
    # attention dropout: a padded tail chunk, chunks of 8 in blocks of 16, full attention, fp16
    (torch.float32, 1, 2, 40, 16, 16, 1, 1, True, "tail", 0.3),
    (torch.float32, 2, 1, 32, 16, 8, 2, 0, False, "full_row", 0.3),
    (torch.float32, 1, 1, 24, 16, 32, 1, 0, True, "none", 0.3),
    (torch.float16, 1, 1, 50, 16, 16, 1, 0, True, "tail", 0.2),
    (torch.bfloat16, 1, 1, 40, 64, 16, 1, 0, True, "tail", 0.2),
    # chunks of 6: rows of dropout elements that do not start Philox groups (one draw per element)
    (torch.float32, 1, 1, 30, 16, 6, 1, 1, True, "tail", 0.3),
]


@on_backends("cpu", "triton")
@pytest.mark.parametrize("dtype,batch,heads,seq_len,head_dim,chunk_len,before,after,causal,padding,dropout_p", KERNEL_CASES)
def test_kernels_match_reference(backend, device, dtype, batch, heads, seq_len, head_dim, chunk_len, before, after, causal,
                                 padding, dropout_p):
    skip_if_interpreter_lacks(backend, dtype)
    kernel_matches_reference(backend, device, dtype, batch, heads, seq_len, head_dim, chunk_len, before, after, causal,
                             padding, dropout_p)


# bf16 inputs as autocast hands them over (converted to float as the kernels gather them), on
# head sizes whose products run in every tile width of csrc/cpu/gemm.h: 64 and 128 (the
# published ones), 20 (a wide strip and a narrow one) and 7; odd chunks with a padded tail,
# dropout, and one chunk with an odd number of queries.
BF16_CASES = [
    (1, 2, 100, 64, 32, 1, 0, True, "none", 0.0),
    (2, 1, 45, 7, 5, 1, 1, False, "tail", 0.0),
    (1, 1, 70, 128, 16, 2, 0, True, "full_row", 0.2),
    (2, 2, 31, 20, 40, 1, 0, False, "tail", 0.0),
]


@requires_extension
@pytest.mark.parametrize("batch,heads,seq_len,head_dim,chunk_len,before,after,causal,padding,dropout_p", BF16_CASES)
def test_cpu_bf16_matches_reference(batch, heads, seq_len, head_dim, chunk_len, before, after, causal, padding, dropout_p):
    kernel_matches_reference("cpu", torch.device("cpu"), torch.bfloat16, batch, heads, seq_len, head_dim, chunk_len, before,
                             after, causal, padding, dropout_p)


def kernel_matches_reference(backend, device, dtype, batch, heads, seq_len, head_dim, chunk_len, before, after, causal,
                             padding, dropout_p):
    # (B, L, H, d) seen as (B, H, L, d), as the projections of a layer hand them over
    q, k, v = (torch.randn(batch, seq_len, heads, head_dim, dtype=torch.float64, device=device).transpose(1, 2) for _ in range(3))
    mask = fixed_padding_mask(padding, batch, seq_len, device)

    def run(name, q, k, v):
        torch.manual_seed(11)  # every run draws the same dropout mask (functional draws it in float32)
        out = functional.local_attention(
            q, k, v, chunk_len=chunk_len, n_chunks_before=before, n_chunks_after=after, causal=causal,
            attention_mask=mask, dropout_p=dropout_p, backend=name,
        )
        return (out,)

    assert_matches_reference(run, backend, (q, k, v), dtype, "local_attention")


# ----------------------------------------------------------------------------- the C++ op
def local_attention_cpu(*args, **kwargs):
    """The "cpu" backend impl of local_attention (reformer_kernels::local_attention_fwd's out)."""
    return backends.select("local_attention", torch.device("cpu"), "cpu")[1](*args, **kwargs)


# (batch, heads, seq_len, head_dim, chunk_len, before, after, causal, mask)
CPU_CASES = [
    (1, 1, 16, 1, 1, 1, 0, False, None),
    (3, 8, 30, 16, 4, 2, 1, True, "fully_padded"),
    (1, 8, 200, 64, 64, 1, 0, True, None),
    (3, 1, 300, 128, 128, 0, 0, False, "padded"),
    (1, 1, 100, 64, 128, 1, 0, True, "padded"),
    (3, 1, 50, 16, 4, 0, 0, True, "fully_padded"),
    (1, 8, 37, 16, 4, 1, 0, False, "padded"),
    (2, 2, 70, 20, 12, 1, 1, True, "padded"),
]


def run_cpu(impl, q, k, v, chunk_len, before, after, causal, attention_mask, upstream):
    def fn(q, k, v):
        return impl(q, k, v, chunk_len=chunk_len, n_chunks_before=before, n_chunks_after=after, causal=causal,
                    attention_mask=attention_mask)

    return outputs_and_grads(fn, (q, k, v), upstream)


def cpu_inputs(batch, heads, seq_len, head_dim, mask_kind=None):
    q, k, v = (torch.randn(batch, heads, seq_len, head_dim, dtype=torch.float64) for _ in range(3))
    return q, k, v, padding_mask(mask_kind, batch, seq_len)


@requires_extension
@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: "-".join(map(str, c)))
def test_cpu_matches_reference_float32(case):
    batch, heads, seq_len, head_dim, chunk_len, before, after, causal, mask_kind = case
    q, k, v, attention_mask = cpu_inputs(batch, heads, seq_len, head_dim, mask_kind)
    args = (chunk_len, before, after, causal, attention_mask, (torch.randn_like(q),))
    expected = run_cpu(reference.local_attention, q, k, v, *args)
    baseline = run_cpu(reference.local_attention, q.float(), k.float(), v.float(), *args)
    actual = run_cpu(local_attention_cpu, q.float(), k.float(), v.float(), *args)
    for name, a, e, b in zip(("out", "grad_q", "grad_k", "grad_v"), actual, expected, baseline):
        assert a.dtype == torch.float32, name
        assert_within_rule(a, e, b, atol=2e-5, what=name)


@requires_extension
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_low_precision_matches_reference(dtype):
    q, k, v, attention_mask = cpu_inputs(2, 2, 40, 16, "fully_padded")
    args = (16, 1, 0, True, attention_mask, (torch.randn_like(q),))
    expected = run_cpu(reference.local_attention, q, k, v, *args)
    baseline = run_cpu(reference.local_attention, q.to(dtype), k.to(dtype), v.to(dtype), *args)
    actual = run_cpu(local_attention_cpu, q.to(dtype), k.to(dtype), v.to(dtype), *args)
    for name, a, e, b in zip(("out", "grad_q", "grad_k", "grad_v"), actual, expected, baseline):
        assert a.dtype == dtype, name
        assert_within_rule(a, e, b, atol=1e-3, what=name)


@requires_extension
@pytest.mark.parametrize("causal", [False, True])
def test_cpu_gradcheck(causal):
    q, k, v, attention_mask = cpu_inputs(2, 2, 10, 3, "padded")

    def fn(q, k, v):
        return local_attention_cpu(q, k, v, 4, 1, 1, causal, attention_mask)

    assert torch.autograd.gradcheck(fn, tuple(t.requires_grad_() for t in (q, k, v)))


@requires_extension
@pytest.mark.parametrize("dropout", [False, True])
def test_cpu_opcheck(dropout):
    q, k, v, attention_mask = (t.float() if t is not None and t.is_floating_point() else t for t in cpu_inputs(2, 2, 20, 8, "padded"))
    key = (0.3, 12345, 8) if dropout else (0.0, 0, 0)
    fwd_args = (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), 8, 1, 0, True, attention_mask, *key)
    torch.library.opcheck(torch.ops.reformer_kernels.local_attention_fwd.default, fwd_args)
    out, lse = torch.ops.reformer_kernels.local_attention_fwd(q.detach(), k.detach(), v.detach(), 8, 1, 0, True, attention_mask,
                                                              *key)
    bwd_args = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out, lse, 8, 1, 0, True, attention_mask, *key)
    torch.library.opcheck(torch.ops.reformer_kernels.local_attention_bwd.default, bwd_args)


@requires_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["in-place", "staged"])
def test_cpu_outputs_are_laid_out_like_head_split_inputs(dtype):
    """out and grad_q, grad_k, grad_v come back with the strides of (B, L, H, d).transpose(1, 2)
    inputs, so merging the heads back into (B, L, H * d) (and the projections' backward) needs no
    copy; the values are those of contiguous inputs; the fake impls say the same (opcheck)."""
    q, k, v, attention_mask = cpu_inputs(2, 3, 40, 8, "padded")
    q, k, v = (head_split(t.to(dtype)) for t in (q, k, v))
    window = (16, 1, 0, True, attention_mask, 0.2, 99, 4)
    out, lse = torch.ops.reformer_kernels.local_attention_fwd(q, k, v, *window)
    assert out.stride() == q.stride() and out.transpose(1, 2).is_contiguous()
    grad_out = torch.randn(2, 40, 3, 8).to(dtype).transpose(1, 2)
    grads = torch.ops.reformer_kernels.local_attention_bwd(grad_out, q, k, v, out, lse, *window)
    assert all(g.stride() == t.stride() for g, t in zip(grads, (q, k, v)))
    dense = [t.contiguous() for t in (q, k, v)]
    expected_out, _ = torch.ops.reformer_kernels.local_attention_fwd(*dense, *window)
    expected = torch.ops.reformer_kernels.local_attention_bwd(grad_out.contiguous(), *dense, expected_out, lse, *window)
    assert torch.equal(out, expected_out)
    assert all(torch.equal(g, e) for g, e in zip(grads, expected))
    torch.library.opcheck(torch.ops.reformer_kernels.local_attention_fwd.default, (q, k, v, *window))
    torch.library.opcheck(torch.ops.reformer_kernels.local_attention_bwd.default, (grad_out, q, k, v, out, lse, *window))


@requires_extension
def test_cpu_deterministic_across_runs_and_thread_counts():
    q, k, v, attention_mask = cpu_inputs(1, 3, 130, 16, "padded")
    args = (32, 1, 1, True, attention_mask, (torch.randn_like(q),))
    assert_same_bits_on_thread_counts(lambda: run_cpu(local_attention_cpu, q.float(), k.float(), v.float(), *args))


@requires_extension
def test_cpu_functional_backend_matches_reference():
    q, k, v, attention_mask = cpu_inputs(2, 2, 45, 16, "padded")
    kw = dict(chunk_len=16, n_chunks_before=1, n_chunks_after=1, causal=False, attention_mask=attention_mask)
    expected = functional.local_attention(q, k, v, backend="reference", **kw)
    baseline = functional.local_attention(q.float(), k.float(), v.float(), backend="reference", **kw)
    actual = functional.local_attention(q.float(), k.float(), v.float(), backend="cpu", **kw)
    assert_within_rule(actual, expected, baseline, atol=2e-5, what="out")


@requires_extension
def test_cpu_direct_op_calls_reject_bad_inputs():
    q, k, v, _ = cpu_inputs(1, 2, 8, 4)

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


@requires_extension
def test_cpu_head_split_views_are_read_in_place():
    """q, k, v as (B, L, H, d).transpose(1, 2) views, as a layer's projections give them: same bits
    as contiguous inputs, forward and backward."""
    q, k, v, attention_mask = cpu_inputs(2, 3, 40, 8, "padded")
    args = (16, 1, 0, True, attention_mask, (torch.randn_like(q),))
    strided = run_cpu(local_attention_cpu, *(head_split(t.float()) for t in (q, k, v)), *args)
    contiguous = run_cpu(local_attention_cpu, q.float(), k.float(), v.float(), *args)
    for a, b in zip(strided, contiguous):
        assert torch.equal(a, b)


@requires_extension
def test_cpu_backend_dropout_is_the_references_with_the_same_generator_state():
    """As for LSH: the cpu backend applies the very mask the reference draws (float64)."""
    q, k, v, attention_mask = cpu_inputs(2, 2, 37, 8, "padded")
    kwargs = dict(chunk_len=8, n_chunks_before=1, n_chunks_after=1, causal=False, attention_mask=attention_mask,
                  dropout_p=0.3)
    assert_cpu_dropout_is_the_references(lambda name, q, k, v: functional.local_attention(q, k, v, **kwargs, backend=name),
                                         (q, k, v), (torch.randn_like(q),))


@requires_extension
@pytest.mark.slow
def test_cpu_torch_compile_fullgraph():
    q, v, _, attention_mask = lsh_inputs(1, 2, 32, 8, 2, "padded")
    q, v = q.float(), v.float()
    upstream = (torch.randn_like(q),)

    def local(q, v):
        return local_attention_cpu(q, q, v, 8, 1, 0, True, attention_mask)

    compiled = outputs_and_grads(torch.compile(local, fullgraph=True), (q, v), upstream)
    eager = outputs_and_grads(local, (q, v), upstream)
    for a, b in zip(compiled, eager):
        assert torch.equal(a, b)


@requires_extension
@WINDOW_SETTINGS
@given(seq_len=st.integers(1, 60), head_dim=st.sampled_from([1, 5, 8, 20]), **WINDOW_DRAWS)
def test_cpu_chunk_windows_meet_reference(seq_len, chunk_len, head_dim, before, after, causal, mask_kind, threads, seed, dropout):
    torch.manual_seed(seed)
    q, k, v = (torch.randn(2, 3, seq_len, head_dim, dtype=torch.float64) for _ in range(3))
    window = dict(chunk_len=chunk_len, n_chunks_before=before, n_chunks_after=after, causal=causal,
                  attention_mask=padding_mask(mask_kind, 2, seq_len))

    key = dropout_key(dropout)

    def kernel(q, k, v):
        return local_attention_cpu(q, k, v, **window, **key)

    def oracle(q, k, v):
        return reference.local_attention(q, k, v, **window, **key)

    assert_float32_kernel_meets_reference(kernel, oracle, (q, k, v), (torch.randn_like(q),), threads,
                                          ("out", "grad_q", "grad_k", "grad_v"))


# ----------------------------------------------------------------------------- the Triton op
P = 0.3


def triton_args(device, dropout=False):
    """Arguments of the Triton local_attention_fwd: 40 positions in chunks of 16 (padded to 48
    inside), with attention dropout P under a fixed Philox key, or none."""
    q, k, v = (torch.randn(1, 1, 40, 16, device=device, requires_grad=True) for _ in range(3))
    key = (P, 2**40 + 7, 12) if dropout else (0.0, 0, 0)
    return q, k, v, 16, 1, 0, True, fixed_padding_mask("tail", 1, 40, device), *key


@triton_only
@pytest.mark.parametrize("dropout", [False, True])
def test_triton_opcheck(backend, device, dropout):
    args = triton_args(device, dropout=dropout)
    torch.library.opcheck(triton_local_attention.local_attention_fwd, args)
    with torch.no_grad():
        out, lse = triton_local_attention.local_attention_fwd(*args)
    q, k, v, *config = args
    torch.library.opcheck(triton_local_attention.local_attention_bwd,
                          (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out, lse, *config))


@triton_only
@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
def test_triton_two_runs_give_identical_bits(backend, device, dropout_p):
    q, k, v, *_, mask, _, _, _ = triton_args(device)

    def run():
        torch.manual_seed(7)  # the same dropout masks
        out = functional.local_attention(q, k, v, chunk_len=16, causal=True, attention_mask=mask, dropout_p=dropout_p,
                                         backend=backend)
        return (out, *torch.autograd.grad((out * out).sum(), (q, k, v)))

    for first, second in zip(run(), run()):
        assert torch.equal(first, second)


@triton_only
def test_triton_bad_inputs_get_the_shared_errors(backend, device):
    q, k, v, *config, mask, p, seed, offset = triton_args(device, dropout=True)
    q, k, v = q.detach(), k.detach(), v.detach()
    with pytest.raises(ValueError, match="attention_mask must be"):
        functional.local_attention(q, k, v, chunk_len=16, attention_mask=mask[:, :5], backend=backend)
    # what only this backend refuses: it computes in fp32 from 16/32-bit inputs
    with pytest.raises(TypeError, match="triton backend takes float16, bfloat16 or float32"):
        functional.local_attention(q.double(), k.double(), v.double(), chunk_len=16, backend=backend)
    with pytest.raises(ValueError, match=r"dropout_p must lie in \[0, 1\), got 1.0"):
        triton_local_attention.local_attention_fwd(q, k, v, 16, 1, 1, False, mask, 1.0, seed, offset)


def test_triton_forward_reads_head_split_views_in_place():
    """The forward launcher copies nothing: head-split q, k and v (a layer's projections) reach the
    kernel as they are, and out comes back laid out like q, so merging the heads back into
    (B, L, H * d) is a view. The launches are recorded, not run; the op's own function runs (a
    dispatch mode sees a custom op's call, not the torch ops inside it)."""
    q, k, v = (head_split(torch.randn(2, 3, 64, 32, dtype=torch.float16)) for _ in range(3))
    with recorded_launches() as launches, TorchOps() as called:
        out, lse = triton_local_attention.local_attention_fwd._init_fn(q, k, v, 16, 1, 0, True, None)
    names = [name for name, _ in called.ops]
    assert "empty" in names and not COPIES & set(names), names
    (kernel, args, _), = launches
    assert all(read is given for read, given in zip(args[:3], (q, k, v))) and args[5] is out
    assert out.stride() == q.stride() and out.transpose(1, 2).is_contiguous()


@triton_only
def test_triton_strided_inputs_give_the_bits_of_contiguous_ones(backend, device):
    """q, k and v each read through its own strides (a head-split view, a slice of a wider
    projection, a transposed batch): the same out and lse bits as contiguous copies, and the
    opcheck of the op on them (its fake impl lays out out as the kernel does)."""
    q, k, v = (torch.randn(2, 2, 40, 16, dtype=torch.float16, device=device) for _ in range(3))
    wide = torch.zeros(2, 40, 2, 24, dtype=k.dtype, device=device)
    wide[..., 5:21] = k.transpose(1, 2)
    strided = (head_split(q), wide[..., 5:21].transpose(1, 2), v.transpose(0, 1).contiguous().transpose(0, 1))
    config = (16, 1, 1, True, fixed_padding_mask("tail", 2, 40, device), 0.2, 2**40 + 7, 12)
    for a, b in zip(triton_local_attention.local_attention_fwd(*strided, *config),
                    triton_local_attention.local_attention_fwd(q, k, v, *config)):
        assert torch.equal(a, b)
    torch.library.opcheck(triton_local_attention.local_attention_fwd, (*strided, *config))


@triton_only
def test_triton_backward_gives_the_same_bits_for_any_layout(backend, device):
    """Head-split views are read in place where q, k and v share their strides, copied where they
    do not; grad_out is read through its own strides: the bits are those of contiguous inputs
    either way, with rows whose keys are all masked (their d out rescaled inside the kernels)."""
    q, k, v = (torch.randn(2, 2, 40, 16, device=device) for _ in range(3))
    config = (16, 1, 0, True, fixed_padding_mask("full_row", 2, 40, device), P, 2**40 + 7, 12)
    out, lse = triton_local_attention.local_attention_fwd(q, k, v, *config)
    grad_out = torch.randn_like(out)
    expected = triton_local_attention.local_attention_bwd(grad_out, q, k, v, out, lse, *config)
    for views in ((True, True, True, True), (True, True, True, False), (True, False, True, False)):
        q_, k_, v_, grad_out_ = (head_split(t) if view else t for t, view in zip((q, k, v, grad_out), views))
        grads = triton_local_attention.local_attention_bwd(grad_out_, q_, k_, v_, head_split(out), lse, *config)
        for grad, want in zip(grads, expected):
            assert torch.equal(grad, want)


def test_triton_backward_runs_no_torch_kernel():
    """delta comes from a prologue kernel, the rows whose keys are all masked are rescaled inside
    the kernels, head-split views are read in place: besides its allocations the backward runs no
    torch op but the padding mask's 1-byte placeholder."""
    q, k, v, out, grad_out = (head_split(torch.randn(2, 2, 40, 16)) for _ in range(5))
    lse = torch.randn(2, 2, 40)
    kernels, _, torch_ops = launcher_work(lambda: triton_local_attention.local_attention_bwd._init_fn(
        grad_out, q, k, v, out, lse, 16, 1, 0, True, None, P, 5, 8))
    assert kernels == ["attention_bwd_prologue_kernel", "attention_bwd_kernel"]
    assert torch_ops == ["ones"]


@pytest.mark.parametrize("compiled, triton_op", [
    ("local_attention_fwd", triton_local_attention.local_attention_fwd),
    ("local_attention_bwd", triton_local_attention.local_attention_bwd),
])
def test_triton_ops_take_the_schema_of_the_compiled_op(compiled, triton_op):
    assert_same_schema(compiled, triton_op)


# ----------------------------------------------------------------------------- functional
@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=requires_extension)])
def test_backend_impls_take_the_schema_arguments_by_name(backend):
    qk, v, _ = (t.double() for t in small_lsh_inputs())
    assert_impl_takes_schema_names("local_attention", backend, q=qk, k=qk, v=v, chunk_len=4, n_chunks_before=1,
                                   n_chunks_after=0, causal=True, attention_mask=schema_mask())


def test_rejects_bad_arguments():
    q = torch.randn(2, 2, 12, 4)
    with pytest.raises(ValueError, match="k has shape"):
        functional.local_attention(q, q[..., :2], q, chunk_len=4, backend="reference")
    with pytest.raises(TypeError, match="v is torch.float16"):
        functional.local_attention(q, q, q.half(), chunk_len=4, backend="reference")
    with pytest.raises(ValueError, match="chunk_len must be >= 1"):
        functional.local_attention(q, q, q, chunk_len=-3, backend="reference")
    with pytest.raises(ValueError, match="n_chunks_after must be >= 0"):
        functional.local_attention(q, q, q, chunk_len=4, n_chunks_after=-1, backend="reference")


def test_pads_like_an_explicit_masked_padding():
    seq_len, padded_len = 10, 12
    q, k, v = (torch.randn(2, 2, seq_len, 4) for _ in range(3))
    mask = torch.ones(2, seq_len, dtype=torch.bool)
    mask[0, -2:] = False
    kwargs = dict(chunk_len=4, n_chunks_before=1, n_chunks_after=1, causal=False, backend="reference")
    out = functional.local_attention(q, k, v, attention_mask=mask, **kwargs)
    pad = (0, 0, 0, padded_len - seq_len)
    explicit_mask = torch.cat([mask, torch.zeros(2, padded_len - seq_len, dtype=torch.bool)], 1)
    padded = [torch.nn.functional.pad(t, pad) for t in (q, k, v)]
    assert torch.equal(out, functional.local_attention(*padded, attention_mask=explicit_mask, **kwargs)[:, :, :seq_len])


class _RecordingKernel:
    """Stands in for a backend's kernel: records the keyword arguments it was called with."""

    def __init__(self):
        self.kwargs = None

    def __call__(self, *args, **kwargs):
        self.kwargs = kwargs
        return args[0].clone()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_every_backend_receives_one_philox_key(monkeypatch, dtype):
    """With dropout_p > 0 the chosen kernel runs (no fallback) and gets p and a Philox key, no
    mask: one torch.randint of the default generator, whatever the dtype."""
    kernel = _RecordingKernel()
    monkeypatch.setattr(backends, "select", lambda op, device, backend=None: ("triton", kernel))
    q = torch.randn(2, 2, 12, 4).to(dtype)
    torch.manual_seed(3)
    functional.local_attention(q, q, q, chunk_len=4, dropout_p=0.25, backend="triton")
    torch.manual_seed(3)
    assert kernel.kwargs == dict(chunk_len=4, n_chunks_before=1, n_chunks_after=0, causal=False, attention_mask=None,
                                 dropout_p=0.25, dropout_seed=int(torch.randint(2**63 - 1, ())), dropout_offset=0)
    functional.local_attention(q, q, q, chunk_len=4, backend="triton")
    assert "dropout_seed" not in kernel.kwargs, "without dropout no key is drawn"
