"""FSDP2 (``fully_shard`` on each reversible layer, then on the model) over 2 and 4 CPU processes
(gloo) trains with the memory-saving reversible backward: the float64 gradients of a backward, an
SGD step on the sharded parameters and a second backward equal those of one process. So do the
model sharded alone, and each layer's attention and feed-forward sharded on their own.

Without dropout the one process runs the whole batch at once. With dropout every rank draws its own
masks (its own seed), and a mask depends on the shape of the tensor it is drawn for, so no single
draw over the whole batch can equal them: the one process replays each rank instead, rank r's rows
with rank r's seed, and averages the gradients as FSDP does over the ranks.
"""
import os

import pytest
import torch
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from reformer_kernels import models

from .distributed import batch, run_processes
from .hf_reference import TINY, relative_error

# A local and an LSH layer, and a third, all in the memory-saving backward.
LAYERS = ["local", "lsh", "local"]
DROPOUT = dict(hidden_dropout_prob=0.1, lsh_attention_probs_dropout_prob=0.1, local_attention_probs_dropout_prob=0.1)
# name: (what else is sharded before the model, config); with dropout the hash rotations come from
# the global generator as well (no hash_seed), so the backward's replay of both is checked.
CASES = {
    "each layer and the model": ("layers", dict(hash_seed=3)),
    "each layer and the model, dropout": ("layers", dict(DROPOUT, hash_seed=None)),
    "the model only": (None, dict(hash_seed=3)),
    "each attention and feed-forward, and the model": ("sub-layers", dict(hash_seed=3)),
}
STEPS, LR = 2, 0.1


def make_model(config: dict) -> models.ReformerModelWithLMHead:
    torch.manual_seed(0)
    config = models.ReformerConfig(**dict(TINY, attn_layers=LAYERS, is_decoder=True, num_hashes=2, **config))
    return models.ReformerModelWithLMHead(config).double().train()


def seed(step: int, rank: int) -> int:
    return 1000 * step + rank


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
            for name, p in model.named_parameters() if p.grad is not None}


def record_layers_done(encoder: torch.nn.Module, record: list[bool]) -> None:
    """When the backward reaches the layers' input, record whether every layer's parameters are
    sharded again with their gradients reduce-scattered: FSDP frees a layer's gathered parameters
    when its gradients are done, not at the end of the backward (and they are DTensors only if the
    layer was sharded at all)."""
    def done(grad: torch.Tensor) -> None:
        record.append(all(isinstance(p, DTensor) and isinstance(p.grad, DTensor) for p in encoder.layers.parameters()))

    def watch_input(module: torch.nn.Module, args: tuple) -> None:
        args[0].register_hook(done)

    encoder.register_forward_pre_hook(watch_input)


def worker(rank: int, world_size: int, out_dir: str) -> None:
    results = {}
    ids = batch().chunk(world_size)[rank]
    for name, (sharded, config) in CASES.items():
        model = make_model(config)
        layers = model.reformer.encoder.layers
        modules = {"layers": list(layers), "sub-layers": [m for layer in layers for m in (layer.attention, layer.feed_forward)]}
        for module in modules.get(sharded, []):
            fully_shard(module)
        layers_done: list[bool] = []
        if sharded:
            record_layers_done(model.reformer.encoder, layers_done)
        fully_shard(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=LR)
        results[name] = []
        for step in range(STEPS):
            torch.manual_seed(seed(step, rank))
            model(input_ids=ids, labels=ids).loss.backward()
            results[name].append(gradients(model))
            optimizer.step()
            optimizer.zero_grad()
        assert layers_done == ([True] * STEPS if sharded else []), (name, layers_done)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


def one_process(config: dict, world_size: int) -> list[dict[str, torch.Tensor]]:
    model = make_model(config)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    ids = batch()
    results = []
    for step in range(STEPS):
        if config.get("hidden_dropout_prob"):
            for rank, rows in enumerate(ids.chunk(world_size)):
                torch.manual_seed(seed(step, rank))
                (model(input_ids=rows, labels=rows).loss / world_size).backward()
        else:
            model(input_ids=ids, labels=ids).loss.backward()
        results.append(gradients(model))
        optimizer.step()
        optimizer.zero_grad()
    return results


def check_against_one_process(tmp_path, world_size: int) -> None:
    run_processes(worker, world_size, tmp_path, str(tmp_path))
    for name, (_, config) in CASES.items():
        expected = one_process(config, world_size)
        for rank in range(world_size):
            for step, grads in enumerate(torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)[name]):
                assert grads.keys() == expected[step].keys(), (name, rank, step)
                for key, grad in expected[step].items():
                    assert relative_error(grads[key], grad) < 1e-12, (name, rank, step, key)


def test_fsdp_two_processes_train_as_one_process(tmp_path):
    check_against_one_process(tmp_path, 2)


@pytest.mark.slow
def test_fsdp_four_processes_train_as_one_process(tmp_path):
    check_against_one_process(tmp_path, 4)
