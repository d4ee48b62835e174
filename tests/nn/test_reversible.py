"""ReversibleSequence: the memory-saving backward gives plain autograd's gradients, dropout
included, and saves the same bytes for 12 layers as for 1."""
import warnings

import pytest
import torch

from reformer_kernels import models
from tests.models.hf_reference import TINY, relative_error, transformers


def tiny_model(attn_layers, dropout, **overrides):
    config = models.ReformerConfig(**{
        **TINY, "attn_layers": attn_layers, "hidden_dropout_prob": dropout,
        "lsh_attention_probs_dropout_prob": dropout, "local_attention_probs_dropout_prob": dropout, **overrides,
    })
    return models.ReformerModel(config).train()


def gradients(model, ids, attention_mask, weights, seed):
    model.zero_grad()
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # attention dropout runs in the C++ kernels: no fallback warning
        out = model(input_ids=ids, attention_mask=attention_mask).last_hidden_state
    (out * weights).sum().backward()
    return out.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("attn_layers", [["lsh", "lsh"], ["local", "local"], ["local", "lsh", "lsh"]])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_reversible_gradients_equal_plain_autograd(attn_layers, dropout):
    model = tiny_model(attn_layers, dropout, num_hashes=2, is_decoder=True)
    ids = torch.randint(0, TINY["vocab_size"], (2, 40))  # not a chunk multiple: padded inside
    attention_mask = torch.ones_like(ids)
    attention_mask[1, :5] = 0
    weights = torch.randn(2, 40, 2 * TINY["hidden_size"])
    out_rev, grads_rev = gradients(model, ids, attention_mask, weights, seed=4)
    model.encoder.reversible = False
    out_plain, grads_plain = gradients(model, ids, attention_mask, weights, seed=4)
    assert torch.equal(out_rev, out_plain), "same seed, same layers: the forwards must agree bit for bit"
    for name, grad in grads_plain.items():
        assert relative_error(grads_rev[name], grad) < 1e-5, name


def test_backward_leaves_the_global_rng_alone():
    model = tiny_model(["lsh", "local"], 0.1)
    ids = torch.randint(0, TINY["vocab_size"], (1, 32))
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model(input_ids=ids).last_hidden_state
    state = torch.get_rng_state()
    out.sum().backward()
    assert torch.equal(torch.get_rng_state(), state)


def test_transformers_reversible_dropout_gradients_are_wrong():
    """transformers replays dropout by reseeding, but its LSH forward draws the rotations from
    that seed before the dropout mask while its backward reuses cached buckets: the recomputed
    mask differs. Replaying its own recorded seeds with plain autograd gives the true gradient."""
    config = transformers.ReformerConfig(**{**TINY, "attn_layers": ["lsh", "lsh"], "lsh_attention_probs_dropout_prob": 0.3})
    theirs = transformers.ReformerModel(config).train()
    seq_len, hidden = 64, TINY["hidden_size"]
    embeddings = torch.randn(1, seq_len, hidden)
    weights = torch.randn(1, seq_len, 2 * hidden)

    x = embeddings.clone().requires_grad_()
    out = theirs.encoder(hidden_states=x).hidden_states
    (out * weights).sum().backward()
    reversible_grad = x.grad

    x_plain = embeddings.clone().requires_grad_()
    x1 = x2 = x_plain
    for layer in theirs.encoder.layers:
        torch.manual_seed(layer.attention_seed)
        x1 = x1 + layer.attention(hidden_states=x2).hidden_states
        torch.manual_seed(layer.feed_forward_seed)
        x2 = x2 + layer.feed_forward(x1)
    out_plain = theirs.encoder.layer_norm(torch.cat([x1, x2], dim=-1))
    assert relative_error(out_plain, out) < 1e-6, "the replay must reproduce transformers' forward"
    (out_plain * weights).sum().backward()
    # Ours agrees with plain autograd to 1e-5 (test above); transformers is off by far more.
    assert relative_error(reversible_grad, x_plain.grad) > 1e-4


def saved_bytes(model, ids, labels):
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model(input_ids=ids, labels=labels)
    return total


def test_saved_bytes_do_not_grow_with_depth():
    """The memory contract: 12 layers save at most 1.3x the bytes of 1 layer (L = 4096): every layer is
    recomputed in the backward, so what is saved is what the model computes after the layers (the
    final LayerNorm keeps the last layer's two output streams, the LM head its input)."""
    kwargs = {**TINY, "axial_pos_shape": [64, 64], "max_position_embeddings": 4096, "lsh_attn_chunk_length": 64,
              "local_attn_chunk_length": 64, "is_decoder": True, "hash_seed": 0}
    ids = torch.randint(0, TINY["vocab_size"], (1, 4096))
    one = models.ReformerModelWithLMHead(models.ReformerConfig(**kwargs, attn_layers=["lsh"])).train()
    twelve = models.ReformerModelWithLMHead(models.ReformerConfig(**kwargs, attn_layers=["lsh", "local"] * 6)).train()
    bytes_one, bytes_twelve = saved_bytes(one, ids, ids), saved_bytes(twelve, ids, ids)
    assert bytes_twelve <= 1.3 * bytes_one, (bytes_one, bytes_twelve)
    # The measure can fail: plain autograd through the same 12 layers saves far more.
    twelve.reformer.encoder.reversible = False
    assert saved_bytes(twelve, ids, ids) > 5 * bytes_one


def test_recomputation_keeps_the_forward_autocast():
    """backward runs outside the user's autocast region; the recomputation must re-enter it."""
    model = tiny_model(["local", "lsh"], 0.0, hash_seed=1, is_decoder=True)
    ids = torch.randint(0, TINY["vocab_size"], (1, 64))

    def grads():
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = model(input_ids=ids).last_hidden_state
        out.float().pow(2).sum().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    reversible = grads()
    model.encoder.reversible = False
    for name, grad in grads().items():
        assert relative_error(reversible[name], grad) < 1e-5, name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_dropout_replay_uses_the_philox_state():
    """On CUDA the replayed state is the generator's Philox seed and offset."""
    model = tiny_model(["lsh", "local"], 0.1, num_hashes=2, is_decoder=True).cuda()
    ids = torch.randint(0, TINY["vocab_size"], (2, 64), device="cuda")
    weights = torch.randn(2, 64, 2 * TINY["hidden_size"], device="cuda")
    out_rev, grads_rev = gradients(model, ids, None, weights, seed=4)
    model.encoder.reversible = False
    out_plain, grads_plain = gradients(model, ids, None, weights, seed=4)
    assert torch.equal(out_rev, out_plain)
    for name, grad in grads_plain.items():
        assert relative_error(grads_rev[name], grad) < 1e-5, name


def checkpointed_gradients(model, preprocess, embeddings, weights, region, preserve_rng_state=True):
    """Gradients of a user network: ``preprocess`` (Linear + dropout) -> ReformerModel. ``region``
    says what runs under torch.utils.checkpoint: nothing, the preprocessing only, or both (then the
    reversible forward itself is recomputed inside checkpoint's backward)."""
    model.zero_grad()
    preprocess.zero_grad()
    x = embeddings.clone().requires_grad_()

    def reformer(h):
        return model(inputs_embeds=h).last_hidden_state

    def both(x):
        return reformer(preprocess(x))

    def checkpoint(fn, x):
        return torch.utils.checkpoint.checkpoint(fn, x, use_reentrant=False, preserve_rng_state=preserve_rng_state)

    torch.manual_seed(7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dropout runs on the reference backend, which warns once
        if region == "none":
            out = both(x)
        elif region == "preprocess":
            out = reformer(checkpoint(preprocess, x))
        else:
            out = checkpoint(both, x)
        (out * weights).sum().backward()
    # The word embeddings get no gradient: the network feeds inputs_embeds.
    named = [*model.named_parameters(), *preprocess.named_parameters(prefix="pre")]
    grads = {name: p.grad.clone() for name, p in named if p.grad is not None}
    return out.detach(), {**grads, "input": x.grad}


@pytest.mark.parametrize("region", ["preprocess", "preprocess+reformer"])
def test_torch_checkpoint_elsewhere_gives_the_same_gradients(region):
    """Activation checkpointing around user code next to (or around) the reversible layers: with
    dropout 0.1 everywhere, checkpoint's RNG replay and ours must compose, so gradients equal
    those of the same network without checkpointing."""
    model = tiny_model(["lsh", "local"], 0.1, num_hashes=2, is_decoder=True)
    hidden = TINY["hidden_size"]
    preprocess = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.Dropout(0.1)).train()
    embeddings = torch.randn(2, 48, hidden)
    weights = torch.randn(2, 48, 2 * hidden)
    out_plain, grads_plain = checkpointed_gradients(model, preprocess, embeddings, weights, "none")
    out_ckpt, grads_ckpt = checkpointed_gradients(model, preprocess, embeddings, weights, region)
    assert torch.equal(out_ckpt, out_plain)
    for name, grad in grads_plain.items():
        assert relative_error(grads_ckpt[name], grad) < 1e-6, name
    # The comparison can fail: without checkpoint's RNG replay the recomputed dropout masks differ.
    _, grads_unreplayed = checkpointed_gradients(model, preprocess, embeddings, weights, region, preserve_rng_state=False)
    assert relative_error(grads_unreplayed["input"], grads_plain["input"]) > 1e-3


def _sequence_and_input():
    from torch import nn

    from reformer_kernels.nn import ReversibleBlock, ReversibleSequence

    torch.manual_seed(0)
    blocks = [ReversibleBlock(nn.Linear(8, 8), nn.Linear(8, 8)) for _ in range(3)]
    return ReversibleSequence(blocks).double(), torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)


def test_an_output_modified_in_place_after_the_forward_is_an_error():
    """The backward reconstructs the inputs from the outputs it kept (not saved for backward, so that
    it can let go of them): changing them in place is caught by their version counter, as a saved
    tensor's would be."""
    sequence, x = _sequence_and_input()
    y1, y2 = sequence(x, x)
    y1.add_(1.0)
    with pytest.raises(RuntimeError, match="ReversibleSequence: an output of the reversible layers was modified"):
        (y1 + y2).sum().backward()


def test_retain_graph_runs_the_memory_saving_backward_twice():
    """With retain_graph the backward keeps the outputs it reconstructs from: a second backward gives
    the same gradients again."""
    sequence, x = _sequence_and_input()
    y1, y2 = sequence(x, x)
    loss = (y1 * y2).sum()
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward()
    assert torch.equal(x.grad, 2 * first)
