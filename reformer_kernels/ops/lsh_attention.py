"""lsh_attention: the C++ kernels of csrc/cpu/lsh_attention.cpp behind reformer_kernels::lsh_attention_fwd
and its backward reformer_kernels::lsh_attention_bwd (its own op, so it can be tested and
compiled alone). The forward returns lse in float32 (float64 for float64 inputs) because the
backward recomputes probabilities from it; the public impl casts it to the input dtype."""
import torch

from .. import _extension, backends


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def lsh_attention_cpu(
    qk: torch.Tensor,
    v: torch.Tensor,
    sorted_idx: torch.Tensor,
    n_hashes: int,
    chunk_len: int,
    n_chunks_before: int,
    n_chunks_after: int,
    causal: bool,
    attention_mask: torch.Tensor | None = None,
    dropout_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference signature of ``lsh_attention``: returns ``(out, lse)``. ``dropout_mask``,
    ``dropout_p``: the attention probabilities' bool keep-mask (``reference.dropout_mask_shape``)
    and drop probability, as the reference takes them."""
    out, lse = torch.ops.reformer_kernels.lsh_attention_fwd(
        qk, v, sorted_idx, n_hashes, chunk_len, n_chunks_before, n_chunks_after, causal, attention_mask, dropout_mask,
        dropout_p,
    )
    return out, lse.to(qk.dtype)


if _extension.loaded():

    @torch.library.register_fake("reformer_kernels::lsh_attention_fwd")
    def _forward_fake(
        qk, v, sorted_idx, n_hashes, chunk_len, n_chunks_before, n_chunks_after, causal, attention_mask, dropout_mask=None,
        dropout_p=0.0,
    ):
        batch, heads, seq_len, _ = qk.shape
        # laid out like qk where qk is dense (a head-split projection), as the kernel allocates it
        out = torch.empty_like(qk)
        return out, qk.new_empty((batch, heads, n_hashes, seq_len), dtype=_lse_dtype(qk.dtype))

    @torch.library.register_fake("reformer_kernels::lsh_attention_bwd")
    def _backward_fake(
        grad_out, grad_lse, qk, v, sorted_idx, out, lse, n_hashes, chunk_len, n_chunks_before, n_chunks_after, causal,
        attention_mask, dropout_mask=None, dropout_p=0.0,
    ):
        return torch.empty_like(qk), torch.empty_like(v)

    def _setup_context(ctx, inputs, output):
        (qk, v, sorted_idx, n_hashes, chunk_len, n_chunks_before, n_chunks_after, causal, attention_mask, dropout_mask,
         dropout_p) = inputs
        out, lse = output
        ctx.save_for_backward(qk, v, sorted_idx, out, lse, attention_mask, dropout_mask)
        ctx.config = (n_hashes, chunk_len, n_chunks_before, n_chunks_after, causal)
        ctx.dropout_p = dropout_p
        ctx.set_materialize_grads(False)

    def _backward(ctx, grad_out, grad_lse):
        qk, v, sorted_idx, out, lse, attention_mask, dropout_mask = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        grad_qk, grad_v = torch.ops.reformer_kernels.lsh_attention_bwd(
            grad_out.to(out.dtype), grad_lse, qk, v, sorted_idx, out, lse, *ctx.config, attention_mask, dropout_mask,
            ctx.dropout_p,
        )
        return grad_qk, grad_v, None, None, None, None, None, None, None, None, None

    torch.library.register_autograd("reformer_kernels::lsh_attention_fwd", _backward, setup_context=_setup_context)
    backends.register("lsh_attention", "cpu", lsh_attention_cpu)
