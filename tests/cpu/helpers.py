"""Inputs shared by the CPU kernel tests: random (B, H, L, d) tensors, padding masks, and the
sorted_idx that the reference hash + sort gives them."""
import torch

from reformer_kernels import backends, reference

from ..marks import requires_extension


def padding_mask(batch: int, seq_len: int, kind: str | None) -> torch.Tensor | None:
    """None, or a (B, L) bool mask with random padding; "fully_padded" also pads all of batch 0."""
    if kind is None:
        return None
    mask = torch.rand(batch, seq_len) > 0.3
    if kind == "fully_padded":
        mask[0] = False
    return mask


def lsh_inputs(batch, heads, seq_len, head_dim, n_hashes, mask_kind=None, n_buckets=4):
    """float64 qk, v, attention_mask and the sorted_idx of hashing qk with random rotations."""
    qk = torch.randn(batch, heads, seq_len, head_dim, dtype=torch.float64)
    v = torch.randn(batch, heads, seq_len, head_dim, dtype=torch.float64)
    attention_mask = padding_mask(batch, seq_len, mask_kind)
    rotations = torch.randn(heads, head_dim, n_hashes, n_buckets // 2, dtype=torch.float64)
    buckets, num_keys = reference.hash_vectors(qk, rotations, n_buckets, attention_mask)
    sorted_idx, _ = reference.sort_buckets(buckets, num_keys)
    return qk, v, sorted_idx, attention_mask


def outputs_and_grads(fn, inputs, upstream):
    """Runs ``fn(*inputs)`` (a tensor or tuple of tensors) with gradients on ``inputs`` and returns
    the outputs followed by the gradients of sum(output * upstream)."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    outputs = fn(*leaves)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    loss = sum((o * u.to(o.dtype)).sum() for o, u in zip(outputs, upstream))
    grads = torch.autograd.grad(loss, leaves)
    return [o.detach() for o in outputs] + [g.detach() for g in grads]


def lsh_attention_cpu(*args, **kwargs):
    """The C++ op reformer_kernels::lsh_attention_fwd: (out, lse)."""
    return torch.ops.reformer_kernels.lsh_attention_fwd(*args, **kwargs)


def local_attention_cpu(*args, **kwargs):
    """The "cpu" backend impl of local_attention (reformer_kernels::local_attention_fwd's out)."""
    return backends.select("local_attention", torch.device("cpu"), "cpu")[1](*args, **kwargs)


def lsh_hash_cpu(*args, **kwargs):
    """The "cpu" backend impl of lsh_hash: (buckets, num_keys)."""
    return backends.select("lsh_hash", torch.device("cpu"), "cpu")[1](*args, **kwargs)
