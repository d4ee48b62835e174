"""local_attention: attention within chunks of positions and their neighbour chunks (the public
function, with its checks, is ``reformer_kernels.functional.local_attention``).

One schema, declared in csrc/reformer.cpp:
    local_attention_fwd(q, k, v, chunk_len, n_chunks_before, n_chunks_after, causal,
                        attention_mask, dropout_p=0., dropout_seed=0, dropout_offset=0) -> (out, lse)
and its backward local_attention_bwd. Every backend implements that argument list:
- "cpu": the C++ kernels of csrc/cpu/local_attention.cpp, which are that op;
- "triton": ``triton_kernels.py``, reformer_kernels::triton_local_attention_fwd/_bwd, the same
  arguments (a test compares the schemas);
- "reference": ``reference.local_attention``, keyword arguments of the same names.
The lse (per query, float32; float64 for float64 inputs) exists for the backward and is not
differentiable; the backend impl that ``backends`` runs returns out only (``out_only``), as the
reference does. This module holds the fake impls and the autograd formula, registered once per
op by ``register``.
"""
import torch

from ... import _extension, backends, reference
from ..lsh_attention import lse_dtype, rows_like


def contiguous_like(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _fakes(grads_like):
    """The fake impls of a forward whose out is laid out like q (``rows_like``) and of a backward
    whose gradients are laid out as ``grads_like`` lays out an empty tensor from q, k and v."""

    def forward_fake(q, k, v, chunk_len, n_chunks_before, n_chunks_after, causal, attention_mask, dropout_p=0.0,
                     dropout_seed=0, dropout_offset=0):
        batch, heads, seq_len, _ = q.shape
        return rows_like(q), q.new_empty((batch, heads, seq_len), dtype=lse_dtype(q.dtype))

    def backward_fake(grad_out, q, k, v, out, lse, chunk_len, n_chunks_before, n_chunks_after, causal, attention_mask,
                      dropout_p=0.0, dropout_seed=0, dropout_offset=0):
        return grads_like(q), grads_like(k), grads_like(v)

    return forward_fake, backward_fake


def _setup_context(ctx, inputs, output):
    q, k, v, chunk_len, n_chunks_before, n_chunks_after, causal, attention_mask, *dropout = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, attention_mask)
    ctx.config = (chunk_len, n_chunks_before, n_chunks_after, causal)
    # (dropout_p, dropout_seed, dropout_offset): ints, not a mask; the backward regenerates it
    ctx.dropout = dropout
    ctx.mark_non_differentiable(lse)
    ctx.set_materialize_grads(False)


def register(forward, backward, grads_like) -> None:
    """Give ``forward`` (an op of the local_attention_fwd schema, writing out like q: ``rows_like``)
    and ``backward`` (of the local_attention_bwd schema, writing the gradients as ``grads_like``
    lays them out: the C++ kernels like their inputs, the Triton kernel contiguous) their fake
    impls, and make ``forward`` differentiable through ``backward``."""
    forward_fake, backward_fake = _fakes(grads_like)
    torch.library.register_fake(forward, forward_fake)
    torch.library.register_fake(backward, backward_fake)

    def _backward(ctx, grad_out, grad_lse):
        if grad_out is None:
            return (None,) * 11
        q, k, v, out, lse, attention_mask = ctx.saved_tensors
        grad_q, grad_k, grad_v = backward(grad_out.to(out.dtype), q, k, v, out, lse, *ctx.config, attention_mask,
                                          *ctx.dropout)
        return (grad_q, grad_k, grad_v) + (None,) * 8

    torch.library.register_autograd(forward, _backward, setup_context=_setup_context)


def out_only(forward):
    """The "local_attention" backend impl of a compiled ``forward``: its out, without the lse."""

    def local_attention(*args, **kwargs):
        return forward(*args, **kwargs)[0]

    return local_attention


backends.register("local_attention", "reference", reference.local_attention)
if _extension.loaded():
    register(torch.ops.reformer_kernels.local_attention_fwd.default, torch.ops.reformer_kernels.local_attention_bwd.default,
             grads_like=rows_like)
    backends.register("local_attention", "cpu", out_only(torch.ops.reformer_kernels.local_attention_fwd))
