"""Reversible residual layers (RevNet, the paper's section 3) with a memory-saving backward.

The forward keeps no activations, the last layer's included: only the outputs (y1, y2) of the last
layer and, per sub-layer, the random-number-generator state it started from. (Storing the last
layer's activations instead would spare one layer's recomputation, but hold them, about eight
stream tensors, at the forward's end, beside whatever the model computes after the layers: there
the resident memory of a training step peaked.) The backward walks the layers in reverse,
reconstructs each layer's inputs from its outputs (x2 = y2 - dropout(g(y1)), x1 = y1 -
dropout(f(x2))), and backpropagates through one recomputation of each sub-layer, replaying its saved RNG state so that
dropout masks and hash rotations drawn from the global generator are exactly those of the forward.
(transformers reseeds instead and its LSH layers draw the rotations only in the forward, so their
dropout masks differ between the two passes and the gradients are wrong.)

On the CPU both passes run inside reformer_kernels' CPU memory pool (``reformer_kernels.cpu_memory_pool``):
each sub-layer's large temporaries reuse the blocks the previous one freed, the same shapes layer
after layer, so the resident memory of a training step does not grow with depth although glibc's
malloc, left to itself, fragments its heap until it does, and no page is handed back to the system
and faulted in again (measured: benchmarks/bench_reversible.py).

The residual connections, with the hidden dropout on the sub-layer's output, are one op
(``functional.dropout_add``): one kernel on every backend for the forward's add and one for the
reconstruction's subtraction, drawing the dropout from Philox keyed by a seed taken from torch's
generator, so the replayed generator state regenerates the forward's mask and none is stored.

FSDP2 (``torch.distributed.fsdp.fully_shard`` applied to each block and to the model) gathers a
block's parameters in hooks around the block's ``__call__`` and reduce-scatters their gradients in
autograd hooks on its inputs and outputs; the memory-saving passes run the sub-layers without calling
the block, so they run those hooks themselves (``_fsdp_state``). Those are FSDP2's private methods
(as in torch 2.14); tests/models/test_fsdp.py fails if a torch release changes them.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from .. import _extension, functional
from ._checks import check_probability

if torch.distributed.is_available():
    from torch.distributed.fsdp import FSDPModule
else:  # a torch built without distributed support: no block can be sharded
    FSDPModule = ()


class ReversibleBlock(nn.Module):
    """y1 = x1 + dropout(attention(x2, **kwargs)), y2 = x2 + dropout(feed_forward(y1)).

    ``dropout`` is the hidden dropout on each sub-layer's output (transformers applies it at the end
    of its attention output and feed-forward modules), applied here with the residual add as one op.
    """

    def __init__(self, attention: nn.Module, feed_forward: nn.Module, *, dropout: float = 0.0):
        super().__init__()
        check_probability("ReversibleBlock", "dropout", dropout)
        self.attention = attention
        self.feed_forward = feed_forward
        self.dropout = dropout

    def residual(self, stream: torch.Tensor, sub_layer_output: torch.Tensor, *, subtract: bool = False) -> torch.Tensor:
        """stream + dropout(sub_layer_output); ``subtract``: its inverse, stream - dropout(...), which
        regenerates the forward's mask when the generator state is the forward's."""
        return functional.dropout_add(stream, sub_layer_output, self.dropout, training=self.training, subtract=subtract)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        y1 = self.residual(x1, self.attention(x2, **kwargs))
        return y1, self.residual(x2, self.feed_forward(y1))


def _devices(x: torch.Tensor) -> list[int]:
    return [x.device.index if x.device.index is not None else torch.cuda.current_device()] if x.is_cuda else []


def _rng_state(devices: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The CPU generator state and, per CUDA device, its Philox seed and offset."""
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]


def _autocast_state(device_type: str) -> tuple[str, bool, torch.dtype]:
    return device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


@contextlib.contextmanager
def _replay(
    state: tuple[torch.Tensor, list[torch.Tensor]], devices: list[int], autocast: tuple[str, bool, torch.dtype]
) -> Iterator[None]:
    """Run the block with the generators at ``state`` and the forward's autocast setting (backward
    runs outside the user's autocast region), then give the caller back its own RNG stream."""
    device_type, enabled, dtype = autocast
    with torch.random.fork_rng(devices=devices), torch.autocast(device_type, dtype=dtype, enabled=enabled):
        torch.set_rng_state(state[0])
        for device, cuda_state in zip(devices, state[1]):
            torch.cuda.set_rng_state(cuda_state, device)
        yield


def _collecting(attentions: list[torch.Tensor] | None) -> dict[str, list[torch.Tensor]]:
    # Only the forward collects attention probabilities; the backward's recomputation must not.
    return {} if attentions is None else {"attentions": attentions}


def _fsdp_state(block: nn.Module) -> Any:
    """FSDP2's state of ``block`` if ``fully_shard`` was applied to it, else None.

    Between its forward and backward such a block holds sharded parameters (DTensors), and FSDP
    reduce-scatters their gradients itself: from the unsharded parameters' ``.grad``, when the
    gradient reaches the block's inputs. Calling the block runs the state's forward hooks (gather
    before, reshard after, per its settings) and registers autograd hooks on its outputs (gather for
    the backward) and inputs (reduce-scatter, reshard). The memory-saving passes run the sub-layers
    without calling the block, so they call those hooks at the same points: ``_pre_forward`` and
    ``_post_forward`` around the forward's sub-layers (as ``register_fsdp_forward_method`` does),
    ``_pre_backward`` when the backward reaches the block, its param group's ``post_backward`` when
    the block's gradients are done. (A sub-layer sharded on its own is called, so its hooks run.)"""
    return block._get_fsdp_state() if isinstance(block, FSDPModule) else None


def _holds_fsdp(block: nn.Module) -> bool:
    """Whether ``fully_shard`` was applied to the block or to a module in it: then FSDP takes the
    gradients of those parameters from their ``.grad``, so the backward accumulates them there."""
    return any(isinstance(module, FSDPModule) for module in block.modules())


def _trainable(sub_layer: nn.Module) -> list[torch.Tensor]:
    """The parameters that the sub-layer's last call used and that require grad: read after the call,
    since FSDP registers gathered parameters in place of the sharded ones for it."""
    return [p for p in sub_layer.parameters() if p.requires_grad]


def _param_grads(
    output: torch.Tensor, x: torch.Tensor, params: list[torch.Tensor], grad_output: torch.Tensor, *, into_grad: bool
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """dL/dx and the parameters' gradients, returned; ``into_grad``: accumulated into their ``.grad``
    instead (where FSDP looks for them), and none returned."""
    if into_grad:
        torch.autograd.backward(output, grad_output, inputs=[x, *params])
        grad_x, param_grads = x.grad, []
    else:
        grad_x, *param_grads = torch.autograd.grad(output, [x, *params], grad_output, allow_unused=True)
    return (grad_x if grad_x is not None else torch.zeros_like(x)), param_grads


class _ReversibleFunction(torch.autograd.Function):
    @staticmethod
    @_extension.in_cpu_memory_pool
    def forward(
        ctx: Any, x1: torch.Tensor, x2: torch.Tensor, blocks: list[ReversibleBlock], kwargs: dict,
        hidden_states: list[torch.Tensor] | None, attentions: list[torch.Tensor] | None, *params: torch.Tensor,
    ):
        devices = _devices(x1)
        rng_states = []
        for block in blocks:
            if hidden_states is not None:
                hidden_states.append(x2)
            fsdp = _fsdp_state(block)
            if fsdp is not None:
                (x1, x2), _ = fsdp._pre_forward(block, (x1, x2), {})
            attention_state = _rng_state(devices)
            x1 = block.residual(x1, block.attention(x2, **kwargs, **_collecting(attentions)))
            feed_forward_state = _rng_state(devices)
            x2 = block.residual(x2, block.feed_forward(x1))
            rng_states.append((attention_state, feed_forward_state))
            if fsdp is not None:
                x1, x2 = fsdp._post_forward(block, (x1, x2), (x1, x2))
        # The outputs are kept detached (no reference cycle through their grad_fn) instead of saved,
        # so that the backward can let go of them as it undoes the blocks (saved tensors live until
        # it returns: two stream tensors more at its peak); detach shares their version counters, so
        # an in-place change of an output is caught as save_for_backward would catch it.
        ctx.outputs = [x1.detach(), x2.detach()]
        ctx.output_versions = [x1._version, x2._version]
        ctx.blocks, ctx.kwargs, ctx.rng_states, ctx.devices = blocks, kwargs, rng_states, devices
        ctx.autocast = _autocast_state(x1.device.type)
        ctx.param_index = {id(p): i for i, p in enumerate(params)}
        ctx.n_params = len(params)
        return x1, x2

    @staticmethod
    @torch.autograd.function.once_differentiable
    @_extension.in_cpu_memory_pool
    def backward(ctx: Any, grad_y1: torch.Tensor, grad_y2: torch.Tensor):
        y1, y2 = ctx.outputs
        if [y1._version, y2._version] != ctx.output_versions:
            raise RuntimeError(
                "ReversibleSequence: an output of the reversible layers was modified by an in-place operation "
                "after the forward, and the backward reconstructs the layers' inputs from it; clone it before "
                "modifying it"
            )
        if not torch._C._autograd._get_current_graph_task_keep_graph():  # (retain_graph: another backward follows)
            ctx.outputs = None
        param_grads: list[torch.Tensor | None] = [None] * ctx.n_params

        def accumulate(params: list[torch.Tensor], grads: list[torch.Tensor | None]) -> None:
            for p, g in zip(params, grads):
                if g is not None:
                    i = ctx.param_index[id(p)]
                    param_grads[i] = g if param_grads[i] is None else param_grads[i] + g

        # Autograd differentiates the reconstruction x2 = y2 - dropout(g(y1)) as it runs (one fused op,
        # whose backward regenerates the mask), and its derivative is minus the sub-layer's: so the
        # loop carries the negated gradients -dL/dy1, -dL/dy2, which reach each sub-layer with the
        # right sign, and negates twice in all instead of twice per layer. Each stream tensor and
        # gradient term is dropped once used and the carried gradients (this loop's own tensors) are
        # updated in place, so that one sub-layer's recomputation is all the backward holds besides.
        neg_grad_y1, neg_grad_y2 = -grad_y1, -grad_y2
        for block, (attention_state, feed_forward_state) in zip(reversed(ctx.blocks), reversed(ctx.rng_states)):
            fsdp = _fsdp_state(block)
            into_grad = _holds_fsdp(block)
            if fsdp is not None:
                fsdp._pre_backward(neg_grad_y1)  # the hook on its outputs (passes the gradient through): gathers the block
            with torch.enable_grad():
                y1 = y1.detach().requires_grad_()
                with _replay(feed_forward_state, ctx.devices, ctx.autocast):
                    x2 = block.residual(y2, block.feed_forward(y1), subtract=True)
                del y2
                g_params = _trainable(block.feed_forward)
                grad_from_g, grads = _param_grads(x2, y1, g_params, neg_grad_y2, into_grad=into_grad)
            accumulate(g_params, grads)
            neg_grad_y1.sub_(grad_from_g)
            del grad_from_g
            x2 = x2.detach()
            with torch.enable_grad():
                x2.requires_grad_()
                with _replay(attention_state, ctx.devices, ctx.autocast):
                    x1 = block.residual(y1.detach(), block.attention(x2, **ctx.kwargs), subtract=True)
                del y1
                f_params = _trainable(block.attention)
                grad_from_f, grads = _param_grads(x1, x2, f_params, neg_grad_y1, into_grad=into_grad)
            accumulate(f_params, grads)
            if fsdp is not None:
                fsdp._fsdp_param_group.post_backward()  # reduce-scatters the .grad just accumulated, reshards
            y1, y2 = x1.detach(), x2.detach()
            del x1, x2
            neg_grad_y2.sub_(grad_from_f)
            del grad_from_f
        return (neg_grad_y1.neg_(), neg_grad_y2.neg_(), None, None, None, None, *param_grads)


class ReversibleSequence(nn.Module):
    """A stack of ``ReversibleBlock``s: (x1, x2) -> (y1, y2).

    In training (autograd recording and something requiring grad) the memory-saving backward runs
    for every block: the bytes saved for backward do not grow with the number of blocks. ``reversible=False`` runs
    the same blocks with plain autograd (same RNG use, so the same dropout masks), which stores
    every activation; it exists to check and to measure the reversible backward against.
    Keyword arguments of ``forward`` go to every block's attention.

    Inside ``torch.compile`` the blocks run as plain autograd too: the memory-saving backward calls
    ``torch.autograd.grad`` and sets RNG states, which a compiled graph cannot contain. The compiled
    graph gives the same outputs and gradients; what it saves for backward is AOTAutograd's choice
    and grows with depth.
    """

    def __init__(self, blocks: Iterable[ReversibleBlock], *, reversible: bool = True):
        super().__init__()
        self.layers = nn.ModuleList(blocks)
        self.reversible = reversible

    def forward(
        self,
        x1: torch.Tensor,
        x2: torch.Tensor,
        *,
        hidden_states: list[torch.Tensor] | None = None,
        attentions: list[torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x1, x2: (B, L, hidden). ``hidden_states``: a list that receives x2 before each block and
        after the last (transformers' ``hidden_states`` output; not differentiable in the reversible
        mode). ``attentions``: passed on to each block's attention (as ``attentions=``) in the
        forward only, for it to append its attention probabilities."""
        blocks = list(self.layers)
        params = [p for block in blocks for p in block.parameters() if p.requires_grad]
        needs_grad = torch.is_grad_enabled() and (x1.requires_grad or x2.requires_grad or bool(params))
        if self.reversible and needs_grad and blocks and not torch.compiler.is_compiling():
            x1, x2 = _ReversibleFunction.apply(x1, x2, blocks, kwargs, hidden_states, attentions, *params)
            blocks = []
        for block in blocks:
            if hidden_states is not None:
                hidden_states.append(x2)
            x1, x2 = block(x1, x2, **kwargs, **_collecting(attentions))
        if hidden_states is not None:
            hidden_states.append(x2)
        return x1, x2
