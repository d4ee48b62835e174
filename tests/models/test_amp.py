"""A training step under torch.autocast("cpu", dtype=torch.bfloat16): finite loss, no NaN with a
fully padded row, and every gradient within the tolerance rule of the float64 reference (the
baseline: the same step on the reference backend under the same autocast).

The attention ops run in the dtype autocast gives their inputs (bf16 projections), the residual
stream, LayerNorm and the loss's softmax statistics in fp32. The LSH layer sees one chunk (full
attention): with hashing, the rotations are drawn in the inputs' dtype (as transformers draws
them), so bf16 and float64 models would hash with different numbers.
"""
import copy
import warnings

import torch

from reformer_kernels import models, use_backend

from .hf_reference import TINY

CONFIG = dict(TINY, is_decoder=True, attn_layers=["local", "lsh"], lsh_attn_chunk_length=32, hash_seed=0)


def step(model, ids, mask, amp):
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model(input_ids=ids, attention_mask=mask, labels=ids)
    out.loss.backward()
    return out.loss, {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def test_bf16_autocast_training_step_matches_float64():
    torch.manual_seed(0)
    model = models.ReformerModelWithLMHead(models.ReformerConfig(**CONFIG)).train()
    ids = torch.randint(1, 50, (2, 32))
    mask = torch.ones(2, 32, dtype=torch.long)
    mask[0, :5] = 0  # left padding: with the causal mask the first queries see no key
    mask[1] = 0  # a fully padded row
    loss, grads = step(model, ids, mask, amp=True)
    with use_backend("reference"):
        baseline_loss, baseline = step(model, ids, mask, amp=True)
        loss64, grads64 = step(copy.deepcopy(model).double(), ids, mask, amp=False)
    assert torch.isfinite(loss)
    assert abs(loss.item() - loss64.item()) <= 2 * abs(baseline_loss.item() - loss64.item()) + 1e-3 * abs(loss64.item())
    assert grads.keys() == grads64.keys()
    for name, grad in grads.items():
        assert grad.dtype == torch.float32 and torch.isfinite(grad).all(), name
        error = (grad.double() - grads64[name]).abs().max().item()
        allowed = 2 * (baseline[name].double() - grads64[name]).abs().max().item() + 1e-3 * grads64[name].abs().max().item()
        assert error <= allowed, f"{name}: {error:.2e} > {allowed:.2e}"
