"""Model behaviour beyond parity: any length, axial encodings, heads, checkpoints, bad inputs."""
import os
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from reformer_kernels import models, reference
from reformer_kernels.ops.dropout_add import philox_seed_offset

from .hf_reference import TINY, model_pair, relative_error, transformers

DECODER = dict(TINY, attn_layers=["local", "lsh"], is_decoder=True, num_hashes=2)


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def lm(**overrides):
    return models.ReformerModelWithLMHead(models.ReformerConfig(**{**DECODER, **overrides}))


@pytest.mark.parametrize("training", [False, True])
def test_any_length_equals_explicit_padding_with_a_mask(training):
    """L = 21 is padded inside to 24 (chunk 8); passing the padded ids and mask gives the same."""
    model = lm(hash_seed=None).train(training)
    ids = torch.randint(1, 50, (2, 21))
    padded_ids = torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(2, 21, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)], dim=1)
    labels = ids.clone()
    torch.manual_seed(3)
    auto = quiet(model, input_ids=ids, labels=labels, return_logits=True)
    torch.manual_seed(3)
    explicit = quiet(model, input_ids=padded_ids, attention_mask=mask, return_logits=True)
    assert auto.logits.shape == (2, 21, 50)
    assert relative_error(auto.logits, explicit.logits[:, :21]) < 1e-6
    if training:
        auto.loss.backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_axial_three_factors_any_length_train_and_eval():
    config = models.ReformerConfig(**{**DECODER, "axial_pos_shape": [4, 4, 8], "axial_pos_embds_dim": [4, 4, 8]})
    model = models.ReformerModelWithLMHead(config)
    embeddings = model.reformer.embeddings.position_embeddings
    positions = torch.arange(128)
    grid = torch.stack([positions // 32, positions // 8 % 4, positions % 8], dim=-1)
    tables = [w.reshape(w.shape[i], -1) for i, w in enumerate(embeddings.weights)]
    expected = torch.cat([tables[axis][grid[:, axis]] for axis in range(3)], dim=-1)
    assert torch.equal(embeddings(positions[None]), expected[None])
    for training in (True, False):
        model.train(training)
        for seq_len in (5, 37, 128):
            out = quiet(model, input_ids=torch.randint(0, 50, (1, seq_len)), labels=torch.randint(0, 50, (1, seq_len)), return_logits=True)
            assert out.logits.shape == (1, seq_len, 50) and torch.isfinite(out.loss)


def test_axial_matches_transformers_in_eval_at_any_length():
    theirs, ours = model_pair(dict(TINY, attn_layers=["local"]), "ReformerModel")
    positions = torch.arange(77)[None]
    theirs.eval()
    expected = theirs.embeddings.position_embeddings(positions)
    assert torch.equal(ours.embeddings.position_embeddings(positions), expected)


def test_num_buckets_unset_is_not_written_to_the_config():
    model = lm(attn_layers=["lsh"], num_buckets=None).eval()
    quiet(model, input_ids=torch.randint(0, 50, (1, 64)))
    assert model.config.num_buckets is None


def test_lm_loss_does_not_materialize_the_logits():
    vocab, seq_len = 4096, 128
    model = lm(vocab_size=vocab, hash_seed=0).train()
    ids = torch.randint(0, vocab, (1, seq_len))
    saved = 0

    def pack(t):
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = quiet(model, input_ids=ids, labels=ids)
    assert out.logits is None
    # Everything saved, the LM head's (vocab, 2 * hidden) weight included, is under half the fp32 logits.
    assert saved < seq_len * vocab * 4 / 2, saved
    out.loss.backward()
    with torch.no_grad():
        logits = quiet(model, input_ids=ids, return_logits=True).logits
    expected = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
    assert relative_error(out.loss, expected) < 1e-5


@pytest.mark.parametrize("class_name", ["ReformerForSequenceClassification", "ReformerForQuestionAnswering"])
def test_heads_match_transformers(class_name):
    theirs, ours = model_pair(dict(TINY, attn_layers=["local", "lsh"], hash_seed=1, num_labels=2), class_name)
    theirs.eval(), ours.eval()
    ids = torch.randint(0, 50, (3, 32))
    if class_name == "ReformerForSequenceClassification":
        labels = dict(labels=torch.tensor([0, 1, 1]))
    else:
        labels = dict(start_positions=torch.tensor([1, 5, 40]), end_positions=torch.tensor([3, 9, 2]))
    expected, actual = quiet(theirs, input_ids=ids, **labels), ours(input_ids=ids, **labels)
    assert relative_error(actual.loss, expected.loss) < 1e-5
    for name in ("logits", "start_logits", "end_logits"):
        if hasattr(expected, name) and getattr(expected, name) is not None:
            assert relative_error(getattr(actual, name), getattr(expected, name)) < 1e-5


@pytest.mark.usefixtures("reference_backend")
@pytest.mark.parametrize("class_name", ["ReformerModelWithLMHead", "ReformerModel"])
def test_save_pretrained_round_trips_with_transformers(tmp_path, class_name):
    theirs, ours = model_pair(dict(DECODER, hash_seed=4), class_name)
    ids = torch.randint(0, 50, (2, 32))

    def output(model):
        out = quiet(model.eval(), input_ids=ids)
        return out.logits if class_name == "ReformerModelWithLMHead" else out.last_hidden_state

    ours.save_pretrained(tmp_path / "ours")
    assert sorted(os.listdir(tmp_path / "ours")) == ["config.json", "model.safetensors"]
    loaded_by_them = quiet(getattr(transformers, class_name).from_pretrained, tmp_path / "ours")
    assert relative_error(output(loaded_by_them), output(ours)) < 1e-5

    theirs.save_pretrained(tmp_path / "theirs")
    loaded_by_us = getattr(models, class_name).from_pretrained(tmp_path / "theirs")
    assert relative_error(output(loaded_by_us), output(theirs)) < 1e-5


def test_pytorch_bin_and_either_lm_head_bias_name(tmp_path):
    model = lm(hash_seed=4).eval()
    with torch.no_grad():
        model.lm_head.decoder.bias.normal_()
    ids = torch.randint(0, 50, (1, 16))
    expected = model(input_ids=ids).logits
    for dropped in ("lm_head.bias", "lm_head.decoder.bias"):
        directory = tmp_path / dropped
        model.config.save_pretrained(directory)
        state = {k: v for k, v in model.state_dict().items() if k != dropped}
        if dropped == "lm_head.decoder.bias":
            state["lm_head.bias"] = model.lm_head.decoder.bias.detach().clone()
        torch.save(state, directory / "pytorch_model.bin")
        loaded = models.ReformerModelWithLMHead.from_pretrained(directory).eval()
        assert torch.equal(loaded(input_ids=ids).logits, expected)


def test_base_checkpoint_loads_into_a_head_and_back(tmp_path):
    base = models.ReformerModel(models.ReformerConfig(**DECODER))
    base.save_pretrained(tmp_path / "base")
    with pytest.warns(UserWarning, match="newly initialized head"):
        head = models.ReformerModelWithLMHead.from_pretrained(tmp_path / "base")
    assert torch.equal(head.reformer.embeddings.word_embeddings.weight, base.embeddings.word_embeddings.weight)
    head.save_pretrained(tmp_path / "head")
    with pytest.warns(UserWarning, match=r"\['lm_head.bias', 'lm_head.decoder.bias', 'lm_head.decoder.weight'\] belong to another head"):
        again = models.ReformerModel.from_pretrained(tmp_path / "head")
    assert torch.equal(again.encoder.layer_norm.weight, head.reformer.encoder.layer_norm.weight)


def test_bad_checkpoints(tmp_path):
    model = lm()
    with pytest.raises(FileNotFoundError, match="nowhere' is not a directory"):
        models.ReformerModelWithLMHead.from_pretrained(tmp_path / "nowhere")
    model.config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no weights"):
        models.ReformerModelWithLMHead.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        models.ReformerModelWithLMHead.from_pretrained(tmp_path)
    os.remove(tmp_path / "model.safetensors")
    (tmp_path / "pytorch_model.bin").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="could not be read"):
        models.ReformerModelWithLMHead.from_pretrained(tmp_path)
    state = model.state_dict()
    state["reformer.encoder.layers.9.extra.weight"] = torch.zeros(1)
    del state["reformer.encoder.layer_norm.bias"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"missing keys \['reformer.encoder.layer_norm.bias'\].*unexpected keys"):
        models.ReformerModelWithLMHead.from_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="Missing key"):
        model.load_state_dict(state)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(input_ids=torch.zeros(1, 200, dtype=torch.long)), ValueError, "seq_len 200 > max_position_embeddings 128"),
        (dict(input_ids=torch.zeros(1, 8)), TypeError, "integer token ids"),
        (dict(input_ids=torch.zeros(8, dtype=torch.long)), ValueError, r"input_ids must be \(batch, seq_len\)"),
        (dict(input_ids=torch.full((1, 8), 50)), ValueError, "vocab_size=50"),
        (dict(input_ids=torch.full((1, 8), -1)), ValueError, "vocab_size=50"),
        (dict(input_ids=torch.zeros(2, 8, dtype=torch.long), attention_mask=torch.ones(2, 9)), ValueError, "attention_mask must be"),
        (dict(input_ids=torch.zeros(2, 8, dtype=torch.long), inputs_embeds=torch.zeros(2, 8, 16)), ValueError, "exactly one"),
        (dict(inputs_embeds=torch.zeros(2, 8, 15)), ValueError, "inputs_embeds must be"),
        (dict(input_ids=torch.zeros(1, 8, dtype=torch.long), num_hashes=0), ValueError, "num_hashes"),
        (dict(input_ids=torch.zeros(1, 8, dtype=torch.long), labels=torch.zeros(1, 7, dtype=torch.long)), ValueError, "labels must be"),
    ],
)
def test_bad_inputs_name_the_argument(kwargs, error, message):
    with pytest.raises(error, match=message):
        lm()(**kwargs)


def test_axial_shape_bounds_the_length():
    config = models.ReformerConfig(**{**DECODER, "axial_pos_shape": [4, 8], "max_position_embeddings": 64})
    with pytest.raises(ValueError, match=r"prod\(axial_pos_shape"):
        models.ReformerModelWithLMHead(config)(input_ids=torch.zeros(1, 40, dtype=torch.long))


def test_heads_reject_inconsistent_configs():
    with pytest.raises(ValueError, match="is_decoder=True"):
        models.ReformerModelWithLMHead(models.ReformerConfig(**TINY))
    with pytest.raises(ValueError, match="lsh_num_chunks_after"):
        models.ReformerModelWithLMHead(models.ReformerConfig(**{**DECODER, "lsh_num_chunks_after": 1}))
    with pytest.raises(ValueError, match="is_decoder=False"):
        models.ReformerForMaskedLM(models.ReformerConfig(**DECODER))
    with pytest.raises(TypeError, match="ReformerConfig"):
        models.ReformerModel(transformers.ReformerConfig(**TINY))


@pytest.mark.parametrize(
    "class_name, overrides",
    [
        ("ReformerModel", {}),
        ("ReformerModelWithLMHead", {"is_decoder": True}),
        ("ReformerForMaskedLM", {"axial_pos_embds": False}),
        ("ReformerForSequenceClassification", {"num_labels": 3}),
        ("ReformerForQuestionAnswering", {}),
    ],
)
def test_state_dicts_load_strictly_both_ways(class_name, overrides):
    config_kwargs = dict(TINY, attn_layers=["lsh", "local"], **overrides)
    theirs, ours = model_pair(config_kwargs, class_name)  # ours <- theirs, strictly
    fresh = getattr(models, class_name)(models.ReformerConfig(**config_kwargs))
    state = fresh.state_dict()
    if "lm_head.decoder.bias" in state and "lm_head.decoder.bias" not in theirs.state_dict():
        del state["lm_head.decoder.bias"]  # transformers 5.0 to ~5.20: its LM head has no decoder bias
    theirs.load_state_dict(state, strict=True)
    assert list(theirs.state_dict()) == list(state)
    for name, tensor in state.items():
        assert torch.equal(theirs.state_dict()[name], tensor), name


@pytest.mark.parametrize("dropped", ["lm_head.bias", "lm_head.decoder.bias"])
def test_load_state_dict_takes_either_lm_head_bias_name(dropped):
    """State dicts of transformers 5.0 to ~5.20 have no lm_head.decoder.bias, and a checkpoint may
    carry only that one: both load strictly, the other name filled, the caller's dict untouched."""
    source = lm(hash_seed=4)
    with torch.no_grad():
        source.lm_head.decoder.bias.normal_()
        source.lm_head.bias.copy_(source.lm_head.decoder.bias)
    state = {k: v for k, v in source.state_dict().items() if k != dropped}
    keys = list(state)
    target = lm(hash_seed=4)
    target.load_state_dict(state, strict=True)
    assert list(state) == keys
    assert torch.equal(target.lm_head.decoder.bias, source.lm_head.decoder.bias)
    assert torch.equal(target.lm_head.bias, source.lm_head.bias)
    with pytest.raises(RuntimeError, match="Missing key"):
        target.load_state_dict({k: v for k, v in state.items() if "lm_head" not in k or k.endswith("weight")})


def test_position_ids_and_inputs_embeds_with_auto_padding():
    """transformers crashes on position_ids with auto-padding; ours pads them too."""
    model = lm(hash_seed=2).eval()
    ids = torch.randint(0, 50, (2, 21))
    expected = quiet(model, input_ids=ids).logits
    assert relative_error(quiet(model, input_ids=ids, position_ids=torch.arange(21)).logits, expected) < 1e-6
    embeds = model.reformer.embeddings.word_embeddings(ids)
    assert relative_error(quiet(model, inputs_embeds=embeds).logits, expected) < 1e-6
    shifted = quiet(model, input_ids=ids, position_ids=torch.arange(5, 26).expand(2, 21)).logits
    assert shifted.shape == expected.shape and not torch.allclose(shifted, expected)


def test_attentions_in_training_are_collected_once_and_leave_gradients_alone():
    model = lm(hash_seed=2, attn_layers=["lsh", "local", "lsh"]).train()
    ids = torch.randint(0, 50, (2, 32))

    def grads(output_attentions):
        model.zero_grad()
        out = quiet(model, input_ids=ids, labels=ids, output_attentions=output_attentions)
        out.loss.backward()
        return out, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    with_probs, grads_with = grads(True)
    _, grads_without = grads(False)
    assert len(with_probs.attentions) == 3
    assert with_probs.attentions[0].shape == (2, 2, 2 * 32 // 8, 8, 16)  # (B, H, n_hashes * L / chunk, chunk, window)
    assert torch.allclose(with_probs.attentions[1].sum(-1), torch.ones(()))
    for name, grad in grads_without.items():
        assert relative_error(grads_with[name], grad) < 1e-6, name


def test_embedding_dropout_is_the_philox_stream_of_positions_then_tokens():
    """Train mode: position encodings and token embeddings each get their own dropout, drawn as
    functional.dropout draws it (a Philox key per call from the default generator: the positions'
    first, then the tokens', whose dropout is fused with the sum)."""
    p = 0.25
    embeddings = lm(hidden_dropout_prob=p).train().reformer.embeddings
    ids, positions = torch.randint(0, 50, (2, 24)), torch.arange(24).expand(2, 24)
    state = torch.get_rng_state()
    out = embeddings(ids, positions, None)
    torch.set_rng_state(state)
    keys = [philox_seed_offset(torch.device("cpu")) for _ in range(2)]
    masks = [reference.dropout_keep((2, 24, 16), p, *key).float() / (1 - p) for key in keys]
    encodings = reference.axial_position_encodings(list(embeddings.position_embeddings.weights), positions)
    expected = encodings * masks[0] + embeddings.word_embeddings(ids) * masks[1]
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_training_draws_no_torch_dropout_mask():
    """A training step with every dropout on (hidden, both attentions) calls no torch mask op in its
    forward or reversible backward: every dropout is a Philox kernel that stores no mask."""
    model = lm(hidden_dropout_prob=0.2, local_attention_probs_dropout_prob=0.1, lsh_attention_probs_dropout_prob=0.1,
               attn_layers=["local", "lsh", "local"]).train()
    ids = torch.randint(0, 50, (2, 24))
    called = set()

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            called.add(func.name())
            return func(*args, **(kwargs or {}))

    with Record():
        quiet(model, input_ids=ids, labels=ids).loss.backward()
    assert "reformer_kernels::dropout_add" in called
    assert not {name for name in called if "bernoulli" in name or "dropout" in name and name.startswith("aten::")}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_final_layer_norm_is_layer_norm_of_the_concatenation_without_building_it(dtype):
    """encoder.final_layer_norm(y1, y2) normalizes CONCAT_ROWS rows of concat(y1, y2) at a time with
    torch's kernel: the output and the streams' gradients are LayerNorm(torch.cat)'s bits (here over
    several blocks, the last one partial, and batch 2); the weight and bias gradients, summed block
    by block, agree to round-off. A forward hook on the LayerNorm makes it take the concatenation
    (and the hook runs)."""
    from reformer_kernels.models.modeling import CONCAT_ROWS

    torch.manual_seed(0)
    encoder = models.ReformerModel(models.ReformerConfig(**dict(DECODER, hidden_size=16))).encoder.to(dtype)
    norm = encoder.layer_norm
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    shape = (2, CONCAT_ROWS + 300, 16)
    y1, y2 = (torch.randn(shape, dtype=dtype, requires_grad=True) for _ in range(2))
    grad_out = torch.randn(2, shape[1], 32, dtype=dtype)
    inputs = [y1, y2, norm.weight, norm.bias]
    expected = norm(torch.cat([y1, y2], dim=-1))
    expected_grads = torch.autograd.grad(expected, inputs, grad_out)
    actual = encoder.final_layer_norm(y1, y2)
    assert actual.grad_fn.name().endswith("_ConcatLayerNormBackward")
    actual_grads = torch.autograd.grad(actual, inputs, grad_out)
    assert torch.equal(actual, expected)
    assert torch.equal(actual_grads[0], expected_grads[0]) and torch.equal(actual_grads[1], expected_grads[1])
    for actual_grad, expected_grad in zip(actual_grads[2:], expected_grads[2:]):
        assert relative_error(actual_grad, expected_grad) < (1e-13 if dtype == torch.float64 else 1e-5)
    calls = []
    norm.register_forward_hook(lambda *args: calls.append(1))
    hooked = encoder.final_layer_norm(y1, y2)
    assert calls == [1] and torch.equal(hooked, expected)
