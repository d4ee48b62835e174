"""A test's worker run in several CPU processes joined by one gloo process group."""
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .hf_reference import TINY


def batch() -> torch.Tensor:
    """Token ids (4, 64): the batch that the distributed tests split by rows over the processes."""
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, TINY["vocab_size"], (4, 64), generator=generator)


def run_processes(worker: Callable[..., None], world_size: int, tmp_path: Path, *args) -> None:
    """``worker(rank, world_size, *args)`` in ``world_size`` spawned processes (each imports the
    worker's module afresh), in a gloo process group; raises if any of them raises. One thread per
    process: they share the machine's cores."""
    mp.spawn(_process, args=(world_size, str(tmp_path / "process_group_init"), worker, args), nprocs=world_size, join=True)


def _process(rank: int, world_size: int, init_file: str, worker: Callable[..., None], args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        worker(rank, world_size, *args)
    finally:
        dist.destroy_process_group()
