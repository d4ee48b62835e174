"""dropout_add: residual ± dropout(x), the residual connection of a reversible half and, with a
minus, its inverse (the public function, with its checks, is
``reformer_kernels.functional.dropout_add``).

Every backend impl takes (residual, x, p, training=True, subtract=False, generator=None). The
"cpu" and "reference" impl is the PyTorch composition below, whose autograd stores the mask; the
"triton" one (``triton_kernels.py``) is one fused kernel that stores none and regenerates it from
a saved Philox seed and offset.
"""
import torch

from ... import backends, reference


def dropout_keep_mask(shape: tuple[int, ...], dropout_p: float, like: torch.Tensor,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Keep-mask scaled by 1 / (1 - p) (p = 1: all zeros), drawn from ``generator`` or the default
    torch generator as torch's dropout draws it."""
    keep = torch.empty(shape, dtype=like.dtype, device=like.device).bernoulli_(1.0 - dropout_p, generator=generator)
    return keep if dropout_p == 1.0 else keep / (1.0 - dropout_p)


def dropout_add_composed(residual, x, p, training=True, subtract=False, generator=None):
    """residual ± x * mask with the mask torch's dropout would draw from the same generator state."""
    mask = dropout_keep_mask(x.shape, p, x, generator) if training and p > 0.0 else None
    return reference.dropout_add(residual, x, mask, subtract=subtract)


# CPU tensors run the composition too: dropout_add has no C++ kernel.
backends.register("dropout_add", "reference", dropout_add_composed)
backends.register("dropout_add", "cpu", dropout_add_composed)
