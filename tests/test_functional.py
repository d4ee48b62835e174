"""The public functional API: validation, backend selection, dropout routing, padding, masks."""

import pytest
import torch

from reformer_kernels import backends, functional, reference

from .marks import requires_extension

B, H, L, D = 2, 2, 12, 4


def heads(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype)


def lsh_inputs(seq_len: int = L, n_hashes: int = 2, n_buckets: int = 4, dtype: torch.dtype = torch.float32):
    qk, v = heads(B, H, seq_len, D, dtype=dtype), heads(B, H, seq_len, D, dtype=dtype)
    rotations = heads(H, D, n_hashes, n_buckets // 2, dtype=dtype)
    return qk, v, rotations


def sorted_idx_for(qk: torch.Tensor, rotations: torch.Tensor, n_buckets: int = 4) -> torch.Tensor:
    buckets, num_keys = reference.hash_vectors(qk, rotations, n_buckets)
    return reference.sort_buckets(buckets, num_keys)[0]


# ----------------------------------------------------------------------------- validation


def test_lsh_attention_rejects_mismatched_qk_and_v():
    qk, v, rotations = lsh_inputs()
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
def test_lsh_attention_rejects_bad_arguments(change, error, match):
    qk, v, rotations = lsh_inputs()
    kwargs = dict(n_hashes=2, chunk_len=4, backend="reference") | change
    with pytest.raises(error, match=match):
        functional.lsh_attention(qk, v, sorted_idx_for(qk, rotations), **kwargs)


def test_lsh_attention_with_several_rounds_needs_chunks_within_a_round():
    qk, v, rotations = lsh_inputs(seq_len=6)
    with pytest.raises(ValueError, match="no chunk spans two rounds"):
        functional.lsh_attention(qk, v, sorted_idx_for(qk, rotations), n_hashes=2, chunk_len=4, backend="reference")


def test_lsh_attention_rejects_bad_sorted_idx():
    qk, v, rotations = lsh_inputs()
    sorted_idx = sorted_idx_for(qk, rotations)
    kwargs = dict(n_hashes=2, chunk_len=4, backend="reference")
    with pytest.raises(ValueError, match=r"sorted_idx must be \(batch, heads, n_hashes \* seq_len\)"):
        functional.lsh_attention(qk, v, sorted_idx[..., :L], **kwargs)
    with pytest.raises(ValueError, match="check n_hashes"):
        functional.lsh_attention(qk, v, sorted_idx, **(kwargs | dict(n_hashes=1)))
    with pytest.raises(TypeError, match="sorted_idx must be int64"):
        functional.lsh_attention(qk, v, sorted_idx.int(), **kwargs)
    with pytest.raises(ValueError, match="sorted_idx spans"):
        functional.lsh_attention(qk, v, sorted_idx + 1, **kwargs)


@pytest.mark.parametrize(
    "n_buckets,error",
    [(3, ValueError), (0, ValueError), ((2, 3), ValueError), ((), ValueError), (4.0, TypeError), (True, TypeError)],
)
def test_hashing_rejects_bad_n_buckets(n_buckets, error):
    qk, v, rotations = lsh_inputs()
    with pytest.raises(error, match="n_buckets"):
        functional.lsh_hash(qk, rotations, n_buckets, backend="reference")
    with pytest.raises(error, match="n_buckets"):
        functional.lsh_self_attention(qk, v, rotations, n_buckets, chunk_len=4, backend="reference")


def test_hashing_rejects_bad_rotations():
    qk, v, rotations = lsh_inputs()
    with pytest.raises(ValueError, match=r"rotations must be \(heads, head_dim, n_hashes, R / 2\) = \(2, 4, n_hashes, 2\)"):
        functional.lsh_hash(qk, rotations[..., :1], 4, backend="reference")
    with pytest.raises(ValueError, match="rotations must be"):
        functional.lsh_hash(qk, rotations, (4, 2), backend="reference")  # R / 2 = 3 for factors (4, 2)
    with pytest.raises(ValueError, match="rotations must be"):
        functional.lsh_self_attention(qk, v, rotations[:1], 4, chunk_len=4, backend="reference")
    with pytest.raises(TypeError, match="rotations are torch.float64"):
        functional.lsh_hash(qk, rotations.double(), 4, backend="reference")


@pytest.mark.parametrize("bad_mask", [torch.ones(B, L + 1), torch.ones(L), torch.ones(B, 1, L)])
def test_ops_reject_bad_attention_mask_shape(bad_mask):
    qk, v, rotations = lsh_inputs()
    with pytest.raises(ValueError, match=r"attention_mask must be \(batch, seq_len\)"):
        functional.lsh_self_attention(qk, v, rotations, 4, chunk_len=4, attention_mask=bad_mask, backend="reference")
    with pytest.raises(ValueError, match=r"attention_mask must be \(batch, seq_len\)"):
        functional.lsh_hash(qk, rotations, 4, attention_mask=bad_mask, backend="reference")
    with pytest.raises(ValueError, match=r"attention_mask must be \(batch, seq_len\)"):
        functional.local_attention(qk, qk, v, chunk_len=4, attention_mask=bad_mask, backend="reference")


def test_local_attention_rejects_bad_arguments():
    q = heads(B, H, L, D)
    with pytest.raises(ValueError, match="k has shape"):
        functional.local_attention(q, q[..., :2], q, chunk_len=4, backend="reference")
    with pytest.raises(TypeError, match="v is torch.float16"):
        functional.local_attention(q, q, q.half(), chunk_len=4, backend="reference")
    with pytest.raises(ValueError, match="chunk_len must be >= 1"):
        functional.local_attention(q, q, q, chunk_len=-3, backend="reference")
    with pytest.raises(ValueError, match="n_chunks_after must be >= 0"):
        functional.local_attention(q, q, q, chunk_len=4, n_chunks_after=-1, backend="reference")


def test_default_num_buckets_validates_its_arguments():
    # The rule itself is checked against transformers in tests/reference.
    assert functional.default_num_buckets(1 << 16, 64, 1 << 16) == reference.default_num_buckets(1 << 16, 64, 1 << 16)
    with pytest.raises(ValueError, match="seq_len must be >= 8"):
        functional.default_num_buckets(4, 8, 1024)
    with pytest.raises(ValueError, match="chunk_len must be >= 1"):
        functional.default_num_buckets(64, 0, 1024)


# ----------------------------------------------------------------------------- backends


def test_unknown_or_unavailable_backend_is_an_error():
    qk, v, rotations = lsh_inputs()
    with pytest.raises(ValueError, match="'bogus' is not a backend"):
        functional.lsh_self_attention(qk, v, rotations, 4, chunk_len=4, backend="bogus")
    # CUDA kernels never run on CPU tensors, whatever this machine has.
    with pytest.raises(ValueError, match="backend 'cuda'"):
        functional.local_attention(qk, qk, v, chunk_len=4, backend="cuda")
    with pytest.raises(ValueError, match="backend 'cuda'"):
        functional.lsh_hash(qk, rotations, 4, backend="cuda")


def test_use_backend_context_is_obeyed():
    qk, v, rotations = lsh_inputs()
    with backends.use_backend("cuda"), pytest.raises(ValueError, match="backend 'cuda'"):
        functional.lsh_self_attention(qk, v, rotations, 4, chunk_len=4)


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=requires_extension)])
@pytest.mark.parametrize("op", ["lsh_hash", "lsh_attention", "local_attention"])
def test_backend_impls_take_the_schema_arguments_by_name(op, backend):
    """One schema per op: functional calls every backend's impl with the schema's argument names
    (csrc/reformer.cpp), and each gives the reference's answer."""
    qk, v, rotations = lsh_inputs()
    qk, v, rotations = qk.double(), v.double(), rotations.double()
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, -3:] = False
    _, impl = backends.select(op, qk.device, backend)
    _, reference_impl = backends.select(op, qk.device, "reference")
    if op == "lsh_hash":
        kwargs = dict(vectors=qk, rotations=rotations, n_buckets=4, attention_mask=mask)
    elif op == "lsh_attention":
        kwargs = dict(qk=qk, v=v, sorted_idx=sorted_idx_for(qk, rotations), n_hashes=2, chunk_len=4, n_chunks_before=1,
                      n_chunks_after=0, causal=True, attention_mask=mask)
    else:
        kwargs = dict(q=qk, k=qk, v=v, chunk_len=4, n_chunks_before=1, n_chunks_after=0, causal=True, attention_mask=mask)
    actual, expected = impl(**kwargs), reference_impl(**kwargs)
    for a, e in zip(actual, expected) if isinstance(expected, tuple) else [(actual, expected)]:
        torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(e), rtol=1e-10, atol=1e-10)


class _RecordingKernel:
    """Stands in for a backend's kernel: records the keyword arguments it was called with."""

    def __init__(self):
        self.kwargs = None

    def __call__(self, *args, **kwargs):
        self.kwargs = kwargs
        return args[0].clone()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_every_backend_receives_one_bool_dropout_mask(monkeypatch, dtype):
    """With dropout_p > 0 the chosen kernel runs (no fallback) and gets the mask and p: bool, one
    byte per probability, the same draw of the default generator whatever the dtype."""
    kernel = _RecordingKernel()
    monkeypatch.setattr(backends, "select", lambda op, device, backend=None: ("triton", kernel))
    q = heads(B, H, L, D).to(dtype)
    torch.manual_seed(3)
    functional.local_attention(q, q, q, chunk_len=4, dropout_p=0.25, backend="triton")
    mask = kernel.kwargs["dropout_mask"]
    assert mask.shape == reference.dropout_mask_shape(B, H, L, 4, 1, 0) and mask.dtype == torch.bool
    assert kernel.kwargs["dropout_p"] == 0.25
    torch.manual_seed(3)
    assert torch.equal(mask, torch.empty(mask.shape).bernoulli_(0.75).bool())
    functional.local_attention(q, q, q, chunk_len=4, backend="triton")
    assert "dropout_mask" not in kernel.kwargs, "without dropout no mask is drawn"


def test_lsh_attention_dropout_draws_its_mask_from_the_default_generator():
    qk, v, rotations = lsh_inputs()
    sorted_idx = sorted_idx_for(qk, rotations)
    kwargs = dict(n_hashes=2, chunk_len=4, n_chunks_before=1, n_chunks_after=1)
    p = 0.25
    torch.manual_seed(5)
    out = functional.lsh_attention(qk, v, sorted_idx, **kwargs, dropout_p=p, backend="reference")
    torch.manual_seed(5)
    keep = torch.empty(reference.dropout_mask_shape(B, H, 2 * L, 4, 1, 1), dtype=torch.bool).bernoulli_(1 - p)
    expected, _ = reference.lsh_attention(qk, v, sorted_idx, **kwargs, causal=False, dropout_mask=keep, dropout_p=p)
    assert torch.equal(out, expected)
    assert not torch.allclose(out, functional.lsh_attention(qk, v, sorted_idx, **kwargs, backend="reference"))


# ----------------------------------------------------------------------------- padding and masks


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("with_mask", [False, True])
def test_lsh_self_attention_pads_like_an_explicit_masked_padding(causal, with_mask):
    seq_len, chunk_len, padded_len = 13, 4, 16
    qk, v, rotations = lsh_inputs(seq_len=seq_len)
    mask = None
    if with_mask:
        mask = torch.ones(B, seq_len, dtype=torch.long)
        mask[1, :3] = 0
    kwargs = dict(chunk_len=chunk_len, n_chunks_before=1, n_chunks_after=1, causal=causal, backend="reference")
    out = functional.lsh_self_attention(qk, v, rotations, 4, attention_mask=mask, **kwargs)

    extra = padded_len - seq_len
    real = torch.ones(B, seq_len, dtype=torch.long) if mask is None else mask
    explicit_mask = torch.cat([real, torch.zeros(B, extra, dtype=torch.long)], 1)
    pad = (0, 0, 0, extra)
    padded_out = functional.lsh_self_attention(
        torch.nn.functional.pad(qk, pad), torch.nn.functional.pad(v, pad), rotations, 4, attention_mask=explicit_mask, **kwargs
    )
    assert out.shape == (B, H, seq_len, D)
    assert torch.equal(out, padded_out[:, :, :seq_len])


def test_local_attention_pads_like_an_explicit_masked_padding():
    seq_len, padded_len = 10, 12
    q, k, v = (heads(B, H, seq_len, D) for _ in range(3))
    mask = torch.ones(B, seq_len, dtype=torch.bool)
    mask[0, -2:] = False
    kwargs = dict(chunk_len=4, n_chunks_before=1, n_chunks_after=1, causal=False, backend="reference")
    out = functional.local_attention(q, k, v, attention_mask=mask, **kwargs)
    pad = (0, 0, 0, padded_len - seq_len)
    explicit_mask = torch.cat([mask, torch.zeros(B, padded_len - seq_len, dtype=torch.bool)], 1)
    padded = [torch.nn.functional.pad(t, pad) for t in (q, k, v)]
    assert torch.equal(out, functional.local_attention(*padded, attention_mask=explicit_mask, **kwargs)[:, :, :seq_len])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("seq_len", [6, 16])  # one chunk (full attention) and hashed chunks
@pytest.mark.parametrize("causal", [False, True])
def test_fully_padded_rows_give_no_nan(dtype, seq_len, causal):
    qk, v, rotations = lsh_inputs(seq_len=seq_len, dtype=dtype)
    qk.requires_grad_(True)
    mask = torch.ones(B, seq_len, dtype=torch.bool)
    mask[1] = False
    kwargs = dict(chunk_len=8, causal=causal, attention_mask=mask, backend="reference")
    lsh_out = functional.lsh_self_attention(qk, v, rotations, 4, **kwargs)
    local_out = functional.local_attention(qk, qk, v, **kwargs)
    for out in (lsh_out, local_out):
        assert out.dtype == dtype and out.shape == (B, H, seq_len, D)
        assert torch.isfinite(out).all()
    (lsh_out.float().sum() + local_out.float().sum()).backward()
    assert torch.isfinite(qk.grad).all()


def test_lsh_attention_returns_lse_per_round():
    qk, v, rotations = lsh_inputs()
    sorted_idx = sorted_idx_for(qk, rotations)
    out, lse = functional.lsh_attention(qk, v, sorted_idx, n_hashes=2, chunk_len=4, return_lse=True, backend="reference")
    assert out.shape == (B, H, L, D) and lse.shape == (B, H, 2, L)
    assert out.dtype == lse.dtype == qk.dtype


# ----------------------------------------------------------------------------- dropout_add


@pytest.mark.parametrize("backend", [pytest.param("cpu", marks=requires_extension), "reference"])
@pytest.mark.parametrize("subtract", [False, True])
def test_dropout_add_is_torch_dropout_from_the_same_generator_state(backend, subtract):
    residual, x = torch.randn(4, 9), torch.randn(4, 9)
    torch.manual_seed(3)
    out = functional.dropout_add(residual, x, 0.25, subtract=subtract, backend=backend)
    torch.manual_seed(3)
    dropped = torch.nn.functional.dropout(x, 0.25)
    assert torch.equal(out, residual - dropped if subtract else residual + dropped)


def test_dropout_add_without_dropout_is_the_sum_and_draws_nothing():
    residual, x = torch.randn(4, 9), torch.randn(4, 9)
    state = torch.get_rng_state()
    assert torch.equal(functional.dropout_add(residual, x, 0.0, backend="reference"), residual + x)
    assert torch.equal(functional.dropout_add(residual, x, 0.5, training=False, subtract=True, backend="reference"), residual - x)
    assert torch.equal(torch.get_rng_state(), state)


def test_dropout_add_with_p_one_is_the_residual():
    residual, x = torch.randn(4, 9), torch.randn(4, 9, requires_grad=True)
    out = functional.dropout_add(residual, x, 1.0, backend="reference")
    assert torch.equal(out, residual)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_dropout_add_draws_from_an_explicit_generator():
    residual, x = torch.zeros(64), torch.ones(64)
    state = torch.get_rng_state()
    masks = [functional.dropout_add(residual, x, 0.5, generator=torch.Generator().manual_seed(1), backend="reference")
             for _ in range(2)]
    assert torch.equal(*masks)
    assert torch.equal(torch.get_rng_state(), state)


def test_dropout_add_promotes_mixed_dtypes():
    """Under autocast the residual stream stays fp32 while a sub-layer returns bf16."""
    out = functional.dropout_add(torch.randn(3, 4), torch.randn(3, 4, dtype=torch.bfloat16), 0.1, backend="reference")
    assert out.dtype == torch.float32


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(p=1.5), ValueError, r"dropout_add: p must lie in \[0, 1\], got 1.5"),
        (dict(p=-0.1), ValueError, r"p must lie in \[0, 1\], got -0.1"),
        (dict(p=None), TypeError, "p must be a float, got NoneType"),
        (dict(x=torch.randn(4, 8)), ValueError, r"x has shape \(4, 8\) but residual has \(4, 9\)"),
        (dict(x=torch.randn(4, 9, device="meta")), ValueError, "x is on meta but residual is on cpu"),
        (dict(x=torch.ones(4, 9, dtype=torch.long)), TypeError, "x must be float16, bfloat16, float32 or float64"),
        (dict(residual=[1.0]), TypeError, "residual must be a torch.Tensor"),
        (dict(subtract="yes"), TypeError, "subtract must be True or False"),
        (dict(generator=0), TypeError, "generator must be a torch.Generator or None"),
        (dict(backend="bogus"), ValueError, "'bogus' is not a backend"),
        (dict(backend="cuda"), ValueError, "backend 'cuda'"),
    ],
)
def test_dropout_add_rejects_bad_arguments(change, error, match):
    arguments = {**dict(residual=torch.randn(4, 9), x=torch.randn(4, 9), p=0.1), **change}
    with pytest.raises(error, match=match):
        functional.dropout_add(**arguments)


def test_dropout_add_has_an_implementation_on_every_backend_but_cuda():
    ops = backends.implemented_ops()
    assert all("dropout_add" in ops[backend] for backend in ("cpu", "reference", "triton"))
