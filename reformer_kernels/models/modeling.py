"""Reformer models, state-dict compatible with transformers' (same module tree, same keys).

They run on ``reformer_kernels.nn`` (hence on the functional ops and their backends). Differences
from transformers, each on purpose: any sequence length works in training and eval (padded with a
mask inside and cropped); the config is never mutated (num_buckets=None is resolved per call);
the reversible backward replays the RNG, so dropout gradients are right; with labels in training
mode the LM heads compute the loss in chunks without the (tokens x vocab) logits (returned in eval
mode or when asked); cached decoding
(``use_cache``/``past_buckets_states``) works per row for any batch and padding mask, and each
step computes what the layers' full forward computes at the new position from the cached layer
inputs (see ``ReformerModel.forward`` for when that equals a full recompute).
"""
from __future__ import annotations

import copy
import math
import os
import re
import warnings
from typing import Any

import torch
from torch import nn

from .. import _extension, functional
from .._atomic import all_or_nothing, atomic_write
from ..nn import (
    AxialPositionEmbeddings,
    ChunkedFeedForward,
    DecodingCache,
    LocalSelfAttention,
    LSHSelfAttention,
    ReversibleBlock,
    ReversibleSequence,
    linear_cross_entropy,
)
from . import generation
from .config import FLOAT_DTYPES, ReformerConfig
from .generation import ReformerDecodingCache
from .outputs import (
    MaskedLMOutput,
    ModelOutput,
    QuestionAnsweringModelOutput,
    ReformerModelOutput,
    ReformerModelWithLMHeadOutput,
    SequenceClassifierOutput,
)

SAFETENSORS_NAME = "model.safetensors"
PYTORCH_NAME = "pytorch_model.bin"
IGNORE_INDEX = -100


class ReformerSelfOutput(nn.Module):
    """The attention's output projection; the hidden dropout after it (transformers applies it here)
    is the reversible block's, fused with the residual add."""

    def __init__(self, config: ReformerConfig):
        super().__init__()
        self.dense = nn.Linear(config.num_attention_heads * config.attention_head_size, config.hidden_size, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dense(hidden_states)


def self_attention_from_config(config: ReformerConfig, kind: str) -> nn.Module:
    """Our ``kind`` ("lsh" or "local") self-attention module with ``config``'s settings."""
    heads = (config.hidden_size, config.num_attention_heads, config.attention_head_size)
    if kind == "lsh":
        return LSHSelfAttention(
            *heads,
            num_hashes=config.num_hashes,
            num_buckets=config.num_buckets,
            chunk_len=config.lsh_attn_chunk_length,
            n_chunks_before=config.lsh_num_chunks_before,
            n_chunks_after=config.lsh_num_chunks_after,
            causal=config.is_decoder,
            hash_seed=config.hash_seed,
            dropout=config.lsh_attention_probs_dropout_prob,
            max_position_embeddings=config.max_position_embeddings,
        )
    return LocalSelfAttention(
        *heads,
        chunk_len=config.local_attn_chunk_length,
        n_chunks_before=config.local_num_chunks_before,
        n_chunks_after=config.local_num_chunks_after,
        causal=config.is_decoder,
        dropout=config.local_attention_probs_dropout_prob,
    )


class ReformerAttention(nn.Module):
    """LayerNorm -> LSH or local self-attention -> output projection: the f of a reversible layer."""

    def __init__(self, config: ReformerConfig, layer_id: int):
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attention = self_attention_from_config(config, config.attn_layers[layer_id])
        self.output = ReformerSelfOutput(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        num_hashes: int | None = None,
        attentions: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        normed = self.layer_norm(hidden_states)
        if isinstance(self.self_attention, LSHSelfAttention):
            return self.output(self.self_attention(normed, attention_mask, num_hashes, attentions))
        return self.output(self.self_attention(normed, attention_mask, attentions))

    def decode_step(
        self, hidden_states: torch.Tensor, cache: DecodingCache, key_valid: torch.Tensor, layout_len: int,
        num_hashes: int | None, capacity: int,
    ) -> torch.Tensor:
        """``forward``'s output at the one position of hidden_states (B, 1, hidden), from the cache."""
        normed = self.layer_norm(hidden_states)
        if isinstance(self.self_attention, LSHSelfAttention):
            return self.output(self.self_attention.decode_step(normed, cache, key_valid, layout_len, num_hashes, capacity))
        return self.output(self.self_attention.decode_step(normed, cache, key_valid, layout_len, capacity))

    def fill_cache(
        self, hidden_states: torch.Tensor, cache: DecodingCache, attention_mask: torch.Tensor | None, num_hashes: int | None,
        cached_len: int, capacity: int, attentions: list[torch.Tensor] | None,
    ) -> torch.Tensor:
        """``forward`` that also fills ``cache`` with positions [0, cached_len) (see the attention's fill_cache)."""
        normed = self.layer_norm(hidden_states)
        if isinstance(self.self_attention, LSHSelfAttention):
            out = self.self_attention.fill_cache(normed, cache, capacity, attention_mask, num_hashes, cached_len, attentions)
        else:
            out = self.self_attention.fill_cache(normed, cache, capacity, attention_mask, cached_len, attentions)
        return self.output(out)


class PositionEmbeddings(nn.Module):
    """One learned vector per position (``axial_pos_embds=False``)."""

    def __init__(self, config: ReformerConfig):
        super().__init__()
        self.embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.dropout = config.hidden_dropout_prob

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return functional.dropout(self.embedding(position_ids), self.dropout, training=self.training)


class ReformerEmbeddings(nn.Module):
    def __init__(self, config: ReformerConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        if config.axial_pos_embds:
            self.position_embeddings: nn.Module = AxialPositionEmbeddings(
                config.axial_pos_shape, config.axial_pos_embds_dim, dropout=config.hidden_dropout_prob
            )
        else:
            self.position_embeddings = PositionEmbeddings(config)
        self.dropout = config.hidden_dropout_prob

    def forward(self, input_ids: torch.Tensor | None, position_ids: torch.Tensor, inputs_embeds: torch.Tensor | None) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        # position encodings + dropout(token embeddings): one Philox kernel for the dropout and the add
        return functional.dropout_add(self.position_embeddings(position_ids), inputs_embeds, self.dropout, training=self.training)


# Rows of concat(y1, y2) that _ConcatLayerNorm builds and normalizes at a time: a few MiB at most.
CONCAT_ROWS = 1024


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


class _ConcatLayerNorm(torch.autograd.Function):
    """layer_norm(concat(y1, y2)) over the last dimension, without the concatenation: CONCAT_ROWS rows
    of it are built, normalized by torch's own kernel (so every row's bits are those of the whole
    concatenation's) and written into the output, and the backward rebuilds them from the saved y1
    and y2 (which the last layer and the reversible backward hold anyway) with the saved per-row mean
    and 1/std. A (B, L, 2 * hidden) tensor fewer at the forward's peak than LayerNorm of torch.cat,
    and one fewer kept for the backward."""

    @staticmethod
    def forward(ctx: Any, y1: torch.Tensor, y2: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                eps: float) -> torch.Tensor:
        rows1, rows2 = _rows(y1), _rows(y2)
        width = rows1.shape[1] + rows2.shape[1]
        out = torch.empty(rows1.shape[0], width, dtype=torch.promote_types(y1.dtype, y2.dtype), device=y1.device)
        means, rstds = [], []
        for start in range(0, rows1.shape[0], CONCAT_ROWS):
            part = slice(start, start + CONCAT_ROWS)
            out[part], mean, rstd = torch.native_layer_norm(
                torch.cat([rows1[part], rows2[part]], dim=1), (width,), weight, bias, eps)
            means.append(mean)
            rstds.append(rstd)
        ctx.save_for_backward(y1, y2, weight, bias, torch.cat(means), torch.cat(rstds))
        return out.view(*y1.shape[:-1], width)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor):
        y1, y2, weight, bias, mean, rstd = ctx.saved_tensors
        rows1, rows2, grad_rows = _rows(y1), _rows(y2), _rows(grad_out)
        width = grad_rows.shape[1]
        needs_y = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_y1 = torch.empty_like(rows1) if ctx.needs_input_grad[0] else None
        grad_y2 = torch.empty_like(rows2) if ctx.needs_input_grad[1] else None
        grad_weight = grad_bias = None
        mask = [needs_y, ctx.needs_input_grad[2], ctx.needs_input_grad[3]]
        for start in range(0, rows1.shape[0], CONCAT_ROWS):
            part = slice(start, start + CONCAT_ROWS)
            grad_x, grad_w, grad_b = torch.ops.aten.native_layer_norm_backward(
                grad_rows[part], torch.cat([rows1[part], rows2[part]], dim=1), (width,), mean[part], rstd[part], weight,
                bias, mask)
            if grad_y1 is not None:
                grad_y1[part] = grad_x[:, :rows1.shape[1]]
            if grad_y2 is not None:
                grad_y2[part] = grad_x[:, rows1.shape[1]:]
            if grad_w is not None:
                grad_weight = grad_w if grad_weight is None else grad_weight.add_(grad_w)
            if grad_b is not None:
                grad_bias = grad_b if grad_bias is None else grad_bias.add_(grad_b)
        return (None if grad_y1 is None else grad_y1.view(y1.shape), None if grad_y2 is None else grad_y2.view(y2.shape),
                grad_weight, grad_bias, None)


class ReformerEncoder(ReversibleSequence):
    """The reversible layers, then LayerNorm over concat(y1, y2) (2 * hidden_size) and dropout."""

    def __init__(self, config: ReformerConfig):
        layers = []
        for layer_id in range(config.num_hidden_layers):
            feed_forward = ChunkedFeedForward(
                config.hidden_size,
                config.feed_forward_size,
                hidden_act=config.hidden_act,
                dropout=config.hidden_dropout_prob,
                chunk_size=config.chunk_size_feed_forward,
                layer_norm_eps=config.layer_norm_eps,
            )
            layers.append(ReversibleBlock(ReformerAttention(config, layer_id), feed_forward, dropout=config.hidden_dropout_prob))
        super().__init__(layers)
        self.layer_norm = nn.LayerNorm(2 * config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = config.hidden_dropout_prob

    def forward(  # type: ignore[override]
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        num_hashes: int | None = None,
        all_hidden_states: list[torch.Tensor] | None = None,
        all_attentions: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        y1, y2 = super().forward(
            hidden_states, hidden_states, hidden_states=all_hidden_states, attentions=all_attentions,
            attention_mask=attention_mask, num_hashes=num_hashes,
        )
        return functional.dropout(self.final_layer_norm(y1, y2), self.dropout, training=self.training)

    def final_layer_norm(self, y1: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
        """self.layer_norm(concat(y1, y2)): without materializing the concatenation (_ConcatLayerNorm)
        while it is a plain nn.LayerNorm without hooks; a replaced or hooked module, and a graph that
        torch.compile traces, get the concatenation."""
        norm = self.layer_norm
        if (type(norm) is nn.LayerNorm and not norm._forward_hooks and not norm._forward_pre_hooks
                and not torch.compiler.is_compiling()):
            return _ConcatLayerNorm.apply(y1, y2, norm.weight, norm.bias, norm.eps)
        return norm(torch.cat([y1, y2], dim=-1))

    def decode_step(
        self, embeddings: torch.Tensor, caches: list[DecodingCache], key_valid: torch.Tensor, layout_len: int,
        num_hashes: int | None, capacity: int,
    ) -> torch.Tensor:
        """``forward`` at one new position (B, 1, hidden) -> (B, 1, 2 * hidden), in eval mode,
        each layer attending through its cache."""
        x1 = x2 = embeddings
        for block, cache in zip(self.layers, caches):
            x1 = block.residual(x1, block.attention.decode_step(x2, cache, key_valid, layout_len, num_hashes, capacity))
            x2 = block.residual(x2, block.feed_forward(x1))
        return self.final_layer_norm(x1, x2)

    def fill_caches(
        self, embeddings: torch.Tensor, caches: list[DecodingCache], attention_mask: torch.Tensor | None,
        num_hashes: int | None, cached_len: int, capacity: int, all_hidden_states: list[torch.Tensor] | None,
        all_attentions: list[torch.Tensor] | None,
    ) -> torch.Tensor:
        """``forward`` on a prompt (B, L, hidden) in eval mode that also fills each layer's cache
        with its projections of positions [0, cached_len), computed once."""
        x1 = x2 = embeddings
        for block, cache in zip(self.layers, caches):
            if all_hidden_states is not None:
                all_hidden_states.append(x2)
            attention = block.attention.fill_cache(x2, cache, attention_mask, num_hashes, cached_len, capacity, all_attentions)
            x1 = block.residual(x1, attention)
            x2 = block.residual(x2, block.feed_forward(x1))
        if all_hidden_states is not None:
            all_hidden_states.append(x2)
        return self.final_layer_norm(x1, x2)


def check_attention_mask(mask: torch.Tensor) -> None:
    """attention_mask is bool or 0/1 numbers (see functional.check_mask_values)."""
    if mask.dtype.is_complex:
        raise TypeError(f"attention_mask must be bool or 0/1 numbers, got {mask.dtype}: pass 1 for tokens and 0 for padding")
    functional.check_mask_values("attention_mask", mask)


def _check_checkpoint_tensors(
    name: str, directory: str | os.PathLike, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
    ignore_mismatched_sizes: bool,
) -> list[tuple[str, torch.Size, torch.Size]]:
    """Each stored tensor has its parameter's shape and a dtype of the same kind. load_state_dict
    copies an int32 tensor into a float weight without a word (truncated values), and names a shape
    mismatch without the file. A float of another width (a float16 checkpoint) is cast, as transformers does.
    Returns the (key, stored shape, model shape) of the tensors of another shape when
    ``ignore_mismatched_sizes`` (the caller leaves them as initialized)."""
    mismatched = []
    for key, want in expected.items():
        stored = state.get(key)
        if stored is None:
            continue
        kind_ok = stored.dtype == want.dtype or (stored.dtype.is_floating_point and want.dtype.is_floating_point)
        if kind_ok and stored.shape != want.shape and ignore_mismatched_sizes:
            mismatched.append((key, stored.shape, want.shape))
        elif stored.shape != want.shape or not kind_ok:
            fix = "check that config.json belongs to these weights, or re-save them with save_pretrained"
            if kind_ok:
                fix += (" (to re-initialize tensors of another shape, such as a head with another num_labels, pass "
                        "ignore_mismatched_sizes=True)")
            raise ValueError(
                f"{name}({os.fspath(directory)!r}): tensor {key!r} is stored as {stored.dtype} "
                f"{tuple(stored.shape)} but the model expects {want.dtype} {tuple(want.shape)}: {fix}"
            )
    return mismatched


def _checkpoint_error(path: str, why: str) -> ValueError:
    return ValueError(f"checkpoint {path!r} {why}: re-save it with save_pretrained (ours or transformers')")


def load_checkpoint_state_dict(directory: str | os.PathLike, use_safetensors: bool | None = None) -> dict[str, torch.Tensor]:
    """The tensors of ``directory/model.safetensors``, else ``directory/pytorch_model.bin``
    (read with ``weights_only=True``: no code from the file runs); ``use_safetensors`` True or
    False: that file only."""
    directory = os.fspath(directory)
    safetensors_path = os.path.join(directory, SAFETENSORS_NAME)
    pytorch_path = os.path.join(directory, PYTORCH_NAME)
    if use_safetensors is not None and not isinstance(use_safetensors, bool):
        raise ValueError(f"use_safetensors must be True, False or None, got {use_safetensors!r}")
    if use_safetensors is not False and os.path.isfile(safetensors_path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(safetensors_path)
        except (SafetensorError, OSError, ValueError) as error:
            raise _checkpoint_error(safetensors_path, f"is not a readable safetensors file ({error})") from None
    if use_safetensors is not True and os.path.isfile(pytorch_path):
        try:
            state = torch.load(pytorch_path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch.load raises many types (pickle, zip, EOF) for a corrupt file
            raise _checkpoint_error(pytorch_path, f"could not be read ({type(error).__name__}: {error})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise _checkpoint_error(pytorch_path, "does not hold a state dict of tensors")
        return state
    expected = {True: SAFETENSORS_NAME, False: PYTORCH_NAME, None: f"{SAFETENSORS_NAME} or {PYTORCH_NAME}"}[use_safetensors]
    raise ValueError(
        f"no weights in {directory!r}: expected {expected}; "
        "write them with model.save_pretrained(directory)"
    )


class ReformerPreTrainedModel(nn.Module):
    """Weight initialization, save_pretrained and from_pretrained, and the other conventions of
    transformers' PreTrainedModel that users and transformers' Trainer rely on (embedding accessors,
    resize_token_embeddings, base_model, _from_config, num_parameters), without depending on transformers."""

    config_class = ReformerConfig
    base_model_prefix = "reformer"
    main_input_name = "input_ids"
    # The reversible layers already keep one layer's activations whatever the depth (they recompute
    # the others in the backward), which is what gradient checkpointing would buy.
    supports_gradient_checkpointing = False
    # Regexes of state-dict keys that save_pretrained leaves out (transformers' convention; none here).
    _keys_to_ignore_on_save: list[str] | None = None

    def __init__(self, config: ReformerConfig):
        super().__init__()
        if not isinstance(config, ReformerConfig):
            raise TypeError(f"{type(self).__name__}: config must be a ReformerConfig, got {type(config).__name__}")
        # Fields set after the config was built (config.is_decoder = True, as transformers' tests do)
        # are checked here, before any module is built from them.
        config.validate()
        self.config = config

    def post_init(self) -> None:
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, AxialPositionEmbeddings):
            for weight in module.weights:
                nn.init.normal_(weight, std=self.config.axial_norm_std)

    @property
    def base_model(self) -> "ReformerModel":
        """The ReformerModel inside a model with a head (the model itself for ReformerModel)."""
        return getattr(self, self.base_model_prefix, self)

    @property
    def dtype(self) -> torch.dtype:
        return next(p.dtype for p in self.parameters() if p.is_floating_point())

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @classmethod
    def can_generate(cls) -> bool:
        """Whether ``generate`` exists (the causal LM only), as transformers' GenerationMixin test."""
        return callable(getattr(cls, "generate", None))

    @classmethod
    def _from_config(cls, config: ReformerConfig, *, dtype: torch.dtype | str | None = None,
                     torch_dtype: torch.dtype | str | None = None) -> "ReformerPreTrainedModel":
        """A freshly initialized model of ``config`` (copied: the caller's is left as it was), with
        float parameters in ``dtype`` (or its older name ``torch_dtype``; default float32)."""
        if not isinstance(config, ReformerConfig):
            raise TypeError(f"{cls.__name__}._from_config: config must be a ReformerConfig, got {type(config).__name__}")
        config = copy.deepcopy(config)
        dtype = _requested_dtype(cls.__name__ + "._from_config", dtype, torch_dtype)
        dtype = torch.float32 if dtype in (None, "auto") else _resolve_dtype(cls.__name__ + "._from_config", dtype)
        config.dtype = str(dtype).removeprefix("torch.")
        return cls(config).to(dtype)

    from_config = _from_config

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """The number of parameters; ``only_trainable``: of those that require grad; ``exclude_embeddings``:
        without the embedding tables (as transformers)."""
        embeddings = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)} if exclude_embeddings else set()
        return sum(p.numel() for p in self.parameters()
                   if (p.requires_grad or not only_trainable) and id(p) not in embeddings)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.base_model.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.base_model.embeddings.word_embeddings = value

    def get_output_embeddings(self) -> nn.Linear | None:
        """The LM head's Linear for the models that have one, else None (as transformers)."""
        lm_head = getattr(self, "lm_head", None)
        return None if lm_head is None else lm_head.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        """Replace the LM head's Linear (2 * hidden_size -> vocab). transformers makes ``lm_head.bias``
        the new Linear's bias; here it becomes a copy of it (the logits use ``decoder.bias``; the
        state dict holds both names, with the same values, and safetensors cannot save a shared tensor twice)."""
        if getattr(self, "lm_head", None) is None:
            raise TypeError(f"{type(self).__name__} has no LM head: set_output_embeddings is for the LM models")
        if not isinstance(new_embeddings, nn.Linear) or new_embeddings.bias is None:
            raise TypeError(f"set_output_embeddings: pass an nn.Linear with a bias, got {new_embeddings!r}")
        self.lm_head.decoder = new_embeddings
        self.lm_head.bias = nn.Parameter(new_embeddings.bias.detach().clone(), requires_grad=new_embeddings.bias.requires_grad)

    def _output(self, output: ModelOutput, return_dict: bool | None) -> ModelOutput | tuple:
        """``output``, or its tuple of set fields with ``return_dict=False`` (None: config.use_return_dict)."""
        return output if (self.config.use_return_dict if return_dict is None else return_dict) else output.to_tuple()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        raise ValueError(
            f"{type(self).__name__} does not support gradient checkpointing: its reversible layers already store one "
            "layer's activations whatever the depth; leave gradient_checkpointing off (e.g. in TrainingArguments)"
        )

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """Give the vocabulary ``new_num_tokens`` tokens (rounded up to a multiple of
        ``pad_to_multiple_of``): the input embedding and, for the LM heads, the head's weight and
        both bias names (not tied: Reformer's head maps 2 * hidden_size, as transformers) keep their
        first rows; new rows are the mean of the old ones with ``mean_resizing`` (transformers adds
        noise of 1e-5 times their covariance), else drawn as at initialization. Sets
        config.vocab_size; returns the input embedding (unchanged when both arguments are None)."""
        embeddings = self.get_input_embeddings()
        if new_num_tokens is None and pad_to_multiple_of is None:
            return embeddings
        new_num_tokens = embeddings.num_embeddings if new_num_tokens is None else new_num_tokens
        if isinstance(new_num_tokens, bool) or not isinstance(new_num_tokens, int) or new_num_tokens < 1:
            raise ValueError(f"resize_token_embeddings: new_num_tokens must be a positive int, got {new_num_tokens!r}")
        if pad_to_multiple_of is not None:
            if isinstance(pad_to_multiple_of, bool) or not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1:
                raise ValueError(
                    f"resize_token_embeddings: pad_to_multiple_of must be a positive int or None, got {pad_to_multiple_of!r}"
                )
            new_num_tokens = -(-new_num_tokens // pad_to_multiple_of) * pad_to_multiple_of
        resized_config = copy.deepcopy(self.config)
        resized_config.vocab_size = new_num_tokens
        try:
            resized_config.validate()
        except ValueError as error:
            raise ValueError(f"resize_token_embeddings({new_num_tokens}): {error}") from None
        self.config.vocab_size = new_num_tokens  # the head's and the base model's config are one object

        def resized(old: torch.Tensor) -> nn.Parameter:
            new = old.new_empty((new_num_tokens, *old.shape[1:]))
            kept = min(new_num_tokens, old.shape[0])
            with torch.no_grad():
                new[:kept] = old[:kept]
                if new_num_tokens > kept:
                    if mean_resizing:
                        new[kept:] = old.mean(dim=0)
                    elif old.dim() == 1:
                        new[kept:] = 0
                    else:
                        nn.init.normal_(new[kept:], std=self.config.initializer_range)
            return nn.Parameter(new, requires_grad=old.requires_grad)

        new_embeddings = nn.Embedding(new_num_tokens, embeddings.embedding_dim, device=embeddings.weight.device,
                                      dtype=embeddings.weight.dtype)
        new_embeddings.weight = resized(embeddings.weight)
        self.set_input_embeddings(new_embeddings)
        decoder = self.get_output_embeddings()
        if decoder is not None:
            new_decoder = nn.Linear(decoder.in_features, new_num_tokens, device=decoder.weight.device, dtype=decoder.weight.dtype)
            new_decoder.weight = resized(decoder.weight)
            new_decoder.bias = resized(decoder.bias)
            self.set_output_embeddings(new_decoder)
        return new_embeddings

    def save_pretrained(
        self, save_directory: str | os.PathLike, *, state_dict: dict[str, torch.Tensor] | None = None,
        safe_serialization: bool = True, is_main_process: bool = True,
    ) -> None:
        """Write ``config.json`` and ``model.safetensors`` (``safe_serialization=False``:
        ``pytorch_model.bin``), readable by transformers' from_pretrained, both or neither (see
        reformer_kernels._atomic): a failed save leaves the previous ones; the weights file of the other
        format, if an earlier save left one, is removed so that from_pretrained cannot read it instead.
        ``state_dict``: the tensors to write instead of this model's (as transformers' Trainer passes);
        ``is_main_process=False`` writes nothing (the other ranks of a distributed run). The config
        records the parameters' dtype, which ``from_pretrained(dtype="auto")`` (the default) restores."""
        from safetensors.torch import save_file

        if not is_main_process:
            return
        os.makedirs(save_directory, exist_ok=True)
        config = ReformerConfig.from_dict(
            {**self.config.to_dict(), "architectures": [type(self).__name__], "dtype": str(self.dtype).removeprefix("torch.")}
        )
        state = self.state_dict() if state_dict is None else state_dict
        if self._keys_to_ignore_on_save:
            state = {k: v for k, v in state.items() if not any(re.search(p, k) for p in self._keys_to_ignore_on_save)}
        state = {name: tensor.detach().contiguous().cpu() for name, tensor in state.items()}
        name, stale = (SAFETENSORS_NAME, PYTORCH_NAME) if safe_serialization else (PYTORCH_NAME, SAFETENSORS_NAME)
        with all_or_nothing():
            config.save_pretrained(save_directory)
            with atomic_write(os.path.join(save_directory, name)) as f:
                if safe_serialization:
                    # safetensors writes the temporary file by its name, streaming the tensors (no copy
                    # of the whole file in memory); atomic_write then fsyncs that same file and renames it.
                    save_file(state, f.name, metadata={"format": "pt"})
                else:
                    torch.save(state, f)
        if os.path.isfile(os.path.join(save_directory, stale)):
            os.remove(os.path.join(save_directory, stale))

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *model_args: Any,
        config: ReformerConfig | str | os.PathLike | None = None,
        ignore_mismatched_sizes: bool = False,
        output_loading_info: bool = False,
        dtype: torch.dtype | str | None = None,
        torch_dtype: torch.dtype | str | None = None,
        subfolder: str = "",
        device_map: str | int | torch.device | dict | None = None,
        state_dict: dict[str, torch.Tensor] | None = None,
        use_safetensors: bool | None = None,
        revision: str | None = "main",
        weights_only: bool = True,
        **kwargs: Any,
    ):
        """Load a directory written by ``save_pretrained`` here or in transformers, with the
        keywords of transformers' from_pretrained that mean something for a local directory.

        Reads model.safetensors or pytorch_model.bin (``use_safetensors`` True/False: only that one;
        never code from the file). Returns the model in eval mode, as transformers. Keywords:
        - ReformerConfig fields (``num_labels=5``, ``hash_seed=3``, ...) override the saved config;
          ``num_labels`` replaces the saved labels. ``config``: a ReformerConfig (or its path) to use
          instead of the directory's config.json (then no field overrides: change that config).
        - ``dtype`` / ``torch_dtype``: the float parameters' dtype: a torch.dtype, its name, or "auto"
          (the default, as transformers 5): the saved config's dtype, else the checkpoint's first
          float tensor's. ``device_map``: one device ("cpu", "cuda:1", 0, or {"": device}).
        - ``ignore_mismatched_sizes``: a tensor whose shape differs from the model's (a head with
          another num_labels) is left as initialized, with a warning, instead of a ValueError.
        - ``output_loading_info``: return (model, {"missing_keys", "unexpected_keys",
          "mismatched_keys", "error_msgs"}) as transformers. ``subfolder``: load path/subfolder.
          ``state_dict``: these tensors instead of the directory's weights file.
        - Accepted and without effect on a local directory (each says so here): ``cache_dir``,
          ``force_download``, ``local_files_only``, ``token``, ``proxies`` (Hub downloads, which this
          package does not do: fetch a Hub model with huggingface_hub.snapshot_download and pass its
          folder), ``trust_remote_code`` (no code is ever loaded), ``low_cpu_mem_usage`` (transformers
          5 ignores it too). ``revision`` other than "main" and ``weights_only=False`` are refused.
        Any other keyword is a TypeError (transformers passes it to the model's __init__, which refuses it).

        Key matching: a checkpoint of the base model loads into a model with a head and the reverse;
        ``lm_head.bias`` or ``lm_head.decoder.bias`` alone loads. The head weights a checkpoint lacks
        are newly initialized, and those under a module this model does not have (``lm_head.*`` of an
        LM checkpoint loaded into ReformerForSequenceClassification, to fine-tune it, or into
        ReformerModel) are dropped, each with a warning.
        A missing or extra key of the base model means the config does not belong to the weights: ValueError.
        """
        name = f"{cls.__name__}.from_pretrained"
        if model_args:
            raise TypeError(f"{name}: takes one positional argument (the directory), got {len(model_args)} more: pass keywords")
        path = os.fspath(pretrained_model_name_or_path)
        if revision not in (None, "main"):
            raise ValueError(f"{name}: revision={revision!r} selects a Hub commit; this loads local directories only: "
                             "check that revision out into a folder and pass the folder")
        if weights_only is not True:
            raise ValueError(f"{name}: weights_only={weights_only!r}: checkpoints are always read as tensors only "
                             "(no code from the file runs); drop the argument")
        directory = os.path.join(path, subfolder) if subfolder else path
        if not os.path.isdir(directory):
            error = NotADirectoryError if os.path.exists(directory) else FileNotFoundError
            raise error(
                f"{name}: {directory!r} is not a directory: pass the folder that save_pretrained wrote (config.json and "
                "model.safetensors or pytorch_model.bin); Hub ids are not downloaded here, fetch one with "
                "huggingface_hub.snapshot_download(repo_id) and pass its folder"
            )
        overrides = {k: v for k, v in kwargs.items() if k not in _ACCEPTED_FOR_LOCAL_DIRECTORIES}
        if config is None or isinstance(config, (str, os.PathLike)):
            saved = ReformerConfig.from_pretrained(directory if config is None else config)
            unknown = sorted(set(overrides) - set(saved.to_dict()) - {"num_labels"})
            if unknown:
                raise TypeError(
                    f"{name} got unexpected keyword arguments {unknown}: they are neither ReformerConfig fields nor "
                    f"from_pretrained options (see {name}.__doc__)"
                )
            config = saved.with_overrides(overrides) if overrides else saved
        elif isinstance(config, ReformerConfig):
            if overrides:
                raise TypeError(
                    f"{name} got unexpected keyword arguments {sorted(overrides)}: with config= given, config fields are "
                    "not overridden here; set them on that config"
                )
            config = copy.deepcopy(config)
        else:
            raise TypeError(f"{name}: config must be a ReformerConfig, a path or None, got {type(config).__name__}")
        config.name_or_path = path
        device = _single_device(name, device_map)

        if state_dict is None:
            state_dict = load_checkpoint_state_dict(directory, use_safetensors)
        requested = _requested_dtype(name, dtype, torch_dtype)
        if requested in (None, "auto"):
            stored = next((t.dtype for t in state_dict.values() if t.is_floating_point()), torch.float32)
            requested = config.dtype or stored
        dtype = _resolve_dtype(name, requested)
        config.dtype = str(dtype).removeprefix("torch.")

        model = cls(config).to(dtype)
        state = model._adapt_state_dict(state_dict)
        expected = model.state_dict()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        # Keys under a top-level module this model does not have belong to another head (lm_head.* of
        # an LM checkpoint in a classifier); a missing or extra key of the base model is a config mismatch.
        modules = {key.split(".", 1)[0] for key in expected}
        prefix = cls.base_model_prefix + "."
        base_missing = [k for k in missing if k.startswith(prefix) or cls.base_model_prefix not in modules]
        base_unexpected = [k for k in unexpected if k.split(".", 1)[0] in modules]
        if base_missing or base_unexpected:
            raise ValueError(
                f"{name}({directory!r}): the checkpoint does not match the config: missing keys {base_missing[:8]}"
                f"{'...' if len(base_missing) > 8 else ''}, unexpected keys {base_unexpected[:8]}"
                f"{'...' if len(base_unexpected) > 8 else ''}; check that config.json belongs to these weights"
            )
        mismatched = _check_checkpoint_tensors(name, directory, state, expected, ignore_mismatched_sizes)
        for key, _, _ in mismatched:
            del state[key]
        if unexpected:
            warnings.warn(f"{name}: checkpoint weights {unexpected} belong to another head and were not used", stacklevel=2)
        if missing:
            warnings.warn(f"{name}: newly initialized head weights {missing}; train them before use", stacklevel=2)
        if mismatched:
            shapes = [f"{key} (checkpoint {tuple(stored)}, model {tuple(wanted)})" for key, stored, wanted in mismatched]
            warnings.warn(
                f"{name}: newly initialized weights {shapes}, whose shape differs from the checkpoint's "
                "(ignore_mismatched_sizes=True); train them before use", stacklevel=2,
            )
        model.load_state_dict(state, strict=False)
        model.to(device).eval()
        if output_loading_info:
            return model, {"missing_keys": set(missing), "unexpected_keys": set(unexpected),
                           "mismatched_keys": set(mismatched), "error_msgs": []}
        return model

    def _adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map a checkpoint of the base model / of a model with a head onto this model's keys."""
        prefix = self.base_model_prefix + "."
        has_base = hasattr(self, self.base_model_prefix)
        if has_base and not any(k.startswith(prefix) for k in state):
            state = {prefix + k: v for k, v in state.items()}
        elif not has_base and any(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
        state = dict(state)
        if has_base and hasattr(self, "lm_head"):
            fill_lm_head_bias(state, "lm_head.")
        return state


# The keywords of transformers' from_pretrained that are accepted and do nothing for a local directory
# (see ReformerPreTrainedModel.from_pretrained).
_ACCEPTED_FOR_LOCAL_DIRECTORIES = frozenset(
    {"cache_dir", "force_download", "local_files_only", "token", "proxies", "trust_remote_code", "low_cpu_mem_usage"}
)


def _requested_dtype(name: str, dtype, torch_dtype):
    """``dtype``, or its older name ``torch_dtype``; both only when they agree."""
    same = str(dtype).removeprefix("torch.") == str(torch_dtype).removeprefix("torch.")
    if dtype is not None and torch_dtype is not None and not same:
        raise ValueError(f"{name}: dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree: pass dtype alone")
    return dtype if dtype is not None else torch_dtype


def _resolve_dtype(name: str, dtype: torch.dtype | str) -> torch.dtype:
    """A float torch.dtype from a torch.dtype or its name ("float16", "torch.bfloat16")."""
    resolved = getattr(torch, dtype.removeprefix("torch."), None) if isinstance(dtype, str) else dtype
    if not isinstance(resolved, torch.dtype) or str(resolved).removeprefix("torch.") not in FLOAT_DTYPES:
        raise ValueError(f"{name}: dtype={dtype!r} is not a float dtype the model can hold: pass one of {FLOAT_DTYPES} or 'auto'")
    return resolved


def _single_device(name: str, device_map) -> torch.device:
    """The one device of ``device_map`` (None: CPU). Spreading the layers over devices ("auto",
    "balanced", a per-module dict) is accelerate's big-model dispatch, which this package does not do."""
    if isinstance(device_map, dict) and set(device_map) == {""}:
        device_map = device_map[""]
    if device_map is None:
        return torch.device("cpu")
    if isinstance(device_map, (int, torch.device)) and not isinstance(device_map, bool) or (
        isinstance(device_map, str) and device_map not in ("auto", "balanced", "balanced_low_0", "sequential")
    ):
        try:
            return torch.device(device_map)
        except (RuntimeError, TypeError):
            pass
    raise ValueError(
        f"{name}: device_map={device_map!r} is not one device: this package places the whole model on one device; "
        "pass device_map='cpu', 'cuda', 'cuda:1', an index, or call model.to(device)"
    )


def _lcm_and_min_chunk(config: ReformerConfig) -> tuple[int, int]:
    chunks = [getattr(config, f"{kind}_attn_chunk_length") for kind in set(config.attn_layers)]
    return math.lcm(*chunks), min(chunks)


def layout_len(config: ReformerConfig, seq_len: int) -> int:
    """The length the layers see for an input of ``seq_len``: padded to a multiple of the chunk
    lengths' lcm when longer than the shortest chunk."""
    lcm_chunk, min_chunk = _lcm_and_min_chunk(config)
    return seq_len + ((-seq_len) % lcm_chunk if seq_len > min_chunk else 0)


class ReformerModel(ReformerPreTrainedModel):
    """Embeddings -> reversible LSH/local layers -> LayerNorm: (B, L) ids -> (B, L, 2 * hidden_size)."""

    def __init__(self, config: ReformerConfig):
        super().__init__(config)
        self.embeddings = ReformerEmbeddings(config)
        self.encoder = ReformerEncoder(config)
        self.post_init()

    @_extension.in_cpu_memory_pool
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        num_hashes: int | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        past_buckets_states: ReformerDecodingCache | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
    ) -> ReformerModelOutput | tuple:
        """input_ids (B, L) int64 in [0, vocab_size), or inputs_embeds (B, L, hidden_size);
        attention_mask (B, L), 0 = padding; position_ids (B, L) or (L,); num_hashes overrides
        config.num_hashes. Any L <= max_position_embeddings (and <= prod(axial_pos_shape)).
        ``output_attentions``: per layer, the attention probabilities (before dropout) in
        transformers' layout, over the internally padded length (as transformers).

        Cached decoding (eval mode, causal models): ``use_cache=True`` with no or an empty
        ``past_buckets_states`` runs the forward on the prompt and returns, as
        ``past_buckets_states``, a ReformerDecodingCache holding every layer's projections of it;
        passing that cache back with the next tokens (B, n) (attention_mask None or (B, cached + n),
        of which the last n entries are used; no position_ids) runs only those positions, each
        layer attending through its cache, and appends them. Each step computes exactly what the
        layers' full forward computes at that position from the cached layer inputs (same
        rotations, bucket count for the current length, sorted chunks, masks), for every row on its
        own. It equals a full recompute on the whole prefix where the full forward is
        prefix-stable: every position for local-only models and for prefixes that fit in one LSH
        chunk; the last position when the only LSH layer is the top one. Otherwise it does not and
        cannot: appending a token re-sorts an LSH layer's buckets and shifts the chunks of the
        earlier tokens, so a full forward changes their states, which a cache of past states keeps.
        ``use_cache=None`` means False (transformers reads config.use_cache, True by default, which
        would make every eval forward build a cache).

        Returns a ReformerModelOutput, or with ``return_dict=False`` (default: config.use_return_dict)
        the tuple of its fields that are set, in transformers' order.
        """
        if use_cache or past_buckets_states is not None:
            return self._output(self._cached_forward(
                input_ids, attention_mask, position_ids, inputs_embeds, num_hashes, output_hidden_states, output_attentions,
                ReformerDecodingCache() if past_buckets_states is None else past_buckets_states,
            ), return_dict)
        return self._output(self._forward(
            input_ids, attention_mask, position_ids, inputs_embeds, num_hashes, output_hidden_states, output_attentions, None,
        ), return_dict)

    def _forward(
        self, input_ids, attention_mask, position_ids, inputs_embeds, num_hashes, output_hidden_states, output_attentions,
        cache: ReformerDecodingCache | None,
    ) -> ReformerModelOutput:
        """``forward`` without a cache, or the prompt of cached decoding: with ``cache`` (empty), every
        layer also stores its projections of the prompt in it (see ReformerEncoder.fill_caches)."""
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        batch, seq_len, device = self._check_inputs(input_ids, attention_mask, position_ids, inputs_embeds, num_hashes)
        default_positions = position_ids is None
        if default_positions:
            position_ids = torch.arange(seq_len, device=device).expand(batch, seq_len)
        else:
            position_ids = position_ids.long().expand(batch, seq_len)

        padding = layout_len(self.config, seq_len) - seq_len
        if padding:
            input_ids, inputs_embeds, attention_mask, position_ids = self._pad(
                input_ids, inputs_embeds, attention_mask, position_ids, seq_len, padding, _lcm_and_min_chunk(self.config)[0],
                default_positions,
            )
        if attention_mask is not None:
            attention_mask = attention_mask.bool()

        embeddings = self.embeddings(input_ids.long() if input_ids is not None else None, position_ids, inputs_embeds)
        all_hidden_states: list[torch.Tensor] | None = [] if output_hidden_states else None
        all_attentions: list[torch.Tensor] | None = [] if output_attentions else None
        if cache is None:
            sequence_output = self.encoder(embeddings, attention_mask, num_hashes, all_hidden_states, all_attentions)
        else:
            cache.reserve(seq_len)
            cache.layers = [DecodingCache() for _ in self.encoder.layers]
            sequence_output = self.encoder.fill_caches(
                embeddings, cache.layers, attention_mask, num_hashes, seq_len, cache.capacity, all_hidden_states, all_attentions,
            )
        hidden_states = None
        if all_hidden_states is not None:
            hidden_states = tuple(h[:, :seq_len] for h in all_hidden_states)
        return ReformerModelOutput(
            last_hidden_state=sequence_output[:, :seq_len],
            hidden_states=hidden_states,
            attentions=None if all_attentions is None else tuple(all_attentions),
        )

    def _cached_forward(
        self, input_ids, attention_mask, position_ids, inputs_embeds, num_hashes, output_hidden_states, output_attentions,
        cache: ReformerDecodingCache,
    ) -> ReformerModelOutput:
        if not isinstance(cache, ReformerDecodingCache):
            raise TypeError(
                f"past_buckets_states must be the ReformerDecodingCache of an earlier use_cache=True call, got "
                f"{type(cache).__name__} (transformers' caches hold other things and do not load here)"
            )
        if self.training:
            raise ValueError("use_cache / past_buckets_states are for inference: call model.eval() first")
        if not self.config.is_decoder:
            raise ValueError("cached decoding needs a causal model: config.is_decoder=True")
        if position_ids is not None:
            raise ValueError("cached decoding places the tokens at positions 0, 1, ...: pass position_ids=None")
        if cache.length == 0:
            with torch.no_grad():
                outputs = self._forward(
                    input_ids, attention_mask, None, inputs_embeds, num_hashes, output_hidden_states, output_attentions, cache,
                )
            batch, seq_len = outputs.last_hidden_state.shape[:2]
            cache.attention_mask = torch.ones(batch, cache.capacity, dtype=torch.bool, device=outputs.last_hidden_state.device)
            if attention_mask is not None:
                cache.attention_mask[:, :seq_len] = attention_mask.bool()
            cache.owner = self._cache_owner()
            cache.length = seq_len
            outputs.past_buckets_states = cache
            return outputs
        if output_hidden_states or output_attentions:
            raise ValueError("hidden_states / attentions are not returned by cached decoding steps: pass output_*=False")
        batch, n_new, device = self._check_inputs(input_ids, None, None, inputs_embeds, num_hashes)
        self._check_cache(cache, batch, device)
        total = cache.length + n_new
        limit = self.config.max_position_embeddings
        if self.config.axial_pos_embds:
            limit = min(limit, math.prod(self.config.axial_pos_shape))
        if total > limit:
            raise ValueError(
                f"{'input_ids' if input_ids is not None else 'inputs_embeds'}: {n_new} new tokens after the {cache.length} in "
                f"past_buckets_states make {total} > the {limit} positions the model has (max_position_embeddings / "
                "prod(axial_pos_shape)): pass fewer tokens, or start a new cache (past_buckets_states=None) from a shorter prompt"
            )
        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != (batch, total):
                shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
                raise ValueError(f"attention_mask must be (batch, cached + new) = {(batch, total)} with a cache, got {shape}")
            check_attention_mask(attention_mask)
        cache.reserve(total)
        steps = []
        for j in range(n_new):
            position = cache.length
            cache.attention_mask[:, position] = True if attention_mask is None else attention_mask[:, position].bool()
            embeddings = self.embeddings(
                None if input_ids is None else input_ids[:, j : j + 1].long(),
                torch.full((batch, 1), position, dtype=torch.long, device=device),
                None if inputs_embeds is None else inputs_embeds[:, j : j + 1],
            )
            steps.append(self.encoder.decode_step(
                embeddings, cache.layers, cache.attention_mask[:, : position + 1], layout_len(self.config, position + 1),
                num_hashes, cache.capacity,
            ))
            cache.length += 1
        return ReformerModelOutput(last_hidden_state=torch.cat(steps, dim=1), past_buckets_states=cache)

    def _cache_owner(self) -> tuple:
        """What a cache filled by this model depends on, besides the batch: the layer types and
        their projections' shapes, dtype and device."""
        weight = self.embeddings.word_embeddings.weight
        config = self.config
        return (
            tuple(config.attn_layers), config.num_attention_heads, config.attention_head_size, config.hidden_size,
            weight.dtype, weight.device,
        )

    def _check_cache(self, cache: ReformerDecodingCache, batch: int, device: torch.device) -> None:
        """Refuse, before anything is written to it, a past_buckets_states that another model (other
        layers, heads, head size, dtype or device) or another batch filled: each layer would read
        the wrong layer's keys, or zip would drop layers, and the logits would be silently wrong."""
        owner, expected = getattr(cache, "owner", None), self._cache_owner()
        names = ("attn_layers", "num_attention_heads", "attention_head_size", "hidden_size", "dtype", "device")
        if owner is not None and owner != expected:
            differ = [f"{name} {mine!r} (cache: {theirs!r})" for name, mine, theirs in zip(names, expected, owner) if mine != theirs]
            raise ValueError(
                f"past_buckets_states was filled by another model: this model has {', '.join(differ)}; pass the cache "
                "this model returned with use_cache=True, or start a new one (past_buckets_states=None)"
            )
        heads, head_size = self.config.num_attention_heads, self.config.attention_head_size
        layers = cache.layers
        if not isinstance(layers, list) or len(layers) != len(self.encoder.layers) or cache.attention_mask is None:
            held = len(layers) if isinstance(layers, list) else type(layers).__name__
            raise ValueError(
                f"past_buckets_states holds {held} layers but this model has {len(self.encoder.layers)}: pass the cache "
                "this model returned with use_cache=True"
            )
        if cache.attention_mask.shape[0] != batch:
            raise ValueError(
                f"past_buckets_states holds {cache.attention_mask.shape[0]} rows but the input has {batch}: pass one row "
                "per cached row (the same batch as the prompt)"
            )
        for i, layer in enumerate(layers):
            keys = getattr(layer, "keys", None)
            if not isinstance(layer, DecodingCache) or not isinstance(keys, torch.Tensor) or layer.length != cache.length \
                    or keys.shape[:2] != (batch, heads) or keys.shape[3] != head_size or keys.device != device:
                got = f"{type(keys).__name__} {tuple(keys.shape)} on {keys.device}" if isinstance(keys, torch.Tensor) \
                    else type(layer).__name__
                raise ValueError(
                    f"past_buckets_states layer {i} holds {got} for {getattr(layer, 'length', '?')} positions, but this "
                    f"model needs (batch={batch}, heads={heads}, positions, head_size={head_size}) on {device} for "
                    f"{cache.length} positions: pass the cache this model returned with use_cache=True"
                )

    def _check_inputs(self, input_ids, attention_mask, position_ids, inputs_embeds, num_hashes) -> tuple[int, int, torch.device]:
        config = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids (B, L) or inputs_embeds (B, L, hidden_size)")
        if input_ids is not None:
            if not isinstance(input_ids, torch.Tensor):
                raise TypeError(f"input_ids must be a torch.Tensor of token ids, got {type(input_ids).__name__}")
            if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
                raise TypeError(f"input_ids must hold integer token ids (int64), got {input_ids.dtype}; pass vectors as inputs_embeds")
            if input_ids.dim() != 2:
                raise ValueError(f"input_ids must be (batch, seq_len), got shape {tuple(input_ids.shape)}; add a batch dimension with input_ids[None]")
            if input_ids.numel() and functional.checks_values(input_ids) and (input_ids.min() < 0 or input_ids.max() >= config.vocab_size):
                raise ValueError(
                    f"input_ids span [{input_ids.min().item()}, {input_ids.max().item()}] but must lie in [0, vocab_size="
                    f"{config.vocab_size}): check the tokenizer or raise config.vocab_size"
                )
            batch, seq_len = input_ids.shape
            device = input_ids.device
        else:
            if not isinstance(inputs_embeds, torch.Tensor) or not inputs_embeds.is_floating_point():
                raise TypeError("inputs_embeds must be a floating-point torch.Tensor (batch, seq_len, hidden_size)")
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != config.hidden_size:
                raise ValueError(f"inputs_embeds must be (batch, seq_len, {config.hidden_size}), got shape {tuple(inputs_embeds.shape)}")
            # A narrower dtype is promoted by the first add (as today); a wider one (float64 into a
            # float32 model) reaches LayerNorm with mismatched dtypes, which torch names obscurely.
            model_dtype = self.embeddings.word_embeddings.weight.dtype
            if torch.promote_types(inputs_embeds.dtype, model_dtype) != model_dtype \
                    and not torch.is_autocast_enabled(inputs_embeds.device.type):
                raise TypeError(
                    f"inputs_embeds is {inputs_embeds.dtype} but the model is {model_dtype}: pass "
                    f"inputs_embeds.to({model_dtype}) or convert the model with model.to({inputs_embeds.dtype})"
                )
            batch, seq_len = inputs_embeds.shape[:2]
            device = inputs_embeds.device
        if seq_len == 0 or batch == 0:
            raise ValueError(f"the input is empty (batch {batch}, seq_len {seq_len}): pass at least one token")
        if seq_len > config.max_position_embeddings:
            raise ValueError(
                f"seq_len {seq_len} > max_position_embeddings {config.max_position_embeddings}: raise "
                "max_position_embeddings or shorten the input"
            )
        if config.axial_pos_embds and seq_len > math.prod(config.axial_pos_shape):
            raise ValueError(
                f"seq_len {seq_len} > prod(axial_pos_shape {config.axial_pos_shape}) = {math.prod(config.axial_pos_shape)}: "
                "enlarge axial_pos_shape or shorten the input"
            )
        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != (batch, seq_len):
                shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
                raise ValueError(f"attention_mask must be a tensor of shape (batch, seq_len) = {(batch, seq_len)}, got {shape}")
            check_attention_mask(attention_mask)
        if position_ids is not None:
            if not isinstance(position_ids, torch.Tensor) or position_ids.dtype.is_floating_point or position_ids.dtype.is_complex \
                    or position_ids.dtype == torch.bool or position_ids.dim() not in (1, 2) or position_ids.shape[-1] != seq_len \
                    or (position_ids.dim() == 2 and position_ids.shape[0] not in (1, batch)):
                got = f"{position_ids.dtype} {tuple(position_ids.shape)}" if isinstance(position_ids, torch.Tensor) \
                    else type(position_ids).__name__
                raise ValueError(
                    f"position_ids must be an integer tensor of shape (batch, seq_len) = {(batch, seq_len)} or (seq_len,), "
                    f"got {got}: pass torch.arange(seq_len) or leave position_ids=None"
                )
            if functional.checks_values(position_ids) and (position_ids.min() < 0 or position_ids.max() >= config.max_position_embeddings):
                raise ValueError(
                    f"position_ids span [{position_ids.min().item()}, {position_ids.max().item()}] outside "
                    f"[0, max_position_embeddings={config.max_position_embeddings})"
                )
        if num_hashes is not None and (isinstance(num_hashes, bool) or not isinstance(num_hashes, int) or num_hashes < 1):
            raise ValueError(f"num_hashes must be a positive int or None (config.num_hashes), got {num_hashes!r}")
        return batch, seq_len, device

    def _pad(self, input_ids, inputs_embeds, attention_mask, position_ids, seq_len, padding, lcm_chunk, default_positions):
        """Pad to a multiple of the chunk lengths' lcm with masked pad tokens, as transformers does in eval."""
        padded_len = seq_len + padding
        limit = self.config.max_position_embeddings
        if self.config.axial_pos_embds:
            limit = min(limit, math.prod(self.config.axial_pos_shape))
        if padded_len > limit:
            raise ValueError(
                f"seq_len {seq_len} must be padded to {padded_len} (a multiple of the attention chunk lengths' lcm "
                f"{lcm_chunk}), which exceeds the {limit} positions the model has: shorten the input to a multiple of "
                f"{lcm_chunk} or raise max_position_embeddings/axial_pos_shape"
            )
        batch = position_ids.shape[0]
        device = position_ids.device
        pad_id = self.config.pad_token_id if self.config.pad_token_id is not None else 0
        pad_ids = torch.full((batch, padding), pad_id, dtype=torch.long, device=device)
        if input_ids is not None:
            input_ids = torch.cat([input_ids.long(), pad_ids], dim=1)
        else:
            inputs_embeds = torch.cat([inputs_embeds, self.embeddings.word_embeddings(pad_ids).to(inputs_embeds.dtype)], dim=1)
        if attention_mask is None:
            attention_mask = torch.ones(batch, seq_len, dtype=torch.bool, device=device)
        attention_mask = torch.cat([attention_mask.bool(), torch.zeros(batch, padding, dtype=torch.bool, device=device)], dim=1)
        # Padded positions are masked keys and cropped queries: any valid position id works (where
        # given ids cannot be read, inside torch.compile or on a GPU without debug checks, the last
        # one repeated).
        if default_positions or (
            functional.checks_values(position_ids) and bool((position_ids == torch.arange(seq_len, device=device)).all())
        ):
            position_ids = torch.arange(padded_len, device=device).expand(batch, padded_len)
        else:
            position_ids = torch.cat([position_ids, position_ids[:, -1:].expand(batch, padding)], dim=1)
        return input_ids, inputs_embeds, attention_mask, position_ids


def fill_lm_head_bias(state: dict[str, torch.Tensor], prefix: str) -> None:
    """Give a state dict that names the LM head's bias one way the other name too, in place.

    transformers' Reformer LM head has a ``bias`` parameter and, depending on its version, a decoder
    bias tied to it (4.x: both names in a checkpoint), none (5.0 to about 5.20: ``bias`` alone, which
    its logits never use) or a separate one (later 5.x: both names). Ours adds ``decoder.bias`` to
    the logits, so a checkpoint with either name loads, and one with only ``bias`` gets that as the
    logits' bias (zeros, as initialized, for a model made by a version whose logits have none).
    """
    for present, absent in (("bias", "decoder.bias"), ("decoder.bias", "bias")):
        if prefix + present in state and prefix + absent not in state:
            state[prefix + absent] = state[prefix + present]


class ReformerOnlyLMHead(nn.Module):
    """Linear(2 * hidden_size, vocab_size), applied ``chunk_size_lm_head`` positions at a time.
    ``bias`` mirrors transformers' separate (unused) parameter so that state dicts match."""

    def __init__(self, config: ReformerConfig):
        super().__init__()
        self.chunk_size_lm_head = config.chunk_size_lm_head
        self.decoder = nn.Linear(2 * config.hidden_size, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # load_state_dict hands every module the same copy of the caller's dict, so the name filled
        # here reaches self.decoder (loaded after this module) and the caller's dict stays as it was.
        fill_lm_head_bias(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.chunk_size_lm_head == 0:
            return self.decoder(hidden_states)
        return torch.cat([self.decoder(chunk) for chunk in hidden_states.split(self.chunk_size_lm_head, dim=1)], dim=1)

    def loss(self, hidden_states: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the head's logits against ``labels`` (-100 = ignored), computed in
        chunks of tokens without the (tokens x vocab) logits."""
        return linear_cross_entropy(
            hidden_states.reshape(-1, hidden_states.shape[-1]), self.decoder.weight, self.decoder.bias, labels.reshape(-1),
            chunk_size=self.chunk_size_lm_head, ignore_index=IGNORE_INDEX,
        )


def _wants_logits(model: nn.Module, labels: torch.Tensor | None, return_logits: bool | None) -> bool:
    """The LM heads' logits rule (see ReformerModelWithLMHead.forward)."""
    if return_logits is not None:
        return bool(return_logits)
    return labels is None or not model.training


def _check_labels(labels: torch.Tensor, shape: tuple[int, ...], what: str) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.shape != shape:
        got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must be an integer tensor of shape {shape} ({what}), got {got}")
    return labels.long()


class ReformerModelWithLMHead(ReformerPreTrainedModel):
    """Causal language model: ReformerModel + LM head. With ``labels`` (B, L) the loss is the
    next-token cross-entropy (labels shifted by one inside, -100 ignored), computed in chunks
    without the (tokens x vocab) logits; see ``forward`` for when the logits are returned."""

    def __init__(self, config: ReformerConfig):
        super().__init__(config)
        if not config.is_decoder:
            raise ValueError("ReformerModelWithLMHead needs config.is_decoder=True (causal attention); set it in the config")
        for kind in ("local", "lsh"):
            if kind in config.attn_layers and getattr(config, f"{kind}_num_chunks_after") != 0:
                raise ValueError(
                    f"ReformerModelWithLMHead is causal: config.{kind}_num_chunks_after must be 0, got "
                    f"{getattr(config, f'{kind}_num_chunks_after')}"
                )
        self.reformer = ReformerModel(config)
        self.lm_head = ReformerOnlyLMHead(config)
        self.post_init()

    @_extension.in_cpu_memory_pool
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        num_hashes: int | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        labels: torch.Tensor | None = None,
        return_logits: bool | None = None,
        past_buckets_states: ReformerDecodingCache | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
    ) -> ReformerModelWithLMHeadOutput | tuple:
        """See ReformerModel.forward for the inputs and cached decoding (``use_cache``,
        ``past_buckets_states``).

        ``return_logits`` (default None): the (B, L, vocab) logits are returned without labels, and
        with labels in eval mode (``not self.training``, as evaluation loops need them) or when
        ``return_logits=True``. In training mode with labels they are skipped by default: the loss
        is computed in chunks without them, which is this package's memory saving (transformers
        always returns them); ``return_logits=False`` skips them in eval too.
        With ``return_dict=False`` (default: config.use_return_dict): the tuple (loss, logits, ...)
        of the fields that are set, as transformers.
        """
        outputs = self.reformer(
            input_ids, attention_mask, position_ids, inputs_embeds, num_hashes, output_hidden_states, output_attentions,
            past_buckets_states, use_cache, return_dict=True,
        )
        hidden = outputs.last_hidden_state
        loss = None
        if labels is not None:
            labels = _check_labels(labels, tuple(hidden.shape[:2]), "one token id per input position")
            loss = self.lm_head.loss(hidden[:, :-1], labels[:, 1:])
        logits = self.lm_head(hidden) if _wants_logits(self, labels, return_logits) else None
        return self._output(ReformerModelWithLMHeadOutput(
            loss=loss, logits=logits, past_buckets_states=outputs.past_buckets_states, hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        ), return_dict)

    def generate(
        self,
        inputs: torch.Tensor | None = None,
        max_new_tokens: int | None = None,
        *,
        input_ids: torch.Tensor | None = None,
        max_length: int | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        attention_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> torch.LongTensor:
        """Continue the prompts ``inputs`` (B, prompt_len), also accepted as ``input_ids`` as in
        transformers, by up to ``max_new_tokens`` tokens: returns (B, prompt_len + n_new) int64,
        n_new <= max_new_tokens (fewer when every row has produced an ``eos_token_id``; finished rows
        are filled with ``pad_token_id``, default config.pad_token_id, else the first eos id).
        Without a prompt, generation starts from config.bos_token_id (one row, as transformers).
        ``max_length`` bounds prompt + new tokens instead (transformers' older limit;
        ``max_new_tokens`` wins when both are given; neither: 20 new tokens).

        Greedy (``do_sample=False``: the argmax) or sampled from softmax(logits / temperature)
        restricted to the ``top_k`` most likely tokens and the ``top_p`` nucleus, drawn with
        ``generator`` (the same generator state gives the same tokens). ``attention_mask`` (B,
        prompt_len), 0 = padding (left-pad prompts of unequal length); generated tokens count as 1.
        Runs without autograd. ``use_cache=True`` (eval mode only): the prompt runs once and each
        new token is one cached step (see ``forward``), with the cache allocated once for prompt +
        max_new_tokens positions; greedy output then equals ``use_cache=False`` (a full forward on
        the whole prefix per token, in the model's current mode) wherever the full forward is
        prefix-stable (see ``ReformerModel.forward``), and differs from it slightly elsewhere.
        """
        if inputs is not None and input_ids is not None:
            raise ValueError("generate: pass the prompt once, as inputs or as input_ids, not both")
        prompt = inputs if inputs is not None else input_ids
        if prompt is None:
            if self.config.bos_token_id is None:
                raise ValueError(
                    "generate: no prompt and config.bos_token_id is None: pass input_ids (batch, prompt_len) or set "
                    "config.bos_token_id to start from it"
                )
            prompt = torch.full((1, 1), self.config.bos_token_id, dtype=torch.long, device=self.device)
        if max_new_tokens is None and max_length is not None:
            if isinstance(max_length, bool) or not isinstance(max_length, int):
                raise ValueError(f"generate: max_length must be an int (prompt + new tokens), got {max_length!r}")
            prompt_len = prompt.shape[-1] if isinstance(prompt, torch.Tensor) else 0
            if max_length < prompt_len:
                raise ValueError(
                    f"generate: max_length {max_length} < the prompt's {prompt_len} tokens: raise max_length or pass max_new_tokens"
                )
            max_new_tokens = max_length - prompt_len
        return generation.generate(
            self, prompt, 20 if max_new_tokens is None else max_new_tokens, do_sample=do_sample, temperature=temperature,
            top_k=top_k, top_p=top_p, eos_token_id=eos_token_id, pad_token_id=pad_token_id, attention_mask=attention_mask,
            generator=generator, use_cache=use_cache,
        )


class ReformerForMaskedLM(ReformerPreTrainedModel):
    """Bidirectional ReformerModel + LM head; with ``labels`` (B, L) the loss is the cross-entropy
    at every position whose label is not -100 (computed in chunks). The logits follow
    ReformerModelWithLMHead.forward's rule (skipped by default in training mode with labels)."""

    def __init__(self, config: ReformerConfig):
        super().__init__(config)
        if config.is_decoder:
            raise ValueError("ReformerForMaskedLM needs config.is_decoder=False (bidirectional attention); set it in the config")
        self.reformer = ReformerModel(config)
        self.lm_head = ReformerOnlyLMHead(config)
        self.post_init()

    @_extension.in_cpu_memory_pool
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        num_hashes: int | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_logits: bool | None = None,
        return_dict: bool | None = None,
    ) -> MaskedLMOutput | tuple:
        outputs = self.reformer(
            input_ids, attention_mask, position_ids, inputs_embeds, num_hashes, output_hidden_states, output_attentions,
            return_dict=True,
        )
        hidden = outputs.last_hidden_state
        loss = None
        if labels is not None:
            loss = self.lm_head.loss(hidden, _check_labels(labels, tuple(hidden.shape[:2]), "one token id per input position"))
        logits = self.lm_head(hidden) if _wants_logits(self, labels, return_logits) else None
        return self._output(
            MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions),
            return_dict,
        )


def _check_classification_labels(labels: torch.Tensor, problem_type: str, batch: int, num_labels: int) -> None:
    """Labels that fit the loss of ``problem_type``; torch's own errors (IndexError 'Target 5 is out
    of bounds', size mismatches) name neither the argument nor the fix."""
    if problem_type == "single_label_classification":
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool or labels.numel() != batch:
            raise ValueError(
                f"labels must be one class id per row ({batch},) for single_label_classification, got {labels.dtype} "
                f"{tuple(labels.shape)}"
            )
        if functional.checks_values(labels):
            bad = labels[(labels != IGNORE_INDEX) & ((labels < 0) | (labels >= num_labels))]
            if bad.numel():
                raise ValueError(
                    f"labels holds class {bad[0].item()} outside [0, num_labels={num_labels}): use -100 for rows without "
                    "a label or raise config.num_labels"
                )
    elif problem_type == "regression":
        if labels.dtype.is_complex or labels.numel() != batch * num_labels:
            raise ValueError(f"labels must hold {num_labels} value(s) per row for regression, got {labels.dtype} {tuple(labels.shape)}")
    elif tuple(labels.shape) != (batch, num_labels) or labels.dtype.is_complex:
        raise ValueError(
            f"labels must be (batch, num_labels) = {(batch, num_labels)} for multi_label_classification, got "
            f"{labels.dtype} {tuple(labels.shape)}"
        )


class ReformerClassificationHead(nn.Module):
    """The first position's output -> dropout -> Linear -> tanh -> dropout -> Linear(num_labels)."""

    def __init__(self, config: ReformerConfig):
        super().__init__()
        self.dense = nn.Linear(2 * config.hidden_size, config.hidden_size)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = self.dropout(hidden_states[:, 0])
        x = self.dropout(torch.tanh(self.dense(x)))
        return self.out_proj(x)


class ReformerForSequenceClassification(ReformerPreTrainedModel):
    """Classification/regression from the first position; the loss follows config.problem_type
    (or, when unset, the labels' dtype and num_labels, as transformers, without writing the config)."""

    def __init__(self, config: ReformerConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.reformer = ReformerModel(config)
        self.classifier = ReformerClassificationHead(config)
        self.post_init()

    @_extension.in_cpu_memory_pool
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        num_hashes: int | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> SequenceClassifierOutput | tuple:
        """The logits (B, num_labels) are always returned (they are small); ``return_dict=False``
        gives the tuple (loss, logits, ...) of the fields that are set."""
        outputs = self.reformer(
            input_ids, attention_mask, position_ids, inputs_embeds, num_hashes, output_hidden_states, output_attentions,
            return_dict=True,
        )
        logits = self.classifier(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            if not isinstance(labels, torch.Tensor):
                raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
            problem_type = self.config.problem_type
            if problem_type is None:
                if self.num_labels == 1:
                    problem_type = "regression"
                elif labels.dtype in (torch.long, torch.int):
                    problem_type = "single_label_classification"
                else:
                    problem_type = "multi_label_classification"
            _check_classification_labels(labels, problem_type, logits.shape[0], self.num_labels)
            if problem_type == "regression":
                loss = nn.functional.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype)) if self.num_labels == 1 \
                    else nn.functional.mse_loss(logits, labels.to(logits.dtype))
            elif problem_type == "single_label_classification":
                loss = nn.functional.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1).long())
            else:
                loss = nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        return self._output(
            SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions),
            return_dict,
        )


class ReformerForQuestionAnswering(ReformerPreTrainedModel):
    """Span extraction: per-position start and end logits; with start/end positions the loss is
    the mean of their cross-entropies (positions outside the input are ignored)."""

    def __init__(self, config: ReformerConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        if config.num_labels != 2:
            raise ValueError(f"ReformerForQuestionAnswering needs config.num_labels=2 (start and end), got {config.num_labels}")
        self.reformer = ReformerModel(config)
        self.qa_outputs = nn.Linear(2 * config.hidden_size, config.num_labels)
        self.post_init()

    @_extension.in_cpu_memory_pool
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        num_hashes: int | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> QuestionAnsweringModelOutput | tuple:
        """Start and end logits (B, L) are always returned; ``return_dict=False`` gives the tuple
        (loss, start_logits, end_logits, ...) of the fields that are set."""
        outputs = self.reformer(
            input_ids, attention_mask, position_ids, inputs_embeds, num_hashes, output_hidden_states, output_attentions,
            return_dict=True,
        )
        start_logits, end_logits = (t.squeeze(-1) for t in self.qa_outputs(outputs.last_hidden_state).split(1, dim=-1))
        loss = None
        if start_positions is not None and end_positions is not None:
            for name, positions in (("start_positions", start_positions), ("end_positions", end_positions)):
                if not isinstance(positions, torch.Tensor) or positions.dtype.is_floating_point or positions.dtype.is_complex \
                        or positions.dtype == torch.bool or positions.numel() != start_logits.shape[0]:
                    got = f"{positions.dtype} {tuple(positions.shape)}" if isinstance(positions, torch.Tensor) else type(positions).__name__
                    raise ValueError(f"{name} must be an integer tensor with one position per row ({start_logits.shape[0]},), got {got}")
            ignored = start_logits.shape[1]
            start = start_positions.reshape(-1).clamp(0, ignored)
            end = end_positions.reshape(-1).clamp(0, ignored)
            loss = (
                nn.functional.cross_entropy(start_logits, start, ignore_index=ignored)
                + nn.functional.cross_entropy(end_logits, end, ignore_index=ignored)
            ) / 2
        return self._output(QuestionAnsweringModelOutput(
            loss=loss, start_logits=start_logits, end_logits=end_logits, hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        ), return_dict)
