"""The nn modules on their own: rotations and RNG, any length, chunking, gradients, bad inputs."""
import warnings

import pytest
import torch

from reformer_kernels import backends, functional
from reformer_kernels.nn import ChunkedFeedForward, LocalSelfAttention, LSHSelfAttention
from tests.marks import requires_extension


def lsh(**overrides):
    kwargs = dict(num_hashes=2, num_buckets=4, chunk_len=4, hash_seed=None)
    kwargs.update(overrides)
    return LSHSelfAttention(16, 2, 8, **kwargs)


def test_hash_seed_gives_manual_seed_rotations_without_touching_the_global_rng():
    module = lsh(hash_seed=123, num_buckets=(4, 2))
    like = torch.zeros(1)
    state = torch.get_rng_state()
    rotations = module.draw_rotations(3, (4, 2), like)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)
    assert torch.equal(rotations, torch.randn(2, 8, 3, 3))


def test_without_hash_seed_rotations_come_from_the_global_rng():
    module = lsh()
    torch.manual_seed(5)
    first = module.draw_rotations(2, 8, torch.zeros(1, dtype=torch.float64))
    torch.manual_seed(5)
    assert torch.equal(first, torch.randn(2, 8, 2, 4, dtype=torch.float64))


@pytest.mark.parametrize(
    "module",
    [
        LSHSelfAttention(4, 2, 2, num_hashes=2, num_buckets=4, chunk_len=2, hash_seed=0, causal=True),
        LocalSelfAttention(4, 2, 2, chunk_len=2, n_chunks_after=1),
    ],
)
def test_gradcheck_float64_and_calling_conventions(module):
    module = module.double()
    x = torch.randn(1, 7, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(1, 7, dtype=torch.bool)
    mask[0, -2:] = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.autograd.gradcheck(lambda x: module(x, mask), (x,))
        assert torch.equal(module(x, mask), module(hidden_states=x, attention_mask=mask))


def test_lsh_any_length_and_full_attention_for_one_chunk():
    module = lsh(hash_seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for seq_len in (3, 4, 10, 13):
            out = module(torch.randn(3, seq_len, 16))
            assert out.shape == (3, seq_len, 16) and torch.isfinite(out).all()
        x = torch.randn(1, 4, 16)
        state = torch.get_rng_state()
        module.hash_seed = None
        module(x)
    assert torch.equal(torch.get_rng_state(), state), "one chunk: full attention, no rotations drawn (as transformers)"


@pytest.mark.parametrize("seq_len", [1, 7, 16])
def test_chunked_feed_forward_equals_unchunked(seq_len):
    unchunked = ChunkedFeedForward(16, 32, hidden_act="gelu")
    chunked = ChunkedFeedForward(16, 32, hidden_act="gelu", chunk_size=3)
    chunked.load_state_dict(unchunked.state_dict())
    x = torch.randn(2, seq_len, 16)
    assert torch.allclose(chunked(x), unchunked(x), atol=1e-6)


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=requires_extension)])
def test_feed_forward_relu_with_dropout_is_linear_dropout_relu_linear(backend):
    """In training with dropout, relu takes the fused dropout_relu path: from one generator state it
    gives the output and input gradient of x W^T + b -> functional.dropout -> relu -> Linear bit for
    bit (the same mask, the same values), as the reversible backward's replay requires."""
    module = ChunkedFeedForward(16, 32, hidden_act="relu", dropout=0.3).train()
    x = torch.randn(2, 9, 16, requires_grad=True)
    upstream = torch.randn(2, 9, 16)

    def run(forward):
        torch.manual_seed(5)
        module.zero_grad()
        with backends.use_backend(backend):
            out = forward(x)
        (grad_x,) = torch.autograd.grad(out, x, upstream)
        return out, grad_x

    def unfused(x):
        product = torch.nn.functional.linear(module.layer_norm(x), module.dense.dense.weight)
        dense = functional.dropout(product + module.dense.dense.bias, 0.3)
        return module.output(torch.relu(dense))

    for actual, expected in zip(run(module), run(unfused)):
        assert torch.equal(actual, expected)


def test_feed_forward_calls_a_hooked_or_replaced_first_linear():
    """A forward hook on the first Linear (or an adapter in its place) runs, and what it returns is
    what the relu path drops and rectifies: the fused path is taken only for a plain nn.Linear."""
    module = ChunkedFeedForward(16, 32, hidden_act="relu", dropout=0.3).train()
    x = torch.randn(2, 9, 16)
    calls = []

    def double(linear, inputs, output):
        calls.append(linear)
        return 2 * output

    torch.manual_seed(5)
    plain = module(x)
    handle = module.dense.dense.register_forward_hook(double)
    torch.manual_seed(5)
    hooked = module(x)
    handle.remove()
    assert calls == [module.dense.dense]
    torch.manual_seed(5)
    product = 2 * torch.nn.functional.linear(module.layer_norm(x), module.dense.dense.weight, module.dense.dense.bias)
    expected = module.output(torch.relu(functional.dropout(product, 0.3)))
    assert torch.equal(hooked, expected) and not torch.equal(hooked, plain)


def test_feed_forward_lets_dropout_relu_overwrite_its_gradient_only_behind_a_plain_second_linear(monkeypatch):
    """The second Linear's backward hands the activations a fresh gradient that nothing else reads,
    so dropout_relu may write the input's gradient over it (functional's grad_in_place); a hook on
    the second Linear turns it off (its output may then be anything, the activations themselves
    included, whose gradient something else may read)."""
    module = ChunkedFeedForward(16, 32, hidden_act="relu", dropout=0.3).train()
    flags = []
    fused = functional.dropout_relu

    def recording(*args, **kwargs):
        flags.append(kwargs.get("grad_in_place", False))
        return fused(*args, **kwargs)

    monkeypatch.setattr(functional, "dropout_relu", recording)
    x = torch.randn(2, 9, 16)
    module(x)
    handle = module.output.dense.register_forward_hook(lambda linear, inputs, output: output)
    module(x)
    handle.remove()
    assert flags == [True, False]


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"hidden_states must be \(batch, seq_len, 16\)"):
        lsh()(torch.randn(2, 8, 15))
    with pytest.raises(ValueError, match=r"hidden_states must be \(batch, seq_len, 16\)"):
        LocalSelfAttention(16, 2, 8)(torch.randn(8, 16))
    with pytest.raises(ValueError, match="hidden_act"):
        ChunkedFeedForward(16, 32, hidden_act="mish")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_hash_seed_rotations_on_cuda_match_manual_seed():
    module = lsh(hash_seed=7)
    rotations = module.draw_rotations(2, 8, torch.zeros(1, device="cuda"))
    torch.manual_seed(7)
    assert torch.equal(rotations, torch.randn(2, 8, 2, 4, device="cuda"))
