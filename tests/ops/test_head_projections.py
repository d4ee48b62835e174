"""head_projections: every backend against the float64 reference, each (B, H, L, d) projection and
the gradients of x and of every weight under random upstream gradients, by the tolerance rule."""
import pytest
import torch
from hypothesis import strategies as st

from reformer_kernels import functional

from .fuzz import DTYPES, HEAD_DIMS, TRITON_HEAD_DIMS, compare_with_reference, fuzz


@st.composite
def cases(draw, backend):
    tiny = backend == "triton"
    return dict(
        seed=draw(st.integers(0, 2**31 - 1)),
        dtype=draw(st.sampled_from(DTYPES[backend])),
        batch=draw(st.sampled_from([1, 2, 3])),
        seq_len=draw(st.integers(1, 24 if tiny else 70)),
        hidden=draw(st.integers(1, 48 if tiny else 130)),
        heads=draw(st.integers(1, 4)),
        head_dim=draw(st.sampled_from(TRITON_HEAD_DIMS if tiny else HEAD_DIMS)),
        n_weights=draw(st.integers(1, 3)),  # LSH layers project qk and v, local ones q, k and v
    )


def check(backend, device, case):
    torch.manual_seed(case["seed"])
    batch, seq_len, hidden, heads, head_dim, n = (case[k] for k in ("batch", "seq_len", "hidden", "heads", "head_dim", "n_weights"))
    x = torch.randn(batch, seq_len, hidden, dtype=torch.float64)
    # nn.Linear's init scale, so that the projections are of order one whatever the hidden size
    weights = [torch.randn(heads * head_dim, hidden, dtype=torch.float64) / hidden**0.5 for _ in range(n)]
    upstream = [torch.randn(batch, heads, seq_len, head_dim) for _ in range(n)]

    def run(name, x, *weights):
        return tuple(functional.head_projections(x, list(weights), heads, backend=name))

    names = [f"projection {i}" for i in range(n)] + ["x"] + [f"weight {i}" for i in range(n)]
    compare_with_reference(run, backend, (x, *weights), case["dtype"], device, upstream, names, f"head_projections {case}")


def test_fuzz(backend, device):
    fuzz(check, cases, backend, device, "default")


@pytest.mark.slow
def test_fuzz_slow(backend, device):
    fuzz(check, cases, backend, device, "slow")
