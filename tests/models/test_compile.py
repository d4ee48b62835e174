"""torch.compile(model, fullgraph=True) of the LM: no graph breaks, and the forward and backward
of the compiled model give the eager model's loss, logits and gradients (fp32, 1e-5), and the
reference backend's to the kernels' own fp32 distance from it."""
import copy
import warnings

import pytest
import torch

from reformer_kernels import models, use_backend

from .hf_reference import TINY, relative_error

# hash_seed: rotations from the seeded op, the same numbers in eager and compiled graphs (the global
# generator's draws differ under inductor, which has its own random numbers)
CONFIG = dict(TINY, is_decoder=True, num_hashes=2, hash_seed=3)


def loss_logits_grads(model, **inputs):
    model.zero_grad()
    out = model(**inputs, return_logits=True)
    out.loss.backward()
    # the compiled wrapper names its parameters "_orig_mod.<name>"
    grads = {name.removeprefix("_orig_mod."): p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out.loss, out.logits, grads


@pytest.mark.parametrize("attn_layers", [["lsh", "lsh"], ["local", "local"]], ids=["lsh", "local"])
def test_compiled_lm_matches_the_reference(attn_layers):
    torch.manual_seed(0)
    model = models.ReformerModelWithLMHead(models.ReformerConfig(**CONFIG, attn_layers=attn_layers)).train()
    ids = torch.randint(1, 50, (2, 30))  # not a multiple of the chunk: padded inside, with a mask
    mask = torch.ones(2, 30, dtype=torch.long)
    mask[1, :7] = 0
    inputs = dict(input_ids=ids, attention_mask=mask, labels=ids)

    explanation = torch._dynamo.explain(copy.deepcopy(model))(**inputs)
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]

    with use_backend("reference"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = loss_logits_grads(model, **inputs)
    eager = loss_logits_grads(model, **inputs)
    compiled = loss_logits_grads(torch.compile(model, fullgraph=True), **inputs)
    assert compiled[2].keys() == eager[2].keys() == reference[2].keys()
    for what, c, e, r in zip(("loss", "logits"), compiled, eager, reference):
        assert relative_error(c, e) < 1e-5, what
        assert relative_error(c, r) < 1e-5 + 2 * relative_error(e, r), what
    for name, c in compiled[2].items():
        assert relative_error(c, eager[2][name]) < 1e-5, name
        assert relative_error(c, reference[2][name]) < 1e-5 + 2 * relative_error(eager[2][name], reference[2][name]), name


def test_seeded_rotations_op():
    """The op behind hash_seed: torch.manual_seed(seed); torch.randn(shape), the global generator untouched."""
    state = torch.get_rng_state()
    drawn = torch.ops.reformer_kernels.seeded_randn([2, 3, 4], 5, torch.float64, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(5)
    assert torch.equal(drawn, torch.randn(2, 3, 4, dtype=torch.float64))
    torch.library.opcheck(torch.ops.reformer_kernels.seeded_randn.default, ([2, 3, 4], 5, torch.float32, torch.device("cpu")))
