"""Helpers that every Triton kernel family of the ops shares: the autotune list, the dtypes the
kernels take, the padded head dim and the precision of fp32 dots. Imports triton, so only the
Triton kernel modules import it (they load when ``backends`` first needs a Triton kernel)."""
from typing import Callable

import torch
import triton

from .. import backends


def warp_configs() -> list[triton.Config]:
    """The autotune list: 4 or 8 warps, 2 stages.

    Only warps and stages are tuned; the tiles follow the shapes (here the chunk length), so the
    grid and the order in which blocks are summed are fixed. The winner is cached per key, so repeated
    calls give identical bits. The interpreter runs one config (several fail there).
    The rule for spills: where one of these configs spills registers to local memory and the other
    does not, for the same autotune key (the tile, the flags, the dtypes) on the same arch, the
    kernel's autotuner drops the spilling one (``prune_spilling_warps``): a spill is local-memory
    traffic that one timing run may not show, and with it gone every launched variant is held to
    no spills. tests/ops/test_triton_compile.py bounds the spills of the configs that survive and
    fails when a dropped one no longer spills (then its rule goes)."""
    if backends.triton_interpreted():
        return [triton.Config({}, num_warps=1)]
    return [triton.Config({}, num_warps=4, num_stages=2), triton.Config({}, num_warps=8, num_stages=2)]


def prune_spilling_warps(spilling_warps: dict[tuple, int], key: Callable[[dict], tuple]) -> dict:
    """``prune_configs_by`` of an autotuner over ``warp_configs()``: a launch drops the config with
    num_warps = ``spilling_warps[(arch, *key(arguments))]`` where there is one; ``arguments`` are
    the launch's named arguments and constexprs, arch is the compute capability of its tensors'
    device as an int (sm_90: 90). Runs on the host, once per autotune key; no tensor is read."""

    def early_config_prune(configs: list[triton.Config], named_args: dict, **constexprs) -> list[triton.Config]:
        arguments = {**named_args, **constexprs}
        device = next(value.device for value in named_args.values() if isinstance(value, torch.Tensor))
        major, minor = torch.cuda.get_device_capability(device)
        spilling = spilling_warps.get((10 * major + minor, *key(arguments)))
        return [config for config in configs if config.num_warps != spilling]

    return dict(early_config_prune=early_config_prune)


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


def unit_stride_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself where its last dimension is contiguous, as the kernels read rows (any other
    strides: head-split views are read in place); else a contiguous copy."""
    return x if x.stride(-1) == 1 else x.contiguous()


def dot_precision(dtype: torch.dtype) -> str:
    """The ``input_precision`` of the kernels' tl.dot for inputs of ``dtype``, read on the host at
    launch (a Python flag, no sync) and passed as the constexpr DOT_PRECISION: "tf32" when the
    inputs are fp32 and torch lets its own fp32 matmuls use TF32 tensor cores
    (``torch.backends.cuda.matmul.allow_tf32 = True``, ``torch.set_float32_matmul_precision("high")``
    or ``"medium"``, or ``torch.backends.cuda.matmul.fp32_precision = "tf32"``), else "ieee": full
    fp32 products on the FMA units, torch's default. TF32 keeps 10 mantissa bits of each operand
    (a relative rounding error of up to 2^-11 = 4.9e-4 instead of fp32's 2^-24 = 6e-8). fp16/bf16
    inputs always get "ieee", which their tensor-core dots ignore, so that the flag never compiles
    a second 16-bit variant."""
    if dtype != torch.float32:
        return "ieee"
    matmul = torch.backends.cuda.matmul
    try:
        # every API above sets this one; allow_tf32 raises once the old and new APIs are mixed
        tf32 = matmul.fp32_precision == "tf32"
    except AttributeError:  # torch before fp32_precision: only the legacy flag exists
        tf32 = matmul.allow_tf32
    return "tf32" if tf32 else "ieee"
