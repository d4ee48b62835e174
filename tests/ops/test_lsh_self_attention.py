"""lsh_self_attention (hash -> bucket_sort -> lsh_attention, padding to whole chunks, full attention
up to one chunk) on every backend against the float64 reference, out and the gradients of qk and
v, by the tolerance rule.

Each backend hashes its own dtype's values. A near-tie of the two best rotated coordinates may
round to either bucket, and a flipped bucket moves a position to another chunk: a different,
equally right attention that no tolerance covers. So the inputs are rounded to the dtype first
(the float64 reference sees the kernel's values) and cases with a near-tie at an unpadded
position are discarded (``assume``); the hash's own agreement away from ties is test_lsh_hash's.

Then fixed cases: padding to whole chunks and full attention on the compiled kernels, padding
equivalence, fully padded rows, and the attention_mask checks of every op that takes one."""
import math

import pytest
import torch
from hypothesis import assume
from hypothesis import strategies as st

from reformer_kernels import functional, reference
from tests.marks import requires_extension
from tests.tolerance import assert_within_rule

from .fuzz import (
    DTYPES,
    HEAD_DIMS,
    NEAR_TIE,
    TRITON_HEAD_DIMS,
    compare_with_reference,
    draw_attention_settings,
    fuzz_tests,
    n_buckets_strategy,
    near_ties,
    padding_mask,
)
from .inputs import assert_matches_reference, fixed_padding_mask, on_backends, small_lsh_inputs


@st.composite
def cases(draw, backend):
    dtype = draw(st.sampled_from(DTYPES[backend]))
    # fp16 near-ties come at ~0.5 % of the hashed entries, which would discard nearly every case of
    # a thousand entries: fp16 cases stay under ~200 (as the triton ones, which are tiny anyway)
    tiny = backend == "triton" or dtype == torch.float16
    return dict(
        seed=draw(st.integers(0, 2**31 - 1)),
        dtype=dtype,
        batch=draw(st.sampled_from([1, 2, 3])),
        heads=draw(st.integers(1, 2 if tiny else 4)),
        seq_len=draw(st.integers(1, 16 if tiny else 64)),
        head_dim=draw(st.sampled_from(TRITON_HEAD_DIMS if tiny else HEAD_DIMS)),
        n_hashes=draw(st.integers(1, 2 if tiny else 8)),
        n_buckets=draw(n_buckets_strategy(small=tiny)),
        chunk_len=draw(st.integers(2 if tiny else 1, 8 if tiny else 16)),
        **draw_attention_settings(draw),
    )


def check(backend, device, case):
    torch.manual_seed(case["seed"])
    dtype, n_buckets, chunk_len = case["dtype"], case["n_buckets"], case["chunk_len"]
    batch, heads, seq_len, head_dim, n_hashes = (case[k] for k in ("batch", "heads", "seq_len", "head_dim", "n_hashes"))
    factors = reference.bucket_factors(n_buckets)
    shape = (batch, heads, seq_len, head_dim)
    qk, v = (torch.randn(shape).to(dtype).double() for _ in range(2))
    rotations = torch.randn(heads, head_dim, n_hashes, sum(factors) // 2).to(dtype).double()
    mask = padding_mask(case["mask"], batch, seq_len)
    if seq_len > chunk_len and dtype != torch.float64:
        padded_len = math.ceil(seq_len / chunk_len) * chunk_len
        (padded_qk,), keep = reference.pad_sequence((qk,), mask, padded_len)
        ties = near_ties(padded_qk, rotations, factors, NEAR_TIE[dtype]) & keep.repeat(1, n_hashes)[:, None, :]
        assume(not ties.any())
    mask = None if mask is None else mask.to(device)
    upstream = (torch.randn(shape),)
    dropout_seed = case["seed"] + 1

    def run(name, qk, v):
        torch.manual_seed(dropout_seed)
        out = functional.lsh_self_attention(
            qk, v, rotations.to(device, qk.dtype), n_buckets, chunk_len=chunk_len, n_chunks_before=case["before"],
            n_chunks_after=case["after"], causal=case["causal"], attention_mask=mask, dropout_p=case["dropout_p"], backend=name,
        )
        return (out,)

    compare_with_reference(run, backend, (qk, v), dtype, device, upstream, ("out", "qk", "v"), f"lsh_self_attention {case}",
                           head_split_views=case["head_split"])


test_fuzz, test_fuzz_slow = fuzz_tests(check, cases)


@on_backends("cpu", "triton")
@pytest.mark.parametrize("seq_len,chunk_len,n_hashes,causal", [(40, 16, 2, True), (20, 32, 1, False)])
def test_kernels_pad_and_shortcut(backend, device, seq_len, chunk_len, n_hashes, causal):
    """Hash -> sort -> attend on the kernels: 40 is padded to 48 inside; 20 <= chunk_len gets full
    attention over a chunk that is not a power of two."""
    qk, v = (torch.randn(2, 2, seq_len, 16, dtype=torch.float64, device=device) for _ in range(2))
    rotations = torch.randn(2, 16, n_hashes, 2, dtype=torch.float64, device=device)
    mask = fixed_padding_mask("tail", 2, seq_len, device)

    def run(name, qk, v):
        out = functional.lsh_self_attention(
            qk, v, rotations.to(qk.dtype), 4, chunk_len=chunk_len, causal=causal, attention_mask=mask, backend=name
        )
        return (out,)

    assert_matches_reference(run, backend, (qk, v), torch.float32, "lsh_self_attention")


@requires_extension
def test_cpu_full_attention():
    """A sequence of one chunk: sorted_idx = arange(L), the path lsh_self_attention takes."""
    qk = torch.randn(2, 2, 24, 16, dtype=torch.float64)
    v = torch.randn_like(qk)
    rotations = torch.randn(2, 16, 1, 2, dtype=torch.float64)
    attention_mask = padding_mask("fully_padded", 2, 24)
    kw = dict(chunk_len=32, causal=True, attention_mask=attention_mask)
    expected = functional.lsh_self_attention(qk, v, rotations, 4, backend="reference", **kw)
    baseline = functional.lsh_self_attention(qk.float(), v.float(), rotations.float(), 4, backend="reference", **kw)
    actual = functional.lsh_self_attention(qk.float(), v.float(), rotations.float(), 4, backend="cpu", **kw)
    assert_within_rule(actual, expected, baseline, atol=2e-5, what="out")


@requires_extension
@pytest.mark.parametrize("seq_len", [50, 64])
def test_cpu_pads_any_length(seq_len):
    qk = torch.randn(3, 2, seq_len, 16, dtype=torch.float64)
    v = torch.randn_like(qk)
    rotations = torch.randn(2, 16, 2, 4, dtype=torch.float64)
    kw = dict(chunk_len=8, causal=False, attention_mask=padding_mask("padded", 3, seq_len))
    expected = functional.lsh_self_attention(qk, v, rotations, 8, backend="reference", **kw)
    baseline = functional.lsh_self_attention(qk.float(), v.float(), rotations.float(), 8, backend="reference", **kw)
    actual = functional.lsh_self_attention(qk.float(), v.float(), rotations.float(), 8, backend="cpu", **kw)
    assert_within_rule(actual, expected, baseline, atol=2e-5, what="out")


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("with_mask", [False, True])
def test_pads_like_an_explicit_masked_padding(causal, with_mask):
    batch, seq_len, chunk_len, padded_len = 2, 13, 4, 16
    qk, v, rotations = small_lsh_inputs(seq_len=seq_len)
    mask = None
    if with_mask:
        mask = torch.ones(batch, seq_len, dtype=torch.long)
        mask[1, :3] = 0
    kwargs = dict(chunk_len=chunk_len, n_chunks_before=1, n_chunks_after=1, causal=causal, backend="reference")
    out = functional.lsh_self_attention(qk, v, rotations, 4, attention_mask=mask, **kwargs)

    extra = padded_len - seq_len
    real = torch.ones(batch, seq_len, dtype=torch.long) if mask is None else mask
    explicit_mask = torch.cat([real, torch.zeros(batch, extra, dtype=torch.long)], 1)
    pad = (0, 0, 0, extra)
    padded_out = functional.lsh_self_attention(
        torch.nn.functional.pad(qk, pad), torch.nn.functional.pad(v, pad), rotations, 4, attention_mask=explicit_mask, **kwargs
    )
    assert out.shape == qk.shape
    assert torch.equal(out, padded_out[:, :, :seq_len])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("seq_len", [6, 16])  # one chunk (full attention) and hashed chunks
@pytest.mark.parametrize("causal", [False, True])
def test_fully_padded_rows_give_no_nan(dtype, seq_len, causal):
    """lsh_self_attention and local_attention (the reference) on a batch row that is all padding."""
    qk, v, rotations = small_lsh_inputs(seq_len=seq_len, dtype=dtype)
    qk.requires_grad_(True)
    mask = torch.ones(2, seq_len, dtype=torch.bool)
    mask[1] = False
    kwargs = dict(chunk_len=8, causal=causal, attention_mask=mask, backend="reference")
    lsh_out = functional.lsh_self_attention(qk, v, rotations, 4, **kwargs)
    local_out = functional.local_attention(qk, qk, v, **kwargs)
    for out in (lsh_out, local_out):
        assert out.dtype == dtype and out.shape == (2, 2, seq_len, 4)
        assert torch.isfinite(out).all()
    (lsh_out.float().sum() + local_out.float().sum()).backward()
    assert torch.isfinite(qk.grad).all()


@pytest.mark.parametrize("bad_mask", [torch.ones(2, 13), torch.ones(12), torch.ones(2, 1, 12)])
def test_ops_reject_bad_attention_mask_shape(bad_mask):
    """lsh_self_attention, lsh_hash and local_attention share the attention_mask check."""
    qk, v, rotations = small_lsh_inputs()
    with pytest.raises(ValueError, match=r"attention_mask must be \(batch, seq_len\)"):
        functional.lsh_self_attention(qk, v, rotations, 4, chunk_len=4, attention_mask=bad_mask, backend="reference")
    with pytest.raises(ValueError, match=r"attention_mask must be \(batch, seq_len\)"):
        functional.lsh_hash(qk, rotations, 4, attention_mask=bad_mask, backend="reference")
    with pytest.raises(ValueError, match=r"attention_mask must be \(batch, seq_len\)"):
        functional.local_attention(qk, qk, v, chunk_len=4, attention_mask=bad_mask, backend="reference")
