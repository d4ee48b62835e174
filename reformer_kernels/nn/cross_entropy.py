"""Linear projection to the vocabulary + cross-entropy, without the (tokens x vocab) logits.

The inputs are checked here, once for every backend; the op then runs on the backend chosen by
``reformer_kernels.backends``: the Triton kernel (``ops/linear_cross_entropy/triton_kernels.py``) on CUDA tensors,
the chunked PyTorch one (``ops/linear_cross_entropy``) on CPU tensors and as the reference.
"""
from __future__ import annotations

import torch

from .. import backends
from ..functional import FLOAT_DTYPES, _check_int, checks_values

FN = "linear_cross_entropy"


def _autocast(tensors: tuple, device_type: str) -> tuple:
    """What torch.autocast does to the inputs of F.linear: float tensors other than float64 go to
    the autocast dtype, so that the head runs there on every backend, forward and backward."""
    if not (torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t if t is None or t.dtype not in FLOAT_DTYPES or t.dtype == torch.float64 else t.to(dtype) for t in tensors)


def _check_inputs(hidden, weight, bias, labels):
    """The inputs as the backends get them (cast under autocast), or the error that says what to fix."""
    for name, t in (("hidden", hidden), ("weight", weight), ("labels", labels)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{FN}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(f"{FN}: bias must be a torch.Tensor or None, got {type(bias).__name__}")
    for name, t in (("weight", weight), ("bias", bias), ("labels", labels)):
        if t is not None and t.device != hidden.device:
            raise ValueError(f"{FN}: {name} must be on hidden's device {hidden.device}, got {t.device}; move them to one device")
    hidden, weight, bias = _autocast((hidden, weight, bias), hidden.device.type)
    if hidden.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{FN}: hidden must be float16, bfloat16, float32 or float64, got {hidden.dtype}; convert it with .float()")
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1] or weight.shape[0] < 1:
        raise ValueError(
            f"{FN}: hidden must be (N, D) and weight (V, D) with V >= 1, got {tuple(hidden.shape)} and {tuple(weight.shape)}"
        )
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"{FN}: bias must be (V,) = ({weight.shape[0]},), got {tuple(bias.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != hidden.dtype:
            raise TypeError(
                f"{FN}: {name} is {t.dtype} but hidden is {hidden.dtype}; cast one with .to(hidden.dtype) "
                "or run under torch.autocast"
            )
    if labels.shape != hidden.shape[:1] or labels.dtype != torch.int64:
        raise ValueError(f"{FN}: labels must be int64 of shape ({hidden.shape[0]},), got {labels.dtype} {tuple(labels.shape)}")
    return hidden, weight, bias


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    chunk_size: int = 0,
    ignore_index: int = -100,
    backend: str | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T + bias`` against ``labels`` over the tokens whose
    label is not ``ignore_index``, without materializing the (N, V) logits.

    hidden: (N, D) float16, bfloat16, float32 or float64; weight: (V, D) and bias: (V,) or None,
    same dtype and device (under ``torch.autocast`` all three run in the autocast dtype, as
    ``F.linear`` would); labels: (N,) int64 in [0, V) or ``ignore_index``. ``chunk_size``: tokens
    per tile of the PyTorch path (0: up to 2048; a tile spans as many vocabulary entries as fit in 2^22
    logits); the Triton kernel tiles on its own. ``backend``: see ``reformer_kernels.backends`` (the triton one takes no float64).
    Returns a 0-d tensor, at least fp32 (nan when no label counts, as torch's mean cross-entropy).
    """
    hidden, weight, bias = _check_inputs(hidden, weight, bias, labels)
    _check_int(FN, "chunk_size", chunk_size, 0)
    _check_int(FN, "ignore_index", ignore_index, -(2**63))
    if checks_values(labels):
        counted = labels[labels != ignore_index]
        if counted.numel() and (counted.min() < 0 or counted.max() >= weight.shape[0]):
            raise ValueError(
                f"{FN}: labels span [{counted.min().item()}, {counted.max().item()}] outside [0, vocab_size="
                f"{weight.shape[0]}); use {ignore_index} for tokens without a label"
            )
    _, impl = backends.select("linear_cross_entropy", hidden.device, backend)
    return impl(hidden, weight, bias, labels, chunk_size=chunk_size, ignore_index=ignore_index)
