"""lsh_attention: every backend against the float64 reference, out and per-round lse and the
gradients of qk and v under a random upstream gradient, by the tolerance rule. The permutation
comes from the reference hash + sort of the float64 inputs, so every backend attends over the same
chunks; attention dropout's Philox key is drawn by ``functional`` from the default generator and
every backend draws the same keep decisions from it (independent of dtype), so re-seeding before
each call gives every run the same mask.

Then fixed cases: the compiled kernels (cpu, triton) against the reference through ``functional``;
the C++ op's float32/float64/low-precision grids, gradcheck, the chunk-window properties, strided
inputs and output layout, determinism over runs and thread counts; both ops' opcheck, schema,
torch.compile and memory saved for backward; the errors of functional and of the ops."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from reformer_kernels import functional, reference
from reformer_kernels.ops.lsh_attention import triton_kernels as triton_lsh_attention
from tests.marks import requires_extension
from tests.triton_launches import launched_function, recorded_launches
from tests.tolerance import assert_within_rule

from .fuzz import (
    DTYPES,
    HEAD_DIMS,
    TRITON_HEAD_DIMS,
    compare_with_reference,
    draw_attention_settings,
    fuzz_tests,
    head_split,
    n_buckets_strategy,
    padding_mask,
)
from .inputs import (COPIES, WINDOW_DRAWS, WINDOW_SETTINGS, TorchOps, assert_cpu_dropout_is_the_references,
                     assert_float32_kernel_meets_reference, assert_impl_takes_schema_names, assert_matches_reference,
                     assert_same_bits_on_thread_counts, assert_same_schema, dropout_key, bytes_saved_for_backward,
                     fixed_padding_mask, hashed_order, launcher_work, lsh_inputs, on_backends, outputs_and_grads,
                     schema_mask, skip_if_interpreter_lacks, small_lsh_inputs, sorted_idx_for, triton_only)


@st.composite
def cases(draw, backend):
    tiny = backend == "triton"
    n_hashes = draw(st.integers(1, 2 if tiny else 8))
    chunk_len = draw(st.integers(1, 8 if tiny else 12))
    # whole chunks per round: functional asks chunk_len to divide seq_len when n_hashes > 1, and
    # lsh_self_attention pads to that (its own fuzz test covers the padding)
    n_chunks = draw(st.integers(1, 3 if tiny else 4))
    return dict(
        seed=draw(st.integers(0, 2**31 - 1)),
        dtype=draw(st.sampled_from(DTYPES[backend])),
        batch=draw(st.sampled_from([1, 2, 3])),
        heads=draw(st.integers(1, 2 if tiny else 4)),
        head_dim=draw(st.sampled_from(TRITON_HEAD_DIMS if tiny else HEAD_DIMS)),
        n_hashes=n_hashes,
        chunk_len=chunk_len,
        seq_len=chunk_len * n_chunks,
        n_buckets=draw(n_buckets_strategy(small=tiny)),
        # neighbours at most the ring's n_hashes * n_chunks chunks away (functional's bound)
        **draw_attention_settings(draw, widest=min(2, n_hashes * n_chunks)),
    )


def check(backend, device, case):
    torch.manual_seed(case["seed"])
    batch, heads, seq_len, head_dim, n_hashes = (case[k] for k in ("batch", "heads", "seq_len", "head_dim", "n_hashes"))
    n_buckets = case["n_buckets"]
    qk = torch.randn(batch, heads, seq_len, head_dim, dtype=torch.float64)
    v = torch.randn(batch, heads, seq_len, head_dim, dtype=torch.float64)
    mask = padding_mask(case["mask"], batch, seq_len)
    rotations = torch.randn(heads, head_dim, n_hashes, sum(reference.bucket_factors(n_buckets)) // 2, dtype=torch.float64)
    buckets, num_keys = reference.hash_vectors(qk, rotations, n_buckets, mask)
    sorted_idx, _ = reference.sort_buckets(buckets, num_keys)
    sorted_idx, mask = sorted_idx.to(device), None if mask is None else mask.to(device)
    upstream = (torch.randn(batch, heads, seq_len, head_dim), torch.randn(batch, heads, n_hashes, seq_len))
    dropout_seed = case["seed"] + 1

    def run(name, qk, v):
        torch.manual_seed(dropout_seed)
        return functional.lsh_attention(
            qk, v, sorted_idx, n_hashes=n_hashes, chunk_len=case["chunk_len"], n_chunks_before=case["before"],
            n_chunks_after=case["after"], causal=case["causal"], attention_mask=mask, dropout_p=case["dropout_p"],
            return_lse=True, backend=name,
        )

    compare_with_reference(run, backend, (qk, v), case["dtype"], device, upstream, ("out", "lse", "qk", "v"), f"lsh_attention {case}",
                           head_split_views=case["head_split"])


test_fuzz, test_fuzz_slow = fuzz_tests(check, cases)


@on_backends("cpu", "triton")
@pytest.mark.parametrize("n_hashes,before,after", [(2, 1, 2), (2, 2, 2), (3, 3, 3)])
def test_query_seeing_only_its_copies(backend, device, n_hashes, before, after):
    """One position in chunks of one, a window that wraps the ring of n_hashes chunks: the query's
    only keys are its own copies (up to seven), scored the self mask, and its lse (-1e5 + log n) is
    rounded in fp32. The Triton backward once took exp(s - lse) as 1 / n and was 0.4% off in grad v
    (the fuzz found the first case)."""
    check(backend, device, dict(seed=0, dtype=torch.float32, batch=1, heads=1, head_dim=8, n_hashes=n_hashes,
                                chunk_len=1, seq_len=1, n_buckets=2, before=before, after=after, causal=False, mask=None,
                                dropout_p=0.0, head_split=False))


# ----------------------------------------------------------------------------- the compiled kernels
# dtype, batch, heads, seq_len, head_dim, n_hashes, chunk_len, before, after, causal, padding, dropout_p
KERNEL_CASES = [
    (torch.float32, 1, 2, 32, 16, 1, 16, 1, 0, False, "none", 0.0),
    (torch.float32, 2, 1, 32, 64, 2, 16, 1, 0, True, "full_row", 0.0),
    (torch.float32, 1, 1, 32, 16, 4, 32, 1, 1, False, "tail", 0.0),
    # one chunk seen three times by its own window (fewer chunks than the window)
    (torch.float32, 1, 1, 16, 16, 1, 16, 1, 1, True, "none", 0.0),
    (torch.float16, 2, 1, 32, 16, 2, 16, 1, 0, True, "tail", 0.0),
    # full attention over 64 positions, head_dim padded to 128 inside (triton)
    (torch.float16, 1, 1, 64, 100, 1, 64, 0, 0, False, "full_row", 0.0),
    (torch.bfloat16, 1, 2, 32, 64, 2, 16, 1, 0, True, "tail", 0.0),
    # attention dropout: chunks of 8 in blocks of 16 (the interpreter's), windows before and after,
    # a window wider than the chunk count, fp16
    (torch.float32, 2, 1, 32, 16, 2, 8, 1, 1, True, "tail", 0.3),
    (torch.float32, 1, 2, 32, 16, 1, 16, 2, 1, False, "none", 0.3),
    (torch.float16, 1, 1, 32, 16, 4, 16, 1, 0, True, "full_row", 0.2),
    (torch.bfloat16, 1, 1, 32, 64, 2, 16, 1, 0, True, "tail", 0.2),
    # chunks of 6: rows of dropout elements that do not start Philox groups (one draw per element)
    (torch.float32, 1, 1, 24, 16, 2, 6, 1, 0, True, "tail", 0.3),
]


@on_backends("cpu", "triton")
@pytest.mark.parametrize(
    "dtype,batch,heads,seq_len,head_dim,n_hashes,chunk_len,before,after,causal,padding,dropout_p", KERNEL_CASES
)
def test_kernels_match_reference(backend, device, dtype, batch, heads, seq_len, head_dim, n_hashes, chunk_len, before,
                                 after, causal, padding, dropout_p):
    skip_if_interpreter_lacks(backend, dtype)
    kernel_matches_reference(backend, device, dtype, batch, heads, seq_len, head_dim, n_hashes, chunk_len, before, after,
                             causal, padding, dropout_p)


# bf16 inputs as autocast hands them over (converted to float as the kernels gather them), on
# head sizes whose products run in every tile width of csrc/cpu/gemm.h: 64 and 128 (the
# published ones) and 7; the causal block skipping of position-ordered chunks, odd chunks,
# dropout.
BF16_CASES = [
    (1, 2, 128, 64, 2, 32, 1, 0, True, "none", 0.0),
    (2, 1, 35, 7, 1, 5, 1, 1, False, "tail", 0.0),
    (1, 1, 64, 128, 2, 16, 2, 0, True, "full_row", 0.2),
]


@requires_extension
@pytest.mark.parametrize("batch,heads,seq_len,head_dim,n_hashes,chunk_len,before,after,causal,padding,dropout_p", BF16_CASES)
def test_cpu_bf16_matches_reference(batch, heads, seq_len, head_dim, n_hashes, chunk_len, before, after,
                                    causal, padding, dropout_p):
    kernel_matches_reference("cpu", torch.device("cpu"), torch.bfloat16, batch, heads, seq_len, head_dim, n_hashes,
                             chunk_len, before, after, causal, padding, dropout_p)


def kernel_matches_reference(backend, device, dtype, batch, heads, seq_len, head_dim, n_hashes, chunk_len, before, after,
                             causal, padding, dropout_p):
    # (B, L, H, d) seen as (B, H, L, d), as the projections of a layer hand them over
    qk, v = (torch.randn(batch, seq_len, heads, head_dim, dtype=torch.float64, device=device).transpose(1, 2) for _ in range(2))
    mask = fixed_padding_mask(padding, batch, seq_len, device)
    sorted_idx = hashed_order(qk, n_hashes, mask)

    def run(name, qk, v):
        torch.manual_seed(11)  # every run draws the same dropout key, hence mask
        return functional.lsh_attention(
            qk, v, sorted_idx, n_hashes=n_hashes, chunk_len=chunk_len, n_chunks_before=before, n_chunks_after=after,
            causal=causal, attention_mask=mask, dropout_p=dropout_p, return_lse=True, backend=name,
        )

    assert_matches_reference(run, backend, (qk, v), dtype, "lsh_attention")


@on_backends("reference", "cpu", "triton")
def test_int32_and_int64_sorted_idx_give_the_same_bits(backend, device):
    """bucket_sort's sorted_idx is int32; an int64 one (an arange, older callers) names the same
    entries, so out, lse and the gradients are the same bits."""
    qk, v = (torch.randn(2, 2, 32, 16, device=device) for _ in range(2))
    sorted_idx = hashed_order(qk, 2, None)
    upstream = (torch.randn_like(qk), torch.randn(2, 2, 2, 32, device=device))  # d out, d lse

    def run(idx):
        def fn(qk, v):
            return functional.lsh_attention(qk, v, idx, n_hashes=2, chunk_len=8, return_lse=True, backend=backend)
        return outputs_and_grads(fn, (qk, v), upstream)

    for narrow, wide in zip(run(sorted_idx.int()), run(sorted_idx.long())):
        assert torch.equal(narrow, wide)


def test_triton_kernels_read_int64_indices_where_int32_offsets_would_overflow():
    """The Triton kernels compute index * row stride in the index's type, so int32 sorted_idx stays
    int32 only while a (batch, head)'s n_slots * head_dim slot rows hold fewer than 2^31 elements."""
    from reformer_kernels.ops.chunk_attention_triton import slot_index

    sorted_idx = torch.zeros(1, 1, 4, dtype=torch.int32)
    assert slot_index(sorted_idx, 2**25 - 1, 64) is sorted_idx
    assert slot_index(sorted_idx, 2**25, 64).dtype == torch.int64
    assert slot_index(sorted_idx.long(), 4, 64).dtype == torch.int64


def test_triton_forward_reads_int64_indices_where_head_split_row_offsets_would_overflow():
    """Head-split views' rows are H * head_dim apart: 2^21 positions of 16 heads of 64 (meta
    tensors, launches recorded) reach offsets of 2^31 at rows whose contiguous copies would stay
    below 2^27, so the forward hands the kernel int64 indices."""
    batch, heads, seq_len, head_dim = 1, 16, 2**21, 64
    qk, v = (torch.empty(batch, seq_len, heads, head_dim, dtype=torch.bfloat16, device="meta").transpose(1, 2)
             for _ in range(2))
    sorted_idx = torch.empty(batch, heads, seq_len, dtype=torch.int32, device="meta")
    with recorded_launches() as launches:
        triton_lsh_attention.lsh_attention_fwd._init_fn(qk, v, sorted_idx, 1, 64, 1, 0, True, None)
    assert launches[0][1][3].dtype == torch.int64


# ----------------------------------------------------------------------------- the C++ op
def lsh_attention_cpu(*args, **kwargs):
    """The C++ op reformer_kernels::lsh_attention_fwd: (out, lse)."""
    return torch.ops.reformer_kernels.lsh_attention_fwd(*args, **kwargs)


# (batch, heads, seq_len, head_dim, n_hashes, chunk_len, before, after, causal, mask): a sampled
# grid that covers each value of every axis at least once.
CPU_CASES = [
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


def run_cpu(impl, qk, v, sorted_idx, n_hashes, chunk_len, before, after, causal, attention_mask, upstream):
    def fn(qk, v):
        return impl(qk, v, sorted_idx, n_hashes=n_hashes, chunk_len=chunk_len, n_chunks_before=before,
                    n_chunks_after=after, causal=causal, attention_mask=attention_mask)

    return outputs_and_grads(fn, (qk, v), upstream)


@requires_extension
@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: "-".join(map(str, c)))
def test_cpu_matches_reference_float32(case):
    batch, heads, seq_len, head_dim, n_hashes, chunk_len, before, after, causal, mask_kind = case
    qk, v, sorted_idx, attention_mask = lsh_inputs(batch, heads, seq_len, head_dim, n_hashes, mask_kind)
    upstream = (torch.randn_like(qk), torch.randn(batch, heads, n_hashes, seq_len, dtype=torch.float64))
    args = (sorted_idx, n_hashes, chunk_len, before, after, causal, attention_mask, upstream)
    expected = run_cpu(reference.lsh_attention, qk, v, *args)
    baseline = run_cpu(reference.lsh_attention, qk.float(), v.float(), *args)
    actual = run_cpu(lsh_attention_cpu, qk.float(), v.float(), *args)
    for name, a, e, b in zip(("out", "lse", "grad_qk", "grad_v"), actual, expected, baseline):
        assert a.dtype == torch.float32, name
        assert_within_rule(a, e, b, atol=2e-5, what=name)


@requires_extension
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_low_precision_matches_reference(dtype):
    qk, v, sorted_idx, attention_mask = lsh_inputs(2, 2, 64, 16, 2, "fully_padded")
    upstream = (torch.randn_like(qk), torch.randn(2, 2, 2, 64, dtype=torch.float64))
    args = (sorted_idx, 2, 16, 1, 0, True, attention_mask, upstream)
    expected = run_cpu(reference.lsh_attention, qk, v, *args)
    baseline = run_cpu(reference.lsh_attention, qk.to(dtype), v.to(dtype), *args)
    actual = run_cpu(lsh_attention_cpu, qk.to(dtype), v.to(dtype), *args)
    for name, a, e, b in zip(("out", "lse", "grad_qk", "grad_v"), actual, expected, baseline):
        # the kernel keeps lse in float32 for its backward; functional hands it out in the input dtype
        assert a.dtype == (torch.float32 if name == "lse" else dtype), name
        assert_within_rule(a, e, b, atol=1e-3, what=name)


# (seq_len, head_dim, chunk_len): whole 4-lane double vectors, then vectors plus a remainder
@requires_extension
@pytest.mark.parametrize("seq_len, head_dim, chunk_len", [(32, 8, 8), (30, 6, 6)])
def test_cpu_float64_matches_reference_closely(seq_len, head_dim, chunk_len):
    qk, v, sorted_idx, attention_mask = lsh_inputs(2, 3, seq_len, head_dim, 2, "padded")
    upstream = (torch.randn_like(qk), torch.randn(2, 3, 2, seq_len, dtype=torch.float64))
    args = (sorted_idx, 2, chunk_len, 1, 1, True, attention_mask, upstream)
    for a, e in zip(run_cpu(lsh_attention_cpu, qk, v, *args), run_cpu(reference.lsh_attention, qk, v, *args)):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


@requires_extension
@pytest.mark.parametrize("causal", [False, True])
def test_cpu_gradcheck(causal):
    qk, v, sorted_idx, attention_mask = lsh_inputs(2, 2, 8, 3, 2, "padded")
    qk.requires_grad_()
    v.requires_grad_()

    def fn(qk, v):
        return lsh_attention_cpu(qk, v, sorted_idx, 2, 4, 1, 0, causal, attention_mask)

    assert torch.autograd.gradcheck(fn, (qk, v))


@requires_extension
@pytest.mark.parametrize("dropout", [False, True])
def test_cpu_opcheck(dropout):
    qk, v, sorted_idx, attention_mask = lsh_inputs(2, 2, 16, 8, 2, "padded")
    key = (0.3, 12345, 8) if dropout else (0.0, 0, 0)
    fwd_args = (qk.float().requires_grad_(), v.float().requires_grad_(), sorted_idx, 2, 8, 1, 0, True, attention_mask, *key)
    torch.library.opcheck(torch.ops.reformer_kernels.lsh_attention_fwd.default, fwd_args)
    out, lse = torch.ops.reformer_kernels.lsh_attention_fwd(*(a.detach() if isinstance(a, torch.Tensor) else a for a in fwd_args))
    grad_out, grad_lse = torch.randn_like(out), torch.randn_like(lse)
    for grad_lse_arg in (grad_lse, None):
        bwd_args = (grad_out, grad_lse_arg, qk.float(), v.float(), sorted_idx, out, lse, 2, 8, 1, 0, True, attention_mask, *key)
        torch.library.opcheck(torch.ops.reformer_kernels.lsh_attention_bwd.default, bwd_args)


@requires_extension
def test_cpu_deterministic_across_runs_and_thread_counts():
    qk, v, sorted_idx, attention_mask = lsh_inputs(1, 3, 128, 16, 2, "padded")
    upstream = (torch.randn_like(qk), torch.randn(1, 3, 2, 128, dtype=torch.float64))
    args = (sorted_idx, 2, 16, 1, 0, True, attention_mask, upstream)
    assert_same_bits_on_thread_counts(lambda: run_cpu(lsh_attention_cpu, qk.float(), v.float(), *args))


@requires_extension
def test_cpu_keyword_and_positional_calls_agree():
    qk, v, sorted_idx, attention_mask = lsh_inputs(1, 2, 16, 4, 1)
    positional = lsh_attention_cpu(qk, v, sorted_idx, 1, 4, 1, 0, False, attention_mask)
    keyword = lsh_attention_cpu(qk=qk, v=v, sorted_idx=sorted_idx, n_hashes=1, chunk_len=4, n_chunks_before=1,
                                n_chunks_after=0, causal=False, attention_mask=attention_mask)
    for a, b in zip(positional, keyword):
        assert torch.equal(a, b)


def _direct(qk, v, sorted_idx, n_hashes=2, chunk_len=4, before=1, after=0, mask=None):
    return torch.ops.reformer_kernels.lsh_attention_fwd(qk, v, sorted_idx, n_hashes, chunk_len, before, after, False, mask)


@requires_extension
def test_cpu_direct_op_calls_reject_bad_inputs():
    qk, v, sorted_idx, _ = lsh_inputs(1, 2, 8, 4, 2)
    qk, v = qk.float(), v.float()
    with pytest.raises(TypeError, match="floating"):
        _direct(qk.long(), v, sorted_idx)
    with pytest.raises(TypeError, match="dtype of qk"):
        _direct(qk, v.double(), sorted_idx)
    with pytest.raises(TypeError, match="int32 or int64"):
        _direct(qk, v, sorted_idx.short())
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


@requires_extension
def test_cpu_backend_dropout_is_the_references_with_the_same_generator_state():
    qk, v, sorted_idx, attention_mask = lsh_inputs(2, 2, 32, 8, 2, "padded")  # float64: no fp32 reference error
    kwargs = dict(n_hashes=2, chunk_len=8, n_chunks_before=1, n_chunks_after=0, causal=True,
                  attention_mask=attention_mask, dropout_p=0.3)
    assert_cpu_dropout_is_the_references(lambda name, qk, v: functional.lsh_attention(qk, v, sorted_idx, **kwargs, backend=name),
                                         (qk, v), (torch.randn_like(qk),))


@requires_extension
def test_cpu_head_split_views_are_read_in_place():
    """qk and v as (B, L, H, d).transpose(1, 2) views, as a layer's projections give them: same bits
    as contiguous inputs, forward and backward."""
    qk, v, sorted_idx, attention_mask = lsh_inputs(2, 3, 32, 8, 2, "padded")
    upstream = (torch.randn_like(qk), torch.randn(2, 3, 2, 32, dtype=torch.float64))
    args = (sorted_idx, 2, 8, 1, 0, True, attention_mask, upstream)
    strided = run_cpu(lsh_attention_cpu, head_split(qk.float()), head_split(v.float()), *args)
    contiguous = run_cpu(lsh_attention_cpu, qk.float(), v.float(), *args)
    for a, b in zip(strided, contiguous):
        assert torch.equal(a, b)


@requires_extension
def test_cpu_outputs_are_laid_out_like_head_split_inputs():
    """out, grad_qk and grad_v come back with the strides of (B, L, H, d).transpose(1, 2) inputs, so
    merging the heads back into (B, L, H * d) (and the projections' backward) needs no copy."""
    qk, v, sorted_idx, _ = lsh_inputs(2, 3, 32, 8, 2)
    qk, v = (head_split(t.float()) for t in (qk, v))
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


@requires_extension
@pytest.mark.slow
def test_cpu_torch_compile_fullgraph():
    qk, v, sorted_idx, attention_mask = lsh_inputs(1, 2, 32, 8, 2, "padded")
    qk, v = qk.float(), v.float()
    upstream = (torch.randn_like(qk), torch.randn(1, 2, 2, 32))

    def lsh(qk, v):
        return lsh_attention_cpu(qk, v, sorted_idx, 2, 8, 1, 0, True, attention_mask)

    compiled = outputs_and_grads(torch.compile(lsh, fullgraph=True), (qk, v), upstream)
    eager = outputs_and_grads(lsh, (qk, v), upstream)
    for a, b in zip(compiled, eager):
        assert torch.equal(a, b)


@requires_extension
def test_cpu_bad_dropout_p_is_refused_and_p_near_zero_keeps_all():
    qk, v, sorted_idx, _ = lsh_inputs(1, 2, 16, 8, 2)
    args = (qk, v, sorted_idx, 2, 8, 1, 0, True, None)
    with pytest.raises(ValueError, match=r"dropout_p must lie in \[0, 1\), got 1"):
        torch.ops.reformer_kernels.lsh_attention_fwd(*args, 1.0, 5, 0)
    with pytest.raises(ValueError, match=r"dropout_p must lie in \[0, 1\), got -0.5"):
        torch.ops.reformer_kernels.lsh_attention_fwd(*args, -0.5, 5, 0)
    # p = 2^-32 has keep threshold 0: every probability is kept, scaled by 1 / (1 - p); in float64,
    # because the dropout path gathers keys in bucket order, so it is a different sum
    p = 2.0**-32
    out, _ = torch.ops.reformer_kernels.lsh_attention_fwd(*args, p, 5, 0)
    torch.testing.assert_close(out, torch.ops.reformer_kernels.lsh_attention_fwd(*args)[0] / (1 - p), rtol=1e-12, atol=0)


# LSH draws no head_dim 1: there the shared-QK key normalization has zero derivative, the kernel's
# grad_qk is a difference of two nearly equal terms, and its float32 error can reach 3x the rule's
# allowance on some inputs (as before the sliding window; CPU_CASES keep a head_dim 1 case).
@requires_extension
@WINDOW_SETTINGS
@given(n_chunks=st.integers(1, 7), n_hashes=st.integers(1, 3), head_dim=st.sampled_from([2, 5, 8, 20]), **WINDOW_DRAWS)
def test_cpu_chunk_windows_meet_reference(n_chunks, chunk_len, n_hashes, head_dim, before, after, causal, mask_kind, threads,
                                          seed, dropout):
    torch.manual_seed(seed)
    seq_len = n_chunks * chunk_len  # the sorted sequence holds n_hashes * n_chunks chunks
    qk, v, sorted_idx, attention_mask = lsh_inputs(2, 2, seq_len, head_dim, n_hashes, mask_kind)
    upstream = (torch.randn_like(qk), torch.randn(2, 2, n_hashes, seq_len, dtype=torch.float64))
    window = dict(n_hashes=n_hashes, chunk_len=chunk_len, n_chunks_before=before, n_chunks_after=after,
                  causal=causal, attention_mask=attention_mask)

    key = dropout_key(dropout)

    def kernel(qk, v):
        return lsh_attention_cpu(qk, v, sorted_idx, **window, **key)

    def oracle(qk, v):
        return reference.lsh_attention(qk, v, sorted_idx, **window, **key)

    assert_float32_kernel_meets_reference(kernel, oracle, (qk, v), upstream, threads, ("out", "lse", "grad_qk", "grad_v"))


# ----------------------------------------------------------------------------- the Triton op
P = 0.3


def triton_args(device, requires_grad=True, dropout=False):
    """Arguments of the Triton lsh_attention_fwd: 2 rounds of 32 positions, chunks of 16, causal,
    padded, with attention dropout P under a fixed Philox key, or none."""
    qk, v = (torch.randn(1, 1, 32, 16, device=device, requires_grad=requires_grad) for _ in range(2))
    mask = fixed_padding_mask("tail", 1, 32, device)
    key = (P, 2**40 + 7, 12) if dropout else (0.0, 0, 0)
    return qk, v, hashed_order(qk.detach(), 2, mask), 2, 16, 1, 0, True, mask, *key


@triton_only
@pytest.mark.parametrize("dropout", [False, True])
def test_triton_opcheck(backend, device, dropout):
    args = triton_args(device, dropout=dropout)
    torch.library.opcheck(triton_lsh_attention.lsh_attention_fwd, args)
    with torch.no_grad():
        out, lse = triton_lsh_attention.lsh_attention_fwd(*args)
    qk, v, sorted_idx, *config = args
    grads = (torch.randn_like(out), torch.randn_like(lse))
    torch.library.opcheck(triton_lsh_attention.lsh_attention_bwd,
                          (*grads, qk.detach(), v.detach(), sorted_idx, out, lse, *config))


@triton_only
def test_triton_compiles_fullgraph_forward_and_backward(backend, device):
    qk, v, sorted_idx, n_hashes, chunk_len, before, after, causal, mask, _, _, _ = triton_args(device)

    def attention(qk, v):
        out, lse = triton_lsh_attention.lsh_attention_fwd(qk, v, sorted_idx, n_hashes, chunk_len, before, after,
                                                          causal, attention_mask=mask)
        return out.sum() + lse.sum()

    # aot_eager traces forward and backward through the fake impls without compiling C++ on CPU.
    compiled = torch.compile(attention, fullgraph=True, backend="aot_eager")
    expected = torch.autograd.grad(attention(qk, v), (qk, v))
    actual = torch.autograd.grad(compiled(qk, v), (qk, v))
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e)


@triton_only
@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
def test_triton_two_runs_give_identical_bits(backend, device, dropout_p):
    qk, v, sorted_idx, n_hashes, chunk_len, before, after, causal, mask, _, _, _ = triton_args(device)

    def run():
        torch.manual_seed(7)  # the same dropout masks
        out, lse = functional.lsh_attention(qk, v, sorted_idx, n_hashes=n_hashes, chunk_len=chunk_len, causal=causal,
                                            attention_mask=mask, dropout_p=dropout_p, return_lse=True, backend=backend)
        loss = (out * out).sum() + lse.sum()
        return (out, lse, *torch.autograd.grad(loss, (qk, v)))

    for first, second in zip(run(), run()):
        assert torch.equal(first, second)


@triton_only
def test_triton_bad_inputs_get_the_shared_errors(backend, device):
    qk, v, sorted_idx, *config, mask, p, seed, offset = triton_args(device, requires_grad=False, dropout=True)
    with pytest.raises(TypeError, match="sorted_idx must be int32 or int64"):
        functional.lsh_attention(qk, v, sorted_idx.short(), n_hashes=2, chunk_len=16, backend=backend)
    with pytest.raises(ValueError, match="chunk_len 24 must divide"):
        functional.lsh_attention(qk, v, sorted_idx, n_hashes=2, chunk_len=24, backend=backend)
    with pytest.raises(ValueError, match="v has shape"):
        functional.lsh_attention(qk, v[..., :8], sorted_idx, n_hashes=2, chunk_len=16, backend=backend)
    with pytest.raises(ValueError, match=r"dropout_p must lie in \[0, 1\), got 1.0"):
        triton_lsh_attention.lsh_attention_fwd(qk, v, sorted_idx, *config, mask, 1.0, seed, offset)


@triton_only
def test_triton_saves_only_linear_memory_for_backward(backend, device):
    """The backward recomputes the scores: what the op keeps is qk, v, sorted_idx, the mask, out and
    lse, all linear in L, never the chunk x window probabilities."""
    qk, v, sorted_idx, n_hashes, chunk_len, before, after, causal, mask, _, _, _ = triton_args(device)
    (out, lse), saved = bytes_saved_for_backward(lambda: triton_lsh_attention.lsh_attention_fwd(
        qk, v, sorted_idx, n_hashes, chunk_len, before, after, causal, attention_mask=mask))
    assert saved <= sum(t.numel() * t.element_size() for t in (qk, v, sorted_idx, mask, out, lse))


@pytest.mark.parametrize("n_hashes", [1, 2])
def test_triton_forward_reads_head_split_views_in_place(n_hashes):
    """The forward launcher copies nothing: head-split qk and v (a layer's projections) and an
    expanded sorted_idx reach the attention kernel as they are, out comes back laid out like qk (its
    heads merge back into (B, L, H * d) as a view), per-round outputs are in qk's dtype, and with
    one hash round the attention kernel writes out itself: no round combination is launched.
    The launches are recorded, not run; the op's own function runs (a dispatch mode sees a
    custom op's call, not the torch ops inside it)."""
    batch, heads, seq_len = 2, 3, 64
    qk, v = (head_split(torch.randn(batch, heads, seq_len, 32, dtype=torch.float16)) for _ in range(2))
    sorted_idx = torch.arange(n_hashes * seq_len, dtype=torch.int32).expand(batch, heads, -1)
    with recorded_launches() as launches, TorchOps() as called:
        out, lse = triton_lsh_attention.lsh_attention_fwd._init_fn(qk, v, sorted_idx, n_hashes, 16, 1, 0, True, None)
    names = [name for name, _ in called.ops]
    assert "empty" in names and not COPIES & set(names), names
    names = [launched_function(kernel).fn.__name__ for kernel, _, _ in launches]
    assert names == ["attention_fwd_kernel"] + (["_combine_rounds_kernel"] if n_hashes > 1 else [])
    q, k, v_read, slots, _, rows_out, lse_out = launches[0][1][:7]
    assert q is qk and k is qk and v_read is v and slots is sorted_idx and lse_out.data_ptr() == lse.data_ptr()
    assert rows_out is out if n_hashes == 1 else rows_out.dtype == qk.dtype
    assert out.stride() == qk.stride() and out.transpose(1, 2).is_contiguous()


@triton_only
@pytest.mark.parametrize("n_hashes", [1, 2])
def test_triton_strided_inputs_give_the_bits_of_contiguous_ones(backend, device, n_hashes):
    """qk, v and sorted_idx read through their own strides (a head-split view, a slice of a wider
    projection, a slice of wider rows of indices): the same out and lse bits as contiguous copies."""
    batch, heads, seq_len, head_dim = 2, 2, 32, 16
    qk, v = (torch.randn(batch, heads, seq_len, head_dim, dtype=torch.float16, device=device) for _ in range(2))
    mask = fixed_padding_mask("tail", batch, seq_len, device)
    sorted_idx = hashed_order(qk.double(), n_hashes, mask)
    wide = torch.zeros(batch, seq_len, heads, head_dim + 8, dtype=v.dtype, device=device)
    wide[..., 3:head_dim + 3] = v.transpose(1, 2)
    wide_idx = torch.cat([sorted_idx, sorted_idx], dim=2)
    config = (n_hashes, 16, 1, 0, True, mask, 0.2, 2**40 + 7, 12)
    strided = triton_lsh_attention.lsh_attention_fwd(head_split(qk), wide[..., 3:head_dim + 3].transpose(1, 2),
                                                     wide_idx[..., :n_hashes * seq_len], *config)
    contiguous = triton_lsh_attention.lsh_attention_fwd(qk, v, sorted_idx, *config)
    for a, b in zip(strided, contiguous):
        assert torch.equal(a, b)


@triton_only
@pytest.mark.parametrize("n_hashes", [1, 2])
def test_triton_backward_gives_the_same_bits_for_any_layout(backend, device, n_hashes):
    """Head-split views are read in place where qk and v share their strides, copied where they do
    not; grad_out is read through its own strides; the gradients are written in qk's and v's own
    layouts; grad_lse may be a broadcast: the bits are those of contiguous inputs either way."""
    qk, v, out_like = (torch.randn(2, 2, 32, 16, device=device) for _ in range(3))
    mask = fixed_padding_mask("tail", 2, 32, device)
    config = (n_hashes, 16, 1, 0, True, mask, P, 2**40 + 7, 12)
    sorted_idx = hashed_order(qk, n_hashes, mask)
    out, lse = triton_lsh_attention.lsh_attention_fwd(qk, v, sorted_idx, *config)
    grad_out, grad_lse = torch.randn_like(out), torch.randn((), device=device).expand_as(lse)
    expected = triton_lsh_attention.lsh_attention_bwd(grad_out, grad_lse.contiguous(), qk, v, sorted_idx, out, lse, *config)
    for views in ((True, True, True), (True, True, False), (True, False, True), (False, True, False)):
        qk_, v_, grad_out_ = (head_split(t) if view else t for t, view in zip((qk, v, grad_out), views))
        grads = triton_lsh_attention.lsh_attention_bwd(grad_out_, grad_lse, qk_, v_, sorted_idx, head_split(out), lse,
                                                       *config)
        for grad, like, want in zip(grads, (qk_, v_), expected):
            assert grad.stride() == like.stride()
            assert torch.equal(grad, want)


@pytest.mark.parametrize("n_hashes", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("grad_out_split", [True, False])
def test_triton_backward_runs_no_torch_kernel(n_hashes, dtype, grad_out_split):
    """The backward's round weights and delta come from a prologue kernel, its rounds are summed
    by an epilogue kernel, head-split views are read in place, and so is a grad_out laid out
    otherwise (contiguous): besides its allocations it runs no torch op but the padding mask's
    1-byte placeholder. With one round it writes the gradients in place, with no per-round
    buffer; with several, the per-round buffer is in the inputs' dtype (fp32 for fp32 inputs only)."""
    batch, heads, seq_len, head_dim = 2, 2, 32, 16
    qk, v, out = (head_split(torch.randn(batch, heads, seq_len, head_dim, dtype=dtype)) for _ in range(3))
    grad_out = torch.randn(batch, heads, seq_len, head_dim, dtype=dtype)
    grad_out = head_split(grad_out) if grad_out_split else grad_out
    sorted_idx = torch.arange(n_hashes * seq_len, dtype=torch.int32).expand(batch, heads, -1).contiguous()
    lse = torch.randn(batch, heads, n_hashes, seq_len)
    kernels, allocated, torch_ops = launcher_work(lambda: triton_lsh_attention.lsh_attention_bwd._init_fn(
        grad_out, lse, qk, v, sorted_idx, out, lse, n_hashes, 16, 1, 0, True, None, P, 5, 8))
    rounds = ["_sum_rounds_kernel"] if n_hashes > 1 else []
    assert kernels == ["attention_bwd_prologue_kernel", "attention_bwd_kernel", *rounds]
    assert torch_ops == ["ones"]
    per_round_buffers = [((2, batch, heads, n_hashes * seq_len, head_dim), dtype)] if n_hashes > 1 else []
    assert [(t.shape, t.dtype) for t in allocated if t.shape[-1] == head_dim] == [(qk.shape, dtype), (v.shape, dtype),
                                                                                 *per_round_buffers]


@pytest.mark.parametrize("compiled, triton_op", [
    ("lsh_attention_fwd", triton_lsh_attention.lsh_attention_fwd),
    ("lsh_attention_bwd", triton_lsh_attention.lsh_attention_bwd),
])
def test_triton_ops_take_the_schema_of_the_compiled_op(compiled, triton_op):
    assert_same_schema(compiled, triton_op)


# ----------------------------------------------------------------------------- functional
@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=requires_extension)])
def test_backend_impls_take_the_schema_arguments_by_name(backend):
    qk, v, rotations = (t.double() for t in small_lsh_inputs())
    assert_impl_takes_schema_names("lsh_attention", backend, qk=qk, v=v, sorted_idx=sorted_idx_for(qk, rotations), n_hashes=2,
                                   chunk_len=4, n_chunks_before=1, n_chunks_after=0, causal=True, attention_mask=schema_mask())


def test_rejects_mismatched_qk_and_v():
    qk, v, rotations = small_lsh_inputs()
    sorted_idx = sorted_idx_for(qk, rotations)
    kwargs = dict(n_hashes=2, chunk_len=4, backend="reference")
    with pytest.raises(ValueError, match="v has shape"):
        functional.lsh_attention(qk, v[:, :, :-1], sorted_idx, **kwargs)
    with pytest.raises(TypeError, match="v is torch.float64"):
        functional.lsh_attention(qk, v.double(), sorted_idx, **kwargs)
    with pytest.raises(ValueError, match="v is on meta"):
        functional.lsh_attention(qk, v.to("meta"), sorted_idx, **kwargs)
    with pytest.raises(ValueError, match=r"qk must be \(batch, heads, seq_len, head_dim\)"):
        functional.lsh_attention(qk[0], v[0], sorted_idx, **kwargs)
    with pytest.raises(TypeError, match="qk must be float16"):
        functional.lsh_attention(qk.long(), v.long(), sorted_idx, **kwargs)


@pytest.mark.parametrize(
    "change,error,match",
    [
        (dict(chunk_len=0), ValueError, "chunk_len must be >= 1, got 0"),
        (dict(chunk_len=4.0), TypeError, "chunk_len must be an int"),
        (dict(chunk_len=5), ValueError, "chunk_len 5 must divide"),
        (dict(n_hashes=0), ValueError, "n_hashes must be >= 1"),
        (dict(n_chunks_before=-1), ValueError, "n_chunks_before must be >= 0"),
        (dict(causal=1), TypeError, "causal must be True or False"),
        (dict(dropout_p=1.0), ValueError, r"dropout_p must lie in \[0, 1\)"),
        (dict(return_lse="yes"), TypeError, "return_lse must be True or False"),
    ],
)
def test_rejects_bad_arguments(change, error, match):
    qk, v, rotations = small_lsh_inputs()
    kwargs = dict(n_hashes=2, chunk_len=4, backend="reference") | change
    with pytest.raises(error, match=match):
        functional.lsh_attention(qk, v, sorted_idx_for(qk, rotations), **kwargs)


def test_with_several_rounds_needs_chunks_within_a_round():
    qk, v, rotations = small_lsh_inputs(seq_len=6)
    with pytest.raises(ValueError, match="no chunk spans two rounds"):
        functional.lsh_attention(qk, v, sorted_idx_for(qk, rotations), n_hashes=2, chunk_len=4, backend="reference")


def test_rejects_bad_sorted_idx():
    qk, v, rotations = small_lsh_inputs()
    sorted_idx = sorted_idx_for(qk, rotations)
    kwargs = dict(n_hashes=2, chunk_len=4, backend="reference")
    with pytest.raises(ValueError, match=r"sorted_idx must be \(batch, heads, n_hashes \* seq_len\)"):
        functional.lsh_attention(qk, v, sorted_idx[..., :12], **kwargs)
    with pytest.raises(ValueError, match="check n_hashes"):
        functional.lsh_attention(qk, v, sorted_idx, **(kwargs | dict(n_hashes=1)))
    with pytest.raises(TypeError, match="sorted_idx must be int32 or int64"):
        functional.lsh_attention(qk, v, sorted_idx.short(), **kwargs)
    with pytest.raises(ValueError, match="sorted_idx spans"):
        functional.lsh_attention(qk, v, sorted_idx + 1, **kwargs)


def test_dropout_draws_its_key_from_the_default_generator():
    qk, v, rotations = small_lsh_inputs()
    sorted_idx = sorted_idx_for(qk, rotations)
    kwargs = dict(n_hashes=2, chunk_len=4, n_chunks_before=1, n_chunks_after=1)
    p = 0.25
    torch.manual_seed(5)
    out = functional.lsh_attention(qk, v, sorted_idx, **kwargs, dropout_p=p, backend="reference")
    torch.manual_seed(5)
    seed = int(torch.randint(2**63 - 1, ()))
    expected, _ = reference.lsh_attention(qk, v, sorted_idx, **kwargs, causal=False, dropout_p=p, dropout_seed=seed)
    assert torch.equal(out, expected)
    assert not torch.allclose(out, functional.lsh_attention(qk, v, sorted_idx, **kwargs, backend="reference"))


def test_returns_lse_per_round():
    qk, v, rotations = small_lsh_inputs()
    sorted_idx = sorted_idx_for(qk, rotations)
    out, lse = functional.lsh_attention(qk, v, sorted_idx, n_hashes=2, chunk_len=4, return_lse=True, backend="reference")
    assert out.shape == (2, 2, 12, 4) and lse.shape == (2, 2, 2, 12)
    assert out.dtype == lse.dtype == qk.dtype
