"""head_projections: the C++ kernels of csrc/cpu/projections.cpp behind the schema
reformer_kernels::head_projections (csrc/reformer.cpp), which compute an attention layer's input
projections straight into dense heads (B, H, L, d), and its two backward ops (the input's
gradient, summed over the projections, and each weight's). Float32 and float64; other dtypes, GPU
tensors and float32 under ``torch.autocast`` take ``reference.head_projections`` (torch's matmul),
whose head-split views the attention kernels read as well as dense heads: under autocast that
matmul runs as ``nn.Linear`` does, in the autocast dtype (bf16 on oneDNN's AMX/AVX512-BF16 kernels,
2x the fp32 rate or more), and the attention kernels then take those low-precision heads."""
import torch

from .. import _extension, backends, reference


def head_projections_cpu(x: torch.Tensor, weights: list[torch.Tensor], heads: int) -> list[torch.Tensor]:
    if x.dtype == torch.float64 or (x.dtype == torch.float32 and not torch.is_autocast_enabled(x.device.type)):
        return list(torch.ops.reformer_kernels.head_projections(x, list(weights), heads))
    if x.dtype == torch.float32:
        # Cast once here: autocast caches the weights' casts, but would cast x again per weight.
        x = x.to(torch.get_autocast_dtype(x.device.type))
    return reference.head_projections(x, weights, heads)


if _extension.loaded():

    @torch.library.register_fake("reformer_kernels::head_projections")
    def _forward_fake(x, weights, heads):
        batch, seq_len, _ = x.shape
        return [x.new_empty((batch, heads, seq_len, w.shape[0] // heads)) for w in weights]

    @torch.library.register_fake("reformer_kernels::head_projections_grad_input")
    def _grad_input_fake(grads, weights):
        batch, _, seq_len, _ = grads[0].shape
        return grads[0].new_empty((batch, seq_len, weights[0].shape[1]))

    @torch.library.register_fake("reformer_kernels::head_projections_grad_weights")
    def _grad_weights_fake(grads, x):
        _, heads, _, head_dim = grads[0].shape
        return [x.new_empty((heads * head_dim, x.shape[2])) for _ in grads]

    def _setup_context(ctx, inputs, output):
        x, weights, heads = inputs
        ctx.save_for_backward(x, *weights)
        ctx.needs = (x.requires_grad, any(w.requires_grad for w in weights))

    def _backward(ctx, grads):
        x, *weights = ctx.saved_tensors
        grads = list(grads)
        needs_input, needs_weights = ctx.needs
        grad_x = torch.ops.reformer_kernels.head_projections_grad_input(grads, weights) if needs_input else None
        grad_weights = torch.ops.reformer_kernels.head_projections_grad_weights(grads, x) if needs_weights else None
        return grad_x, grad_weights, None

    torch.library.register_autograd("reformer_kernels::head_projections", _backward, setup_context=_setup_context)
    backends.register("head_projections", "cpu", head_projections_cpu)
for composed in ("reference", "triton", "cuda"):
    backends.register("head_projections", composed, reference.head_projections)
