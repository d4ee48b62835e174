"""Problem sizes per ``--size``: "small" finishes in minutes on a 2-core CPU, "full" is the real
measurement (GPU: up to 64K tokens; CPU: up to 16K), "tiny" checks the harness in seconds."""
from __future__ import annotations

import torch

SIZES = ("tiny", "small", "full")


def dtypes(size: str, device: torch.device) -> list[torch.dtype]:
    # Half precision is what kernels are for on a GPU; CPU kernels compute in float32.
    return [torch.float16] if device.type == "cuda" and size == "full" else [torch.float32]


def lengths(size: str, device: torch.device, suite: str) -> list[int]:
    if size == "tiny":
        return [128, 256]
    if size == "small":
        return [512, 1024, 2048, 4096, 8192] if suite == "scaling" else [1024, 4096]
    if device.type == "cuda":
        return [1024 * 2**i for i in range(7)]
    return [1024 * 2**i for i in range(5)]


def attention_shape(size: str, device: torch.device) -> dict:
    """batch, heads, head_dim, n_hashes, chunk_len shared by the op-level cases."""
    if size == "tiny":
        return dict(batch=1, heads=2, head_dim=16, n_hashes=2, chunk_len=32)
    if size == "small" or device.type != "cuda":
        return dict(batch=1, heads=2, head_dim=64, n_hashes=2, chunk_len=64)
    return dict(batch=1, heads=8, head_dim=64, n_hashes=4, chunk_len=64)
