"""local_attention: the C++ kernels of csrc/cpu/local_attention.cpp behind
reformer_kernels::local_attention_fwd and its backward reformer_kernels::local_attention_bwd.
The forward also returns the per-query lse (float32, float64 for float64 inputs) that the
backward recomputes the probabilities from; it is not differentiable."""
import torch

from .. import _extension, backends


def local_attention_cpu(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    chunk_len: int,
    n_chunks_before: int,
    n_chunks_after: int,
    causal: bool,
    attention_mask: torch.Tensor | None = None,
    dropout_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """The reference signature of ``local_attention``: returns ``out``. ``dropout_mask``, ``dropout_p``:
    the attention probabilities' bool keep-mask (``reference.dropout_mask_shape``) and drop
    probability, as the reference takes them."""
    out, _ = torch.ops.reformer_kernels.local_attention_fwd(
        q, k, v, chunk_len, n_chunks_before, n_chunks_after, causal, attention_mask, dropout_mask, dropout_p
    )
    return out


if _extension.loaded():

    @torch.library.register_fake("reformer_kernels::local_attention_fwd")
    def _forward_fake(
        q, k, v, chunk_len, n_chunks_before, n_chunks_after, causal, attention_mask, dropout_mask=None, dropout_p=0.0
    ):
        batch, heads, seq_len, _ = q.shape
        lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty((batch, heads, seq_len), dtype=lse_dtype)

    @torch.library.register_fake("reformer_kernels::local_attention_bwd")
    def _backward_fake(
        grad_out, q, k, v, out, lse, chunk_len, n_chunks_before, n_chunks_after, causal, attention_mask, dropout_mask=None,
        dropout_p=0.0,
    ):
        return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))

    def _setup_context(ctx, inputs, output):
        q, k, v, chunk_len, n_chunks_before, n_chunks_after, causal, attention_mask, dropout_mask, dropout_p = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, out, lse, attention_mask, dropout_mask)
        ctx.config = (chunk_len, n_chunks_before, n_chunks_after, causal)
        ctx.dropout_p = dropout_p
        ctx.mark_non_differentiable(lse)
        ctx.set_materialize_grads(False)

    def _backward(ctx, grad_out, grad_lse):
        if grad_out is None:
            return None, None, None, None, None, None, None, None, None, None
        q, k, v, out, lse, attention_mask, dropout_mask = ctx.saved_tensors
        grad_q, grad_k, grad_v = torch.ops.reformer_kernels.local_attention_bwd(
            grad_out.to(out.dtype), q, k, v, out, lse, *ctx.config, attention_mask, dropout_mask, ctx.dropout_p
        )
        return grad_q, grad_k, grad_v, None, None, None, None, None, None, None

    torch.library.register_autograd("reformer_kernels::local_attention_fwd", _backward, setup_context=_setup_context)
    backends.register("local_attention", "cpu", local_attention_cpu)
