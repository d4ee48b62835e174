"""DistributedDataParallel over 2 CPU processes (gloo) gives the gradients of one process on the
concatenated batch: the reversible backward returns parameter gradients through autograd, so
DDP's gradient hooks see them."""
import os

import pytest
import torch

from reformer_kernels import models

from .distributed import batch, run_processes
from .hf_reference import TINY, relative_error

CONFIG = dict(TINY, attn_layers=["local", "lsh"], is_decoder=True, num_hashes=2, hash_seed=3)


def make_model():
    torch.manual_seed(0)
    return models.ReformerModelWithLMHead(models.ReformerConfig(**CONFIG)).train()


def worker(rank: int, world_size: int, out_dir: str) -> None:
    model = torch.nn.parallel.DistributedDataParallel(make_model(), find_unused_parameters=True)
    ids = batch().chunk(world_size)[rank]
    model(input_ids=ids, labels=ids).loss.backward()
    grads = {name: p.grad for name, p in model.module.named_parameters() if p.grad is not None}
    torch.save(grads, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process_on_the_whole_batch(tmp_path):
    run_processes(worker, 2, tmp_path, str(tmp_path))
    model = make_model()
    ids = batch()
    model(input_ids=ids, labels=ids).loss.backward()
    expected = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    for rank in range(2):
        grads = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert grads.keys() == expected.keys()
        for name, grad in expected.items():
            assert relative_error(grads[name], grad) < 1e-5, (rank, name)
