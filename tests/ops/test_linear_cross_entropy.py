"""linear_cross_entropy (``reformer_kernels.nn``): every backend against PyTorch's
cross_entropy(linear(hidden, weight, bias)) in float64, the loss and the gradients of hidden,
weight and bias under a random upstream gradient, by the tolerance rule (baseline: the same
composition in the backend's dtype).

The oracle is plain PyTorch, not the "reference" backend: that backend is the chunked PyTorch
path that "cpu" runs too, so comparing them would compare the code with itself."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import strategies as st

from reformer_kernels import nn

from .fuzz import DTYPES, compare_with_reference, fuzz


@st.composite
def cases(draw, backend):
    tiny = backend == "triton"
    n_tokens = draw(st.integers(1, 24 if tiny else 64))
    return dict(
        seed=draw(st.integers(0, 2**31 - 1)),
        dtype=draw(st.sampled_from(DTYPES[backend])),
        n_tokens=n_tokens,
        dim=draw(st.integers(1, 48 if tiny else 96)),
        vocab=draw(st.integers(1, 80 if tiny else 300)),
        bias=draw(st.booleans()),
        ignored=draw(st.sampled_from(["none", "some", "all"])),
        ignore_index=draw(st.sampled_from([-100, -1, 0])),  # 0 is a vocabulary id: those labels count for nothing
        chunk_size=draw(st.one_of(st.just(0), st.integers(1, n_tokens))),
    )


def check(backend, device, case):
    torch.manual_seed(case["seed"])
    n, dim, vocab, ignore_index = case["n_tokens"], case["dim"], case["vocab"], case["ignore_index"]
    hidden = torch.randn(n, dim, dtype=torch.float64)
    weight = torch.randn(vocab, dim, dtype=torch.float64) / dim**0.5
    bias = torch.randn(vocab, dtype=torch.float64) if case["bias"] else None
    labels = torch.randint(0, vocab, (n,))
    ignored = {"none": torch.zeros(n, dtype=torch.bool), "some": torch.rand(n) < 0.3, "all": torch.ones(n, dtype=torch.bool)}
    labels[ignored[case["ignored"]]] = ignore_index
    labels = labels.to(device)
    counted = bool((labels != ignore_index).any())
    upstream = (torch.randn(()),)

    def run(name, hidden, weight, *bias):
        bias = bias[0] if bias else None
        if name == "torch":
            return (F.cross_entropy(F.linear(hidden, weight, bias), labels, ignore_index=ignore_index),)
        return (nn.linear_cross_entropy(hidden, weight, bias, labels, chunk_size=case["chunk_size"], ignore_index=ignore_index,
                                        backend=name),)

    inputs = (hidden, weight) + ((bias,) if bias is not None else ())
    names = ("loss", "hidden", "weight", "bias")[: 1 + len(inputs)]
    what = f"linear_cross_entropy {case}"
    dtype = case["dtype"]
    if not counted:
        # no label counts: the mean over no tokens is nan, as torch's
        loss = run(backend, *(t.to(device, dtype) for t in inputs))[0]
        assert loss.isnan(), f"{what}: loss {loss.item()} with every label ignored, expected nan"
        return
    compare_with_reference(run, backend, inputs, dtype, device, upstream, names, what, oracle="torch",
                           output_dtype=torch.promote_types(dtype, torch.float32))  # the loss is at least fp32


def test_fuzz(backend, device):
    fuzz(check, cases, backend, device, "default")


@pytest.mark.slow
def test_fuzz_slow(backend, device):
    fuzz(check, cases, backend, device, "slow")
