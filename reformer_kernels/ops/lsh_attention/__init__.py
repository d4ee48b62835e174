"""lsh_attention: shared-QK attention within chunks of the bucket-sorted sequence, combined over
hash rounds (the public function, with its checks, is ``reformer_kernels.functional.lsh_attention``).

One schema, declared in csrc/reformer.cpp:
    lsh_attention_fwd(qk, v, sorted_idx, n_hashes, chunk_len, n_chunks_before, n_chunks_after,
                      causal, attention_mask, dropout_p=0., dropout_seed=0, dropout_offset=0) -> (out, lse)
and its backward lsh_attention_bwd (its own op, so it can be tested and compiled alone). Every
backend implements that argument list:
- "cpu": the C++ kernels of csrc/cpu/lsh_attention.cpp, which are that op;
- "triton": ``triton_kernels.py``, the ops reformer_kernels::triton_lsh_attention_fwd/_bwd, which
  take the same arguments (a test compares the schemas);
- "reference": ``reference.lsh_attention``, keyword arguments of the same names.
This module holds what the compiled ops share: the fake impls and the autograd formula,
registered once per op by ``register``. The kernels return lse in float32 (float64 for float64
inputs) because the backward recomputes the probabilities from it; ``functional`` casts it to
the input dtype where it hands lse to users.
"""
import torch

from ... import _extension, backends, reference


def lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def rows_like(x: torch.Tensor) -> torch.Tensor:
    """An empty tensor laid out as the kernels write their outputs and gradients: like ``x`` where
    its rows (head_dim) are contiguous, so that a head-split projection stays one and merges back
    into (B, L, H * d) as a view; else contiguous."""
    out = torch.empty_like(x)
    return out if out.stride(-1) == 1 else torch.empty_like(x, memory_format=torch.contiguous_format)


def _forward_fake(qk, v, sorted_idx, n_hashes, chunk_len, n_chunks_before, n_chunks_after, causal, attention_mask,
                  dropout_p=0.0, dropout_seed=0, dropout_offset=0):
    batch, heads, seq_len, _ = qk.shape
    return rows_like(qk), qk.new_empty((batch, heads, n_hashes, seq_len), dtype=lse_dtype(qk.dtype))


def _backward_fake(grad_out, grad_lse, qk, v, sorted_idx, out, lse, n_hashes, chunk_len, n_chunks_before,
                   n_chunks_after, causal, attention_mask, dropout_p=0.0, dropout_seed=0, dropout_offset=0):
    return rows_like(qk), rows_like(v)


def _setup_context(ctx, inputs, output):
    (qk, v, sorted_idx, n_hashes, chunk_len, n_chunks_before, n_chunks_after, causal, attention_mask, *dropout) = inputs
    out, lse = output
    ctx.save_for_backward(qk, v, sorted_idx, out, lse, attention_mask)
    ctx.config = (n_hashes, chunk_len, n_chunks_before, n_chunks_after, causal)
    # (dropout_p, dropout_seed, dropout_offset): ints, not a mask; the backward regenerates it
    ctx.dropout = dropout
    ctx.set_materialize_grads(False)


def register(forward, backward) -> None:
    """Give ``forward`` (an op of the lsh_attention_fwd schema) and ``backward`` (of the
    lsh_attention_bwd schema) their fake impls, and make ``forward`` differentiable through
    ``backward``. A gradient nobody asked for arrives as None: grad_out becomes zeros, grad_lse
    stays None (the kernels read it as zero)."""
    torch.library.register_fake(forward, _forward_fake)
    torch.library.register_fake(backward, _backward_fake)

    def _backward(ctx, grad_out, grad_lse):
        qk, v, sorted_idx, out, lse, attention_mask = ctx.saved_tensors
        grad_out = torch.zeros_like(out) if grad_out is None else grad_out.to(out.dtype)
        grad_qk, grad_v = backward(grad_out, grad_lse, qk, v, sorted_idx, out, lse, *ctx.config, attention_mask,
                                   *ctx.dropout)
        return grad_qk, grad_v, None, None, None, None, None, None, None, None, None, None

    torch.library.register_autograd(forward, _backward, setup_context=_setup_context)


backends.register("lsh_attention", "reference", reference.lsh_attention)
if _extension.loaded():
    register(torch.ops.reformer_kernels.lsh_attention_fwd.default, torch.ops.reformer_kernels.lsh_attention_bwd.default)
    backends.register("lsh_attention", "cpu", torch.ops.reformer_kernels.lsh_attention_fwd)
