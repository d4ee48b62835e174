"""transformers' PreTrainedModel conventions on our models, each checked on transformers' class
beside ours with the same weights where transformers has it: from_pretrained's keywords, outputs
as mappings and tuples, logits with labels, embeddings and resizing, generate without a prompt."""
import copy
import inspect
import json
import pickle
import warnings

import pytest
import torch
import torch.utils._pytree as pytree

from reformer_kernels import models, use_backend

from .hf_reference import TINY, model_pair, relative_error, transformers

pytestmark = pytest.mark.usefixtures("reference_backend")

DECODER = dict(TINY, attn_layers=["local", "lsh"], is_decoder=True, hash_seed=5)
ENCODER = dict(TINY, attn_layers=["local", "lsh"], hash_seed=5)
CLASSES = {
    "ReformerModel": ENCODER,
    "ReformerModelWithLMHead": DECODER,
    "ReformerForMaskedLM": ENCODER,
    "ReformerForSequenceClassification": ENCODER,
    "ReformerForQuestionAnswering": ENCODER,
}


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def both(class_name, tmp_path, **config_overrides):
    """A checkpoint written by our save_pretrained, and the classes (theirs, ours) to load it."""
    _, ours = model_pair(dict(CLASSES[class_name], **config_overrides), class_name)
    ours.save_pretrained(tmp_path)
    return getattr(transformers, class_name), getattr(models, class_name)


def no_cache(model):
    """transformers' use_cache defaults to config.use_cache (True: eval outputs carry a cache); ours to False."""
    return {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}


def inputs_with_labels(class_name):
    ids = torch.randint(0, 50, (2, 16))
    if class_name == "ReformerForSequenceClassification":
        return dict(input_ids=ids, labels=torch.tensor([0, 1]))
    if class_name == "ReformerForQuestionAnswering":
        return dict(input_ids=ids, start_positions=torch.tensor([1, 5]), end_positions=torch.tensor([3, 9]))
    if class_name == "ReformerModel":
        return dict(input_ids=ids)
    return dict(input_ids=ids, labels=ids)


def test_from_pretrained_num_labels_resizes_the_head_or_names_the_mismatch(tmp_path):
    theirs_cls, ours_cls = both("ReformerForSequenceClassification", tmp_path)
    loaded = {}
    loaded["theirs"] = quiet(theirs_cls.from_pretrained, tmp_path, num_labels=5, ignore_mismatched_sizes=True,
                             output_loading_info=True)
    with pytest.warns(UserWarning, match=r"classifier.out_proj.weight \(checkpoint \(2, 16\), model \(5, 16\)\)"):
        loaded["ours"] = ours_cls.from_pretrained(tmp_path, num_labels=5, ignore_mismatched_sizes=True, output_loading_info=True)
    for model, info in loaded.values():
        assert model.config.num_labels == 5 and len(model.config.id2label) == len(model.config.label2id) == 5
        assert model.classifier.out_proj.weight.shape == (5, 16)
    assert loaded["ours"][1]["mismatched_keys"] == loaded["theirs"][1]["mismatched_keys"] == {
        ("classifier.out_proj.weight", torch.Size([2, 16]), torch.Size([5, 16])),
        ("classifier.out_proj.bias", torch.Size([2]), torch.Size([5])),
    }
    with pytest.raises(RuntimeError):
        quiet(theirs_cls.from_pretrained, tmp_path, num_labels=5)
    with pytest.raises(ValueError, match=r"classifier.out_proj.weight' is stored as torch.float32 \(2, 16\) but the model "
                                         r"expects torch.float32 \(5, 16\).*ignore_mismatched_sizes=True"):
        ours_cls.from_pretrained(tmp_path, num_labels=5)


def test_config_num_labels_setter_resizes_the_labels():
    ours, theirs = models.ReformerConfig(**TINY), transformers.ReformerConfig(**TINY)
    for config in (ours, theirs):
        config.num_labels = 3
    assert ours.id2label == theirs.id2label and ours.label2id == theirs.label2id and ours.num_labels == 3
    ours.id2label = {0: "no", 1: "yes"}
    ours.num_labels = 2
    assert ours.id2label == {0: "no", 1: "yes"}  # the same number keeps the names, as transformers
    with pytest.raises(ValueError, match="num_labels must be a positive int, got 0"):
        ours.num_labels = 0


def test_local_only_config_takes_none_for_the_lsh_fields():
    fields = dict(TINY, attn_layers=["local"], lsh_attn_chunk_length=None, lsh_num_chunks_before=None,
                  lsh_num_chunks_after=None, lsh_attention_probs_dropout_prob=None)
    for config in (transformers.ReformerConfig(**fields), models.ReformerConfig(**fields)):
        assert config.lsh_attn_chunk_length is None


@pytest.mark.parametrize("dtype, expected", [
    (torch.float64, torch.float64), ("float16", torch.float16), ("auto", torch.float64), (None, torch.float64),
])
@pytest.mark.parametrize("keyword", ["dtype", "torch_dtype"])
def test_from_pretrained_dtype(tmp_path, dtype, expected, keyword):
    _, ours = model_pair(DECODER, "ReformerModelWithLMHead")
    ours.double().save_pretrained(tmp_path)  # the config records float64: "auto" (the default) restores it
    kwargs = {} if dtype is None else {keyword: dtype}
    for cls in (transformers.ReformerModelWithLMHead, models.ReformerModelWithLMHead):
        model = quiet(cls.from_pretrained, tmp_path, **kwargs)
        assert model.get_output_embeddings().weight.dtype == expected, cls
        assert model.dtype == expected and str(model.config.dtype).removeprefix("torch.") == str(expected)[6:]
    assert {p.dtype for p in model.parameters()} == {expected}  # ours: every parameter


def test_from_pretrained_auto_dtype_without_a_saved_dtype_reads_the_weights(tmp_path):
    _, ours = model_pair(DECODER, "ReformerModelWithLMHead")
    ours.half().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["dtype"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    for cls in (transformers.ReformerModelWithLMHead, models.ReformerModelWithLMHead):
        assert quiet(cls.from_pretrained, tmp_path).dtype == torch.float16


def test_from_pretrained_keywords(tmp_path):
    theirs_cls, ours_cls = both("ReformerModelWithLMHead", tmp_path)
    saved = (tmp_path / "config.json").read_text()
    for cls in (theirs_cls, ours_cls):
        with pytest.raises(TypeError, match="unexpected keyword argument.*'hash_sed'"):
            quiet(cls.from_pretrained, tmp_path, hash_sed=3)
        model = quiet(cls.from_pretrained, tmp_path, hash_seed=3, local_files_only=True, cache_dir=str(tmp_path / "c"),
                      revision="main", trust_remote_code=False, low_cpu_mem_usage=True, token=None, device_map="cpu")
        assert model.config.hash_seed == 3 and not model.training
        assert model.config.name_or_path == str(tmp_path)
    assert (tmp_path / "config.json").read_text() == saved
    for kwargs, match in [
        (dict(revision="v2"), "revision='v2' selects a Hub commit"),
        (dict(device_map="auto"), "device_map='auto' is not one device"),
        (dict(weights_only=False), "weights_only=False"),
        (dict(dtype="int8"), "dtype='int8' is not a float dtype"),
        (dict(dtype=torch.float16, torch_dtype=torch.float32), "disagree"),
    ]:
        with pytest.raises(ValueError, match=match):
            ours_cls.from_pretrained(tmp_path, **kwargs)
    assert ours_cls.from_pretrained(tmp_path, dtype="float16", torch_dtype=torch.float16).dtype == torch.float16
    with pytest.raises(TypeError, match="with config= given"):
        ours_cls.from_pretrained(tmp_path, config=models.ReformerConfig(**DECODER), hash_seed=1)
    assert ours_cls.from_pretrained(tmp_path, config=models.ReformerConfig(**dict(DECODER, hash_seed=9))).config.hash_seed == 9
    for cls in (theirs_cls, ours_cls):
        with pytest.raises(OSError, match="nowhere"):
            quiet(cls.from_pretrained, tmp_path / "nowhere")


def test_from_pretrained_subfolder_state_dict_and_use_safetensors(tmp_path):
    _, ours = model_pair(DECODER, "ReformerModelWithLMHead")
    ours.save_pretrained(tmp_path / "sub")
    for cls in (transformers.ReformerModelWithLMHead, models.ReformerModelWithLMHead):
        model = quiet(cls.from_pretrained, tmp_path, subfolder="sub")
        assert torch.equal(model.lm_head.decoder.weight, ours.lm_head.decoder.weight)
    state = {k: torch.zeros_like(v) for k, v in ours.state_dict().items()}
    loaded = models.ReformerModelWithLMHead.from_pretrained(tmp_path / "sub", state_dict=state)
    assert not loaded.lm_head.decoder.weight.any()
    with pytest.raises(ValueError, match="expected pytorch_model.bin"):
        models.ReformerModelWithLMHead.from_pretrained(tmp_path / "sub", use_safetensors=False)


def test_lm_checkpoint_fine_tunes_into_a_classifier(tmp_path):
    _, lm = model_pair(dict(DECODER, is_decoder=False), "ReformerForMaskedLM")
    lm.save_pretrained(tmp_path)
    infos = {}
    for cls in (transformers.ReformerForSequenceClassification, models.ReformerForSequenceClassification):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model, infos[cls] = cls.from_pretrained(tmp_path, num_labels=3, output_loading_info=True)
        assert torch.equal(model.reformer.embeddings.word_embeddings.weight, lm.reformer.embeddings.word_embeddings.weight)
        assert model.classifier.out_proj.weight.shape == (3, 16)
    ours, theirs = infos[models.ReformerForSequenceClassification], infos[transformers.ReformerForSequenceClassification]
    assert ours["unexpected_keys"] == {"lm_head.bias", "lm_head.decoder.weight", "lm_head.decoder.bias"}
    assert ours["unexpected_keys"] <= theirs["unexpected_keys"] | {"lm_head.decoder.bias"}
    assert ours["missing_keys"] == theirs["missing_keys"] == {f"classifier.{n}" for n in
                                                               ("dense.weight", "dense.bias", "out_proj.weight", "out_proj.bias")}
    assert any("were not used" in str(w.message) for w in caught)
    # The base model from the same checkpoint: the head's keys are dropped the same way.
    _, theirs = quiet(transformers.ReformerModel.from_pretrained, tmp_path, output_loading_info=True)
    with pytest.warns(UserWarning, match="lm_head.decoder.weight.*were not used"):
        _, ours = models.ReformerModel.from_pretrained(tmp_path, output_loading_info=True)
    assert ours["unexpected_keys"] == {"lm_head.bias", "lm_head.decoder.weight", "lm_head.decoder.bias"}
    assert ours["unexpected_keys"] <= theirs["unexpected_keys"] | {"lm_head.decoder.bias"}
    assert not ours["missing_keys"] and not theirs["missing_keys"]


@pytest.mark.parametrize("class_name", ["ReformerModelWithLMHead", "ReformerForMaskedLM"])
def test_lm_logits_with_labels_in_eval_and_when_asked(class_name):
    theirs, ours = model_pair(CLASSES[class_name], class_name)
    inputs = inputs_with_labels(class_name)
    expected = quiet(theirs.eval(), **inputs)
    out = ours.eval()(**inputs)
    loss, logits = out[:2]
    assert relative_error(loss, expected.loss) < 1e-5 and relative_error(logits, expected.logits) < 1e-5
    ours.train()
    assert ours(**inputs).logits is None  # the training default: the loss without the (tokens x vocab) logits
    assert relative_error(ours(**inputs, return_logits=True).logits, expected.logits) < 1e-5
    assert ours.eval()(**inputs, return_logits=False).logits is None


@pytest.mark.parametrize("class_name", sorted(CLASSES))
def test_return_dict_false_gives_transformers_tuples(class_name):
    theirs, ours = model_pair(CLASSES[class_name], class_name)
    theirs.eval(), ours.eval()
    inputs = inputs_with_labels(class_name)
    expected, actual = quiet(theirs, **inputs, **no_cache(theirs), return_dict=False), ours(**inputs, return_dict=False)
    assert type(actual) is tuple and len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert relative_error(a, e) < 1e-5
    ours.config.return_dict = False
    assert ours.config.use_return_dict is False and type(ours(**inputs)) is tuple
    assert isinstance(ours(**inputs, return_dict=True), models.outputs.ModelOutput)


@pytest.mark.parametrize("class_name", ["ReformerModelWithLMHead", "ReformerForQuestionAnswering"])
def test_outputs_are_mappings_over_the_fields_set(class_name):
    theirs, ours = model_pair(CLASSES[class_name], class_name)
    theirs.eval(), ours.eval()
    inputs = inputs_with_labels(class_name)
    expected = quiet(theirs, **inputs, **no_cache(theirs), output_hidden_states=True)
    actual = ours(**inputs, output_hidden_states=True)
    assert list(actual.keys()) == list(expected.keys()) and len(actual) == len(expected)
    assert isinstance(actual, dict) and dict(actual).keys() == dict(expected).keys()
    assert [k for k, _ in actual.items()] == list(actual) == list(expected)
    assert all(a is b for a, b in zip(actual.values(), actual.to_tuple()))
    assert actual[0] is actual["loss"] is actual.get("loss") and actual[1:] == actual.to_tuple()[1:]
    assert ("attentions" in actual) == ("attentions" in expected) == False  # noqa: E712
    assert actual.get("attentions", 7) == expected.get("attentions", 7) == 7
    with pytest.raises(KeyError):
        actual["attentions"]
    # A pytree node as transformers' (DDP's static_graph finds the tensors inside), and copyable.
    assert len(pytree.tree_leaves(actual)) == len(pytree.tree_leaves(expected))
    with torch.no_grad():  # autograd refuses to copy tensors that are not graph leaves
        plain = ours(**inputs)
    assert list(copy.deepcopy(plain)) == list(pickle.loads(pickle.dumps(plain))) == list(plain)
    actual.attentions = (torch.zeros(1),)  # setting a field adds it, in field order
    assert list(actual)[-1] == "attentions" and len(actual) == len(expected) + 1
    for edit in (lambda o: o.pop("loss"), lambda o: o.update(loss=1), lambda o: o.__delitem__("loss")):
        with pytest.raises(TypeError, match="cannot be edited"):
            edit(actual)


@pytest.mark.parametrize("class_name", sorted(CLASSES))
def test_model_attributes_match_transformers(class_name):
    theirs, ours = model_pair(CLASSES[class_name], class_name)
    assert ours.base_model_prefix == theirs.base_model_prefix and ours.main_input_name == theirs.main_input_name
    assert ours.can_generate() == theirs.can_generate() == (class_name == "ReformerModelWithLMHead")
    assert ours.supports_gradient_checkpointing == theirs.supports_gradient_checkpointing is False
    assert not ours._keys_to_ignore_on_save and not theirs._keys_to_ignore_on_save  # None; set() on their instances
    assert ours.config.keys_to_ignore_at_inference == theirs.config.keys_to_ignore_at_inference
    assert models.ReformerConfig.from_dict(json.loads(ours.config.to_json_string(use_diff=False))) == ours.config
    assert type(ours.base_model).__name__ == type(theirs.base_model).__name__ == "ReformerModel"
    assert ours.num_parameters() == theirs.num_parameters()
    assert ours.num_parameters(exclude_embeddings=True) == theirs.num_parameters(exclude_embeddings=True)
    assert torch.equal(ours.get_input_embeddings().weight, theirs.get_input_embeddings().weight)
    assert (ours.get_output_embeddings() is None) == (theirs.get_output_embeddings() is None)
    new = torch.nn.Embedding(50, 16)
    ours.set_input_embeddings(new)
    assert ours.get_input_embeddings() is new and ours.base_model.embeddings.word_embeddings is new
    config = models.ReformerConfig(**CLASSES[class_name])
    for build in (getattr(models, class_name)._from_config, getattr(models, class_name).from_config):
        model = build(config, dtype=torch.float64)
        assert model.dtype == torch.float64 and model.config.dtype == "float64" and config.dtype is None
    assert getattr(transformers, class_name)._from_config(transformers.ReformerConfig(**CLASSES[class_name]),
                                                          dtype=torch.float64).dtype == torch.float64


@pytest.mark.parametrize("class_name", ["ReformerModelWithLMHead", "ReformerForMaskedLM"])
def test_resize_token_embeddings_as_transformers(class_name):
    theirs, ours = model_pair(CLASSES[class_name], class_name)
    old_words, old_head = ours.get_input_embeddings().weight.clone(), ours.get_output_embeddings().weight.clone()
    for model in (theirs, ours):
        quiet(model.resize_token_embeddings, 60, pad_to_multiple_of=32)
        assert model.config.vocab_size == 64 and model.get_input_embeddings().weight.shape == (64, 16)
        assert model.get_output_embeddings().weight.shape == (64, 32)
    assert torch.equal(ours.get_input_embeddings().weight[:50], old_words)
    assert torch.equal(ours.get_output_embeddings().weight[:50], old_head)
    assert torch.equal(ours.get_input_embeddings().weight[50:], old_words.mean(0).expand(14, 16))  # mean_resizing
    state = ours.state_dict()
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    theirs.load_state_dict(state, strict=True)
    ids = torch.randint(0, 64, (2, 16))
    assert relative_error(ours.eval()(input_ids=ids).logits, quiet(theirs.eval(), input_ids=ids).logits) < 1e-5
    assert ours.resize_token_embeddings() is ours.get_input_embeddings()
    with pytest.raises(ValueError, match="eos_token_id"):
        ours.resize_token_embeddings(ours.config.eos_token_id)
    assert ours.config.vocab_size == ours.base_model.config.vocab_size == 64  # a refused resize changes nothing
    assert ours.get_input_embeddings().weight.shape == (64, 16)


def test_generate_without_a_prompt_starts_from_bos():
    theirs, ours = model_pair(dict(DECODER, bos_token_id=3, eos_token_id=None), "ReformerModelWithLMHead")
    theirs.eval(), ours.eval()
    expected = quiet(theirs.generate, max_new_tokens=5, do_sample=False)
    assert expected[0, 0] == 3 and torch.equal(ours.generate(max_new_tokens=5), expected)
    assert torch.equal(ours.generate(max_length=6), expected)
    ids = torch.randint(0, 50, (2, 4))
    assert torch.equal(ours.generate(input_ids=ids, max_new_tokens=3), ours.generate(ids, 3))
    assert ours.generate(ids, max_length=9).shape == (2, 9)
    ours.config.bos_token_id = theirs.config.bos_token_id = theirs.generation_config.bos_token_id = None
    with pytest.raises(ValueError, match="bos_token_id"):
        quiet(theirs.generate, max_new_tokens=5)
    with pytest.raises(ValueError, match="no prompt and config.bos_token_id is None"):
        ours.generate(max_new_tokens=5)


def test_save_pretrained_keywords(tmp_path):
    _, ours = model_pair(DECODER, "ReformerModelWithLMHead")
    ours.save_pretrained(tmp_path)
    ours.save_pretrained(tmp_path, safe_serialization=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "pytorch_model.bin"]  # no stale safetensors
    assert torch.equal(quiet(transformers.ReformerModelWithLMHead.from_pretrained, tmp_path).lm_head.decoder.weight,
                       ours.lm_head.decoder.weight)
    zeros = {k: torch.zeros_like(v) for k, v in ours.state_dict().items()}
    ours.save_pretrained(tmp_path / "given", state_dict=zeros)
    assert not models.ReformerModelWithLMHead.from_pretrained(tmp_path / "given").lm_head.decoder.weight.any()
    ours.save_pretrained(tmp_path / "other_rank", is_main_process=False)
    assert not (tmp_path / "other_rank").exists()
    with pytest.raises(ValueError, match="gradient checkpointing"):
        ours.gradient_checkpointing_enable()


@pytest.mark.parametrize("class_name", ["ReformerModelWithLMHead", "ReformerForMaskedLM"])
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_float64_logits_match_transformers(class_name, backend):
    """What the README's "Coming from transformers" states: float64 logits within 1e-12 (relative)."""
    theirs, ours = model_pair(dict(CLASSES[class_name], num_hashes=2), class_name)
    theirs.double().eval(), ours.double().eval()
    ids = torch.randint(0, 50, (2, 37))  # not a multiple of the chunk length: padded inside
    with use_backend(backend):
        actual = ours(input_ids=ids).logits
    assert relative_error(actual, quiet(theirs, input_ids=ids, **no_cache(theirs)).logits) < 1e-12
