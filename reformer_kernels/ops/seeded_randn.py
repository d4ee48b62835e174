"""seeded_randn: the random rotations of an LSH layer that has a hash_seed."""
import torch


@torch.library.custom_op("reformer_kernels::seeded_randn", mutates_args=())
def seeded_randn(shape: list[int], seed: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.manual_seed(seed); torch.randn(shape)`` without touching the global generator: the
    rotations of a layer with a hash_seed. An op rather than Python, because torch.compile cannot
    create a torch.Generator inside a graph."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=dtype, device=device)


@seeded_randn.register_fake
def _seeded_randn_fake(shape, seed, dtype, device):
    return torch.empty(shape, dtype=dtype, device=device)
