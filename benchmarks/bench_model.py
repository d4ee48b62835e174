"""Question 2, model level: training-step tokens/s and peak memory of a causal Reformer LM (local
and LSH layers alternating, axial positions, 2-12 layers): ours (reformer_kernels.models, same
weights as transformers' through the state dict) vs transformers' ReformerModelWithLMHead vs
reformer-pytorch's ReformerLM (its own architecture: LSH in every layer, so a peer, not a twin).

A training step is forward + backward + AdamW step; "fwd" is the loss alone without gradients.

Run alone: ``python -m benchmarks --suite model [--size small|full] [--device cpu|cuda]``.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from . import competitors as c
from . import flops
from .harness import Case, NotAvailable, Prepared

SUITE = "model"
VOCAB = 256  # bytes, as the paper's enwik8 runs


def shape(size: str, device: torch.device) -> dict:
    if size == "tiny":
        return dict(batch=1, heads=2, head_dim=16, seq_len=256, chunk_len=32, n_hashes=2, layers=[2])
    if size == "small":
        return dict(batch=1, heads=2, head_dim=64, seq_len=1024, chunk_len=64, n_hashes=2, layers=[2, 6])
    seq_len = 16384 if device.type == "cuda" else 4096
    return dict(batch=1, heads=4, head_dim=64, seq_len=seq_len, chunk_len=64, n_hashes=2, layers=[2, 6, 12])


def hf_settings(config: dict) -> dict:
    """transformers' ReformerConfig fields of the benchmarked model (also accepted by ours)."""
    return c.lm_settings(config, VOCAB)


def _work(config: dict) -> tuple[float, float]:
    settings = hf_settings(config)
    return flops.reformer_lm(
        config["batch"], config["seq_len"], settings["hidden_size"], config["heads"], config["head_dim"], settings["feed_forward_size"],
        VOCAB, settings["attn_layers"], config["n_hashes"], settings["num_buckets"], config["chunk_len"], 1, 0, config["chunk_len"], 1, 0,
    )


def _input_ids(config: dict, device: torch.device) -> torch.Tensor:
    gen = c.generator_for(config, device)
    return torch.randint(3, VOCAB, (config["batch"], config["seq_len"]), generator=gen, device=device)


def _training(model: torch.nn.Module, loss_fn, config: dict) -> Prepared:
    return c.adamw_training(model, loss_fn, *_work(config))


def _transformers_model(config: dict, device: torch.device):
    model = c.transformers_lm_model(hf_settings(config))
    # The class name matches none of transformers' loss names, so its loss_function logs a warning and
    # falls back to ForCausalLM; naming that loss picks the same one without the log line.
    model.loss_type = "ForCausalLM"
    return model.to(device=device, dtype=config["dtype"])


def transformers_lm(config: dict, device: torch.device) -> Prepared:
    model = _transformers_model(config, device)
    input_ids = _input_ids(config, device)
    return _training(model, lambda: model(input_ids, labels=input_ids).loss, config)


def transformers_patched_lm(config: dict, device: torch.device) -> Prepared:
    """transformers' model with its attention swapped for our ops by patch_hf_reformer: the same
    weights and code as the transformers row but for the attention (tests/models/test_hf_integration.py
    shows it gives the same logits and gradients)."""
    from reformer_kernels.integrations.hf import patch_hf_reformer

    model = patch_hf_reformer(_transformers_model(config, device))
    input_ids = _input_ids(config, device)
    return _training(model, lambda: model(input_ids, labels=input_ids).loss, config)


def ours_lm(config: dict, device: torch.device, backend: str) -> Prepared:
    from reformer_kernels import backends

    try:
        from reformer_kernels.models import ReformerConfig, ReformerModelWithLMHead
    except ImportError as error:
        raise NotAvailable(f"reformer_kernels.models.ReformerModelWithLMHead is not available yet ({error})") from error
    model = ReformerModelWithLMHead(ReformerConfig(**hf_settings(config))).to(device=device, dtype=config["dtype"])
    # The same weights as the transformers row, so both train the same network.
    model.load_state_dict(_transformers_model(config, device).state_dict())
    input_ids = _input_ids(config, device)

    def loss():
        with backends.use_backend(backend):
            return model(input_ids, labels=input_ids).loss

    return _training(model, loss, config)


def reformer_pytorch_lm(config: dict, device: torch.device) -> Prepared:
    reformer_pytorch = c.peer("reformer_pytorch")
    settings = hf_settings(config)
    torch.manual_seed(0)
    model = reformer_pytorch.ReformerLM(
        num_tokens=VOCAB, dim=settings["hidden_size"], depth=config["layers"], max_seq_len=config["seq_len"], heads=config["heads"],
        dim_head=config["head_dim"], bucket_size=config["chunk_len"], n_hashes=config["n_hashes"], ff_chunks=1, causal=True,
        ff_mult=4, axial_position_emb=True, axial_position_shape=tuple(settings["axial_pos_shape"]),
    ).to(device=device, dtype=config["dtype"])
    input_ids = _input_ids(config, device)

    def loss():
        # Next-token loss, as transformers computes it from labels=input_ids.
        logits = model(input_ids)[:, :-1]
        return F.cross_entropy(logits.flatten(0, 1).float(), input_ids[:, 1:].flatten())

    return _training(model, loss, config)


def cases(size: str, device: torch.device) -> list[Case]:
    result = []
    settings = shape(size, device)
    for layers in settings["layers"]:
        # float32 everywhere: training a whole model in half precision needs loss scaling and
        # master weights, which would be measured too.
        config = dict(settings, dtype=torch.float32, layers=layers, causal=True)
        tokens = config["batch"] * config["seq_len"]
        result.append(Case(SUITE, "train_step", "reformer_kernels", "auto", config, functools.partial(ours_lm, config, device, "auto"), tokens))
        result.append(Case(SUITE, "train_step", "transformers", "pytorch", config, functools.partial(transformers_lm, config, device), tokens))
        result.append(Case(SUITE, "train_step", "transformers+patch_hf_reformer", "auto", config,
                           functools.partial(transformers_patched_lm, config, device), tokens))
        result.append(Case(SUITE, "train_step", "reformer-pytorch", "pytorch", config, functools.partial(reformer_pytorch_lm, config, device), tokens))
    return result

