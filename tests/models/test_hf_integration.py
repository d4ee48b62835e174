"""patch_hf_reformer and from_hf: transformers' Reformer running on our ops, and converted to ours."""
import warnings

import pytest
import torch

from reformer_kernels.integrations.hf import from_hf, patch_hf_reformer

from .hf_reference import TINY, relative_error, transformers

CONFIG = dict(TINY, attn_layers=["local", "lsh"], is_decoder=True, num_hashes=2)


def hf_lm(**overrides):
    return transformers.ReformerModelWithLMHead(transformers.ReformerConfig(**{**CONFIG, **overrides}))


def logits_and_grads(model, ids, seed):
    """transformers' reversible backward runs only in training mode."""
    model.zero_grad()
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model(input_ids=ids, labels=ids)
    if model.training:
        out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.usefixtures("reference_backend")
def test_patched_model_matches_the_original_in_eval_and_training():
    """The patch must change nothing but the code that runs."""
    original = hf_lm(hash_seed=6)
    patched = hf_lm(hash_seed=6)
    patched.load_state_dict(original.state_dict())
    keys = list(patched.state_dict())
    assert patch_hf_reformer(patched) is patched
    patch_hf_reformer(patched)
    assert list(patched.state_dict()) == keys
    ids = torch.randint(0, 50, (2, 128))
    for training in (False, True):
        original.train(training), patched.train(training)
        expected_logits, expected_grads = logits_and_grads(original, ids, seed=2)
        actual_logits, actual_grads = logits_and_grads(patched, ids, seed=2)
        assert relative_error(actual_logits, expected_logits) < 1e-5
        assert expected_grads.keys() == actual_grads.keys()
        for name, grad in expected_grads.items():
            assert relative_error(actual_grads[name], grad) < 1e-4, name


def test_patched_model_falls_back_for_attention_probabilities():
    model = patch_hf_reformer(hf_lm(hash_seed=1)).eval()
    out = model(input_ids=torch.randint(0, 50, (1, 32)), output_attentions=True)
    assert len(out.attentions) == 2 and out.attentions[0].numel() > 0


def test_from_hf_converts_weights_and_config():
    theirs = hf_lm(hash_seed=3).eval()
    ours = from_hf(theirs).eval()
    ids = torch.randint(0, 50, (1, 40))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert relative_error(ours(input_ids=ids).logits, theirs(input_ids=ids).logits) < 1e-5


def test_rejects_other_models():
    with pytest.raises(TypeError, match="Reformer"):
        patch_hf_reformer(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="Reformer"):
        from_hf(torch.nn.Linear(2, 2))
