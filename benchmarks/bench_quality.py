"""Question 4, quality: the paper's duplication task. Sequences 0 w 0 w (w random symbols); a
causal LM trained on them can predict the second w only by attending to the first, which LSH
attention finds when the hash puts the matching positions in one bucket. Reported: accuracy on the
second w against the number of hashes used at evaluation, for a model trained with 2 hashes.

"small" trains a tiny model for seconds on a CPU and mostly shows the pipeline runs; "full"
(length 512, a few thousand steps) is the one to read, on a GPU.

Run alone: ``python -m benchmarks.bench_quality [--size small|full] [--device cpu|cuda]``.
"""
from __future__ import annotations

import functools
import sys

import torch

from . import competitors as c
from .harness import Case, NotAvailable, Prepared

SUITE = "quality"
TRAIN_HASHES = 2
EVAL_HASHES = (1, 2, 4, 8)


def shape(size: str) -> dict:
    if size == "tiny":
        return dict(batch=8, heads=2, head_dim=16, seq_len=32, chunk_len=8, vocab=16, steps=5)
    if size == "small":
        return dict(batch=16, heads=2, head_dim=32, seq_len=64, chunk_len=8, vocab=32, steps=200)
    return dict(batch=32, heads=4, head_dim=64, seq_len=512, chunk_len=32, vocab=128, steps=3000)


def duplication_batch(config: dict, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """(batch, seq_len) of 0 w 0 w, symbols of w drawn from 1..vocab-1."""
    half = config["seq_len"] // 2
    w = torch.randint(1, config["vocab"], (config["batch"], half - 1), generator=gen, device=device)
    zero = torch.zeros(config["batch"], 1, dtype=torch.long, device=device)
    return torch.cat([zero, w, zero, w], dim=1)


def _settings(config: dict) -> dict:
    hidden = c.hidden_size(config)
    return dict(
        vocab_size=config["vocab"], hidden_size=hidden, num_attention_heads=config["heads"], attention_head_size=config["head_dim"],
        feed_forward_size=2 * hidden, attn_layers=["lsh", "lsh"], num_hashes=TRAIN_HASHES,
        num_buckets=c.config_num_buckets(config), lsh_attn_chunk_length=config["chunk_len"],
        max_position_embeddings=config["seq_len"], axial_pos_embds=False, is_decoder=True, hidden_dropout_prob=0.0,
        lsh_attention_probs_dropout_prob=0.0, pad_token_id=None, eos_token_id=None,
    )


def _model(competitor: str, config: dict):
    settings = _settings(config)
    if competitor == "transformers":
        transformers = c.peer("transformers")
        return transformers.ReformerModelWithLMHead(transformers.ReformerConfig(**settings))
    try:
        from reformer_kernels.models import ReformerConfig, ReformerModelWithLMHead
    except ImportError as error:
        raise NotAvailable(f"reformer_kernels.models.ReformerModelWithLMHead is not available yet ({error})") from error
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
        tokens = duplication_batch(config, gen, device)
        loss = model(tokens, labels=tokens).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


def accuracy(competitor: str, size: str, device: torch.device, n_hashes: int) -> Prepared:
    config = shape(size)
    model = trained(competitor, size, str(device))
    gen = torch.Generator(device=device).manual_seed(1)
    tokens = duplication_batch(config, gen, device)
    half = config["seq_len"] // 2
    with torch.no_grad():
        # Changing the number of hashes at evaluation, as the paper does (the rotations are redrawn).
        model.config.num_hashes = n_hashes
        for module in model.modules():
            if hasattr(module, "num_hashes"):
                module.num_hashes = n_hashes
        logits = model(tokens).logits
    # Position t predicts token t + 1; score the predictions of the second w.
    predicted = logits[:, half:-1].argmax(-1)
    return Prepared(accuracy=(predicted == tokens[:, half + 1 :]).float().mean().item())


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


if __name__ == "__main__":
    from .run import main

    sys.exit(main(["--suite", SUITE, *sys.argv[1:]]))
