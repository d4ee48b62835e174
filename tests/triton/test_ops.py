"""The Triton custom ops as torch.library sees them (opcheck, torch.compile), determinism, and the
errors users get through the shared validation of functional.py."""
import pytest
import torch

from reformer_kernels import functional, reference
from reformer_kernels.ops.local_attention import triton_kernels as triton_local_attention
from reformer_kernels.ops.lsh_attention import triton_kernels as triton_lsh_attention
from reformer_kernels.ops.lsh_hash import triton_kernels as triton_hashing

from .test_lsh_attention import hashed_order, padding_mask

pytestmark = pytest.mark.triton_interpret


P = 0.3


def keep_mask(shape, device):
    """An attention-dropout mask as functional draws it: bool, True (kept) with probability 1 - P."""
    return torch.rand(shape, device=device) > P


def lsh_inputs(device, requires_grad=True, dropout=False):
    """Arguments of triton_lsh_attention_fwd: 2 rounds of 32 positions, chunks of 16, causal, padded,
    with an attention-dropout mask and p, or None and 0."""
    qk, v = (torch.randn(1, 1, 32, 16, device=device, requires_grad=requires_grad) for _ in range(2))
    mask = padding_mask("tail", 1, 32, device)
    keep = keep_mask(reference.dropout_mask_shape(1, 1, 64, 16, 1, 0), device) if dropout else None
    return qk, v, hashed_order(qk.detach(), 2, mask), 2, 16, 1, 0, True, mask, keep, P if dropout else 0.0


def local_inputs(device, dropout=False):
    """Arguments of triton_local_attention_fwd: 40 positions in chunks of 16 (padded to 48 inside)."""
    q, k, v = (torch.randn(1, 1, 40, 16, device=device, requires_grad=True) for _ in range(3))
    keep = keep_mask(reference.dropout_mask_shape(1, 1, 48, 16, 1, 0), device) if dropout else None
    return q, k, v, 16, 1, 0, True, padding_mask("tail", 1, 40, device), keep, P if dropout else 0.0


@pytest.mark.parametrize("dropout", [False, True])
def test_opcheck_lsh_attention(device, dropout):
    args = lsh_inputs(device, dropout=dropout)
    torch.library.opcheck(triton_lsh_attention.lsh_attention_fwd, args)
    with torch.no_grad():
        out, lse = triton_lsh_attention.lsh_attention_fwd(*args)
    qk, v, sorted_idx, *config = args
    grads = (torch.randn_like(out), torch.randn_like(lse))
    torch.library.opcheck(triton_lsh_attention.lsh_attention_bwd,
                          (*grads, qk.detach(), v.detach(), sorted_idx, out, lse, *config))


@pytest.mark.parametrize("dropout", [False, True])
def test_opcheck_local_attention(device, dropout):
    args = local_inputs(device, dropout=dropout)
    torch.library.opcheck(triton_local_attention.local_attention_fwd, args)
    with torch.no_grad():
        out, lse = triton_local_attention.local_attention_fwd(*args)
    q, k, v, *config = args
    torch.library.opcheck(triton_local_attention.local_attention_bwd,
                          (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out, lse, *config))


def test_opcheck_lsh_hash(device):
    vectors = torch.randn(2, 2, 24, 16, device=device)
    rotations = torch.randn(2, 16, 2, 5, device=device)
    mask = padding_mask("tail", 2, 24, device)
    torch.library.opcheck(triton_hashing.lsh_hash, (vectors, rotations, [4, 6], mask))


def test_compiles_fullgraph_forward_and_backward(device):
    qk, v, sorted_idx, n_hashes, chunk_len, before, after, causal, mask, _, _ = lsh_inputs(device)

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


@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
def test_two_runs_give_identical_bits(device, dropout_p):
    qk, v, sorted_idx, n_hashes, chunk_len, before, after, causal, mask, _, _ = lsh_inputs(device)
    q, k, v_local, *_, local_mask, _, _ = local_inputs(device)

    def run():
        torch.manual_seed(7)  # the same dropout masks
        out, lse = functional.lsh_attention(qk, v, sorted_idx, n_hashes=n_hashes, chunk_len=chunk_len, causal=causal,
                                            attention_mask=mask, dropout_p=dropout_p, return_lse=True, backend="triton")
        local = functional.local_attention(q, k, v_local, chunk_len=16, causal=True, attention_mask=local_mask,
                                           dropout_p=dropout_p, backend="triton")
        loss = (out * out).sum() + lse.sum() + (local * local).sum()
        return (out, lse, local, *torch.autograd.grad(loss, (qk, v, q, k, v_local)))

    for first, second in zip(run(), run()):
        assert torch.equal(first, second)


def test_bad_inputs_get_the_shared_errors(device):
    qk, v, sorted_idx, *config, mask, keep, p = lsh_inputs(device, requires_grad=False, dropout=True)
    triton = dict(backend="triton")
    with pytest.raises(TypeError, match="sorted_idx must be int64"):
        functional.lsh_attention(qk, v, sorted_idx.int(), n_hashes=2, chunk_len=16, **triton)
    with pytest.raises(ValueError, match="chunk_len 24 must divide"):
        functional.lsh_attention(qk, v, sorted_idx, n_hashes=2, chunk_len=24, **triton)
    with pytest.raises(ValueError, match="v has shape"):
        functional.lsh_attention(qk, v[..., :8], sorted_idx, n_hashes=2, chunk_len=16, **triton)
    with pytest.raises(ValueError, match="attention_mask must be"):
        functional.local_attention(qk, qk, v, chunk_len=16, attention_mask=mask[:, :5], **triton)
    with pytest.raises(ValueError, match="n_buckets"):
        functional.lsh_hash(qk, torch.randn(1, 16, 1, 3, device=device), 5, **triton)
    # what only this backend refuses: it computes in fp32 from 16/32-bit inputs
    with pytest.raises(TypeError, match="triton backend takes float16, bfloat16 or float32"):
        functional.local_attention(qk.double(), qk.double(), v.double(), chunk_len=16, **triton)
    # the ops index the dropout mask unchecked: its shape, dtype and device are checked first
    with pytest.raises(ValueError, match=r"dropout_mask must have the chunked score shape \[1, 1, 4, 16, 32\]"):
        triton_lsh_attention.lsh_attention_fwd(qk, v, sorted_idx, *config, mask, keep[..., :16], p)
    with pytest.raises(TypeError, match=r"dropout_mask must be bool \(True where a probability is kept\)"):
        triton_lsh_attention.lsh_attention_fwd(qk, v, sorted_idx, *config, mask, keep.float(), p)
    with pytest.raises(ValueError, match=r"dropout_p must lie in \[0, 1\), got 1.0"):
        triton_lsh_attention.lsh_attention_fwd(qk, v, sorted_idx, *config, mask, keep, 1.0)
    with pytest.raises(ValueError, match="dropout_mask must have the chunked score shape"):
        triton_local_attention.local_attention_fwd(qk, qk, v, 16, 1, 1, False, mask, keep, p)


def test_saves_only_linear_memory_for_backward(device):
    """The backward recomputes the scores: what the op keeps is qk, v, sorted_idx, the mask, out and
    lse, all linear in L, never the chunk x window probabilities."""
    qk, v, sorted_idx, n_hashes, chunk_len, before, after, causal, mask, _, _ = lsh_inputs(device)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out, lse = triton_lsh_attention.lsh_attention_fwd(qk, v, sorted_idx, n_hashes, chunk_len, before, after,
                                                          causal, attention_mask=mask)
    linear = sum(t.numel() * t.element_size() for t in (qk, v, sorted_idx, mask, out, lse))
    assert sum(t.numel() * t.element_size() for t in saved) <= linear


@pytest.mark.parametrize("compiled, triton_op", [
    ("lsh_attention_fwd", triton_lsh_attention.lsh_attention_fwd),
    ("lsh_attention_bwd", triton_lsh_attention.lsh_attention_bwd),
    ("local_attention_fwd", triton_local_attention.local_attention_fwd),
    ("local_attention_bwd", triton_local_attention.local_attention_bwd),
    ("lsh_hash", triton_hashing.lsh_hash),
])
def test_triton_ops_take_the_schema_of_the_compiled_op(compiled, triton_op):
    """One schema per op: the Triton op takes exactly the arguments (names, types, defaults) and
    returns what csrc/reformer.cpp declares for the C++ op, so every backend is called alike."""
    if not hasattr(torch.ops.reformer_kernels, compiled):
        pytest.skip("reformer_kernels._C is not loaded, so the C++ schema is unknown")
    expected = getattr(torch.ops.reformer_kernels, compiled).default._schema
    actual = getattr(torch.ops.reformer_kernels, triton_op._name).default._schema

    def arguments(schema):
        # a Python custom op declares list[int] as SymInt[], which C++ reads as int[]
        return [(a.name, str(a.type).replace("SymInt", "int"), a.default_value) for a in schema.arguments]

    assert arguments(actual) == arguments(expected)
    assert [str(r.type) for r in actual.returns] == [str(r.type) for r in expected.returns]
