"""Helpers that every Triton kernel family of the ops shares: the autotune list, the dtypes the
kernels take and the padded head dim. Imports triton, so only the Triton kernel modules import it
(they load when ``backends`` first needs a Triton kernel)."""
import torch
import triton

from .. import backends


def warp_configs() -> list[triton.Config]:
    # Only warps and stages are tuned; the tiles follow the shapes (here the chunk length), so the
    # grid and the order in which blocks are summed are fixed. The winner is cached per key, so repeated
    # calls give identical bits. The interpreter runs one config (several fail there).
    if backends.triton_interpreted():
        return [triton.Config({}, num_warps=1)]
    return [triton.Config({}, num_warps=4, num_stages=2), triton.Config({}, num_warps=8, num_stages=2)]


def check_dtype(op: str, tensor: torch.Tensor) -> None:
    """The kernels compute in fp32 from fp16, bf16 or fp32 inputs; float64 is the reference's."""
    if tensor.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(
            f"{op}: the triton backend takes float16, bfloat16 or float32, got {tensor.dtype}; "
            "cast with .float() or use backend='cpu' or 'reference' for float64"
        )


def head_block(head_dim: int) -> int:
    """head_dim padded to the next power of two (at least 16, the smallest tl.dot side)."""
    return max(16, triton.next_power_of_2(head_dim))
