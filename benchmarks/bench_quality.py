"""Question 4, quality: the paper's duplication task. Sequences 0 w 0 w (w random symbols); a
causal LM trained on them can predict the second w only by attending to the first, which LSH
attention finds when the hash puts the matching positions in one bucket. Reported: accuracy on the
second w against the number of hashes used at evaluation, for a model trained with 2 hashes.

"small" trains a tiny model for seconds on a CPU and mostly shows the pipeline runs; "full"
(length 512, a few thousand steps) is the one to read, on a GPU. The task and the model settings
come from reformer_kernels.training, which ``reformer-kernels train --task duplication`` runs.

Run alone: ``python -m benchmarks --suite quality [--size small|full] [--device cpu|cuda]``.
"""
from __future__ import annotations

import functools

import torch

from reformer_kernels import training
from reformer_kernels.models import ReformerConfig, ReformerModelWithLMHead

from . import competitors as c
from .harness import Case, Prepared

SUITE = "quality"
TRAIN_HASHES = 2
EVAL_HASHES = training.EVAL_HASHES


def shape(size: str) -> dict:
    if size == "tiny":
        return dict(batch=8, heads=2, head_dim=16, seq_len=32, chunk_len=8, vocab=16, steps=5)
    if size == "small":
        return dict(batch=16, heads=2, head_dim=32, seq_len=64, chunk_len=8, vocab=32, steps=200)
    return dict(batch=32, heads=4, head_dim=64, seq_len=512, chunk_len=32, vocab=128, steps=3000)


def _settings(config: dict) -> dict:
    return training.model_settings(
        vocab_size=config["vocab"], seq_len=config["seq_len"], heads=config["heads"], head_dim=config["head_dim"],
        chunk_len=config["chunk_len"], attn_layers=["lsh", "lsh"], num_hashes=TRAIN_HASHES,
    )


def _batch(config: dict, gen: torch.Generator) -> torch.Tensor:
    return training.duplication_batch(config["batch"], config["seq_len"], config["vocab"], gen)


def _model(competitor: str, config: dict):
    settings = _settings(config)
    if competitor == "transformers":
        transformers = c.peer("transformers")
        return transformers.ReformerModelWithLMHead(transformers.ReformerConfig(**settings))
    return ReformerModelWithLMHead(ReformerConfig(**settings))


@functools.lru_cache(maxsize=2)
def trained(competitor: str, size: str, device_name: str):
    """A model trained on the task with TRAIN_HASHES hashes (once per competitor and size)."""
    device = torch.device(device_name)
    config = shape(size)
    torch.manual_seed(0)
    model = _model(competitor, config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator(device=device).manual_seed(0)
    model.train()
    for _ in range(config["steps"]):
        tokens = _batch(config, gen)
        loss = model(tokens, labels=tokens).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


def accuracy(competitor: str, size: str, device: torch.device, n_hashes: int) -> Prepared:
    config = shape(size)
    model = trained(competitor, size, str(device))
    gen = torch.Generator(device=device).manual_seed(1)
    # Changing the number of hashes at evaluation, as the paper does (the rotations are redrawn).
    return Prepared(accuracy=training.duplication_accuracy(model, _batch(config, gen), n_hashes))


def cases(size: str, device: torch.device) -> list[Case]:
    config = shape(size)
    result = []
    for competitor, backend in (("reformer_kernels", "auto"), ("transformers", "pytorch")):
        for n_hashes in EVAL_HASHES:
            row_config = dict(dtype=torch.float32, batch=config["batch"], heads=config["heads"], head_dim=config["head_dim"],
                              seq_len=config["seq_len"], n_hashes=n_hashes, chunk_len=config["chunk_len"], causal=True, layers=2)
            result.append(Case(SUITE, "duplication_accuracy", competitor, backend, row_config,
                               functools.partial(accuracy, competitor, size, device, n_hashes), timed=False))
    return result

