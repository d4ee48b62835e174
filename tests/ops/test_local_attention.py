"""local_attention: every backend against the float64 reference, out and the gradients of q, k
and v under a random upstream gradient, by the tolerance rule: any length (one chunk or less,
not a multiple of the chunk), 0-2 neighbour chunks each side, causal or not, padding masks, and
attention dropout (drawn by ``functional`` from the default generator, re-seeded per call)."""
import pytest
import torch
from hypothesis import strategies as st

from reformer_kernels import functional

from .fuzz import DTYPES, HEAD_DIMS, MASK_KINDS, TRITON_HEAD_DIMS, compare_with_reference, fuzz, padding_mask


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
        before=draw(st.integers(0, 2)),
        after=draw(st.integers(0, 2)),
        causal=draw(st.booleans()),
        mask=draw(st.sampled_from(MASK_KINDS)),
        dropout_p=draw(st.sampled_from([0.0, 0.0, 0.3])),
        head_split=draw(st.booleans()),  # inputs as (B, L, H, d) memory viewed as (B, H, L, d)
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


def test_fuzz(backend, device):
    fuzz(check, cases, backend, device, "default")


@pytest.mark.slow
def test_fuzz_slow(backend, device):
    fuzz(check, cases, backend, device, "slow")
