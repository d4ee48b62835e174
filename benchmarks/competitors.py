"""The competitors, each a function from a configuration to a prepared case, and the lists of
cases that set them side by side on one op (``ours_cases``, ``peer_case``, ``layer_cases``).

Every competitor of one configuration sees the same inputs and weights: ``generator_for`` seeds
a generator from the configuration, so each builder re-creates identical tensors. Ours runs through
the public API (``reformer_kernels.functional`` and ``reformer_kernels.nn``) on one backend; "auto"
is what a user gets. Peers: transformers' Reformer modules (the oracle semantics), reformer-pytorch
(and the local_attention package it uses), and dense PyTorch SDPA.
"""
from __future__ import annotations

import functools
import importlib
import zlib

import torch
import torch.nn.functional as F

from reformer_kernels import backends, functional, reference
from reformer_kernels import nn as ours_nn
from reformer_kernels.nn.attention import merge_heads, split_heads
from reformer_kernels.reference.hashing import bucket_factors

from . import flops
from .harness import Case, MissingPeer, NotAvailable, Prepared

# The backend ops each case of ours needs a kernel for.
NEEDED_KERNELS = {
    "lsh_hash": ("lsh_hash",),
    "bucket_sort": ("bucket_sort",),
    "lsh_hash_sort": ("lsh_hash_sort",),
    "lsh_attention": ("lsh_attention",),
    "lsh_layer": ("lsh_hash_sort", "lsh_attention"),
    "local_layer": ("local_attention",),
    "reversible_block": ("lsh_hash_sort", "lsh_attention"),
    "lm_head_loss": ("linear_cross_entropy",),
}
N_CHUNKS_BEFORE, N_CHUNKS_AFTER = 1, 0
# The projections of each attention layer, named as the modules name them.
LSH_PROJECTIONS, LOCAL_PROJECTIONS = ("query_key", "value"), ("query", "key", "value")


def peer(module: str):
    """Import a peer package or report it missing (it is a bench extra)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingPeer(f"{module} is not installed ({error}); pip install 'reformer_kernels[bench]'") from error


def our_backends(device: torch.device) -> list[str]:
    """"auto" and every backend of ours that targets ``device``'s tensors (Triton on a CPU would be
    its interpreter, whose timings mean nothing); whether each has a kernel is the case's to find out."""
    gpu_only = {"cuda", "triton"}
    return ["auto", *(name for name in backends.status() if (name != "cpu" if device.type == "cuda" else name not in gpu_only))]


def backend_label(op: str, backend: str, device: torch.device) -> str:
    """The backend column of a row: for "auto", also what it resolves to for the op's kernels
    here (e.g. "auto=cpu", or "auto=cpu+reference" where one kernel is missing)."""
    if backend != "auto":
        return backend
    resolved = sorted({backends.select(name, device, "auto")[0] for name in NEEDED_KERNELS[op]})
    return "auto=" + "+".join(resolved)


def require_kernels(op: str, backend: str) -> None:
    """Raise NotAvailable unless ``backend`` can run every backend op that ``op`` needs on this machine."""
    if backend == "auto":
        return
    available, reason = backends.status()[backend]
    if not available:
        raise NotAvailable(f"backend {backend} is not available here: {reason}")
    implemented = backends.implemented_ops()[backend]
    missing = [name for name in NEEDED_KERNELS[op] if name not in implemented]
    if missing:
        raise NotAvailable(f"backend {backend} has no kernel for {', '.join(missing)} yet")


def generator_for(config: dict, device: torch.device) -> torch.Generator:
    seed = zlib.crc32(repr(sorted((k, str(v)) for k, v in config.items())).encode())
    return torch.Generator(device=device).manual_seed(seed)


def randn(shape, config: dict, device: torch.device, gen: torch.Generator, requires_grad: bool = False) -> torch.Tensor:
    x = torch.randn(shape, generator=gen, device=device, dtype=torch.float32).to(config["dtype"])
    return x.requires_grad_(requires_grad)


def hidden_size(config: dict) -> int:
    return config["heads"] * config["head_dim"]


def n_buckets_for(config: dict):
    return functional.default_num_buckets(config["seq_len"], config["chunk_len"], config["seq_len"])


def config_num_buckets(config: dict):
    """n_buckets as a ReformerConfig field: transformers' config validation takes factors as a list."""
    n_buckets = n_buckets_for(config)
    return list(n_buckets) if isinstance(n_buckets, tuple) else n_buckets


def hf_config(config: dict, **overrides):
    transformers = peer("transformers")
    settings = dict(
        hidden_size=hidden_size(config),
        num_attention_heads=config["heads"],
        attention_head_size=config["head_dim"],
        num_hashes=config.get("n_hashes", 1),
        num_buckets=config_num_buckets(config),
        lsh_attn_chunk_length=config["chunk_len"],
        local_attn_chunk_length=config["chunk_len"],
        lsh_num_chunks_before=N_CHUNKS_BEFORE,
        lsh_num_chunks_after=N_CHUNKS_AFTER,
        local_num_chunks_before=N_CHUNKS_BEFORE,
        local_num_chunks_after=N_CHUNKS_AFTER,
        is_decoder=config["causal"],
        max_position_embeddings=config["seq_len"],
        lsh_attention_probs_dropout_prob=0.0,
        local_attention_probs_dropout_prob=0.0,
        hidden_dropout_prob=0.0,
    )
    settings.update(overrides)
    return transformers.ReformerConfig(**settings)


def train_callables(fn, leaves: list[torch.Tensor]) -> tuple:
    """(forward, train_step) for a function of ``leaves``: backward of the output's sum."""
    def train_step():
        for leaf in leaves:
            leaf.grad = None
        out = fn()
        (out[0] if isinstance(out, tuple) else out).float().sum().backward()

    return fn, train_step


def modules_to(modules, config: dict, device: torch.device) -> None:
    for module in modules:
        module.to(device=device, dtype=config["dtype"])


# ---- op level: hash, sort, LSH attention on given sorted_idx ------------------------------------

def _qk_v(config: dict, device: torch.device, requires_grad: bool = False):
    gen = generator_for(config, device)
    shape = (config["batch"], config["heads"], config["seq_len"], config["head_dim"])
    qk = randn(shape, config, device, gen, requires_grad)
    v = randn(shape, config, device, gen, requires_grad)
    rotations, n_buckets = _rotations(config, device, gen)
    return qk, v, rotations, n_buckets


def _rotations(config: dict, device: torch.device, gen: torch.Generator):
    """Random rotations (H, d, n_hashes, R / 2) for the configuration's default bucket count."""
    n_buckets = n_buckets_for(config)
    shape = (config["heads"], config["head_dim"], config["n_hashes"], sum(bucket_factors(n_buckets)) // 2)
    return randn(shape, config, device, gen), n_buckets


def _hash_flops(config: dict, n_buckets) -> float:
    return flops.hashing(config["batch"], config["heads"], config["seq_len"], config["head_dim"], config["n_hashes"], n_buckets)


def ours_hash(config: dict, device: torch.device, backend: str) -> Prepared:
    require_kernels("lsh_hash", backend)
    qk, _, rotations, n_buckets = _qk_v(config, device)
    return Prepared(lambda: functional.lsh_hash(qk, rotations, n_buckets, backend=backend), fwd_flops=_hash_flops(config, n_buckets))


def transformers_hash(config: dict, device: torch.device) -> Prepared:
    modeling = peer("transformers.models.reformer.modeling_reformer")
    qk, _, _, n_buckets = _qk_v(config, device)
    module = modeling.LSHSelfAttention(hf_config(config))
    modules_to([module], config, device)
    return Prepared(lambda: module._hash_vectors(qk, config["n_hashes"], None), fwd_flops=_hash_flops(config, n_buckets))


def reformer_pytorch_hash(config: dict, device: torch.device) -> Prepared:
    reformer_pytorch = peer("reformer_pytorch")
    qk, _, _, _ = _qk_v(config, device)
    # reformer-pytorch picks its own bucket count, seq_len / chunk (its bucket_size).
    n_buckets = config["seq_len"] // config["chunk_len"]
    attention = reformer_pytorch.LSHAttention(bucket_size=config["chunk_len"], n_hashes=config["n_hashes"], causal=config["causal"])
    vectors = qk.flatten(0, 1)
    return Prepared(lambda: attention.hash_vectors(n_buckets, vectors), fwd_flops=_hash_flops(config, n_buckets))


def _buckets(config: dict, device: torch.device):
    qk, _, rotations, n_buckets = _qk_v(config, device)
    return reference.hash_vectors(qk, rotations, n_buckets)


def ours_sort(config: dict, device: torch.device, backend: str) -> Prepared:
    require_kernels("bucket_sort", backend)
    buckets, num_keys = _buckets(config, device)
    return Prepared(lambda: functional.bucket_sort(buckets, num_keys, backend=backend))


def ours_hash_sort(config: dict, device: torch.device, backend: str) -> Prepared:
    """The LSH layer's hash -> sort, one backend op: on GPU backends the hash writes the packed sort
    keys, so this row against lsh_hash + bucket_sort (int64 ids, then a packing pass) is what that saves."""
    require_kernels("lsh_hash_sort", backend)
    qk, _, rotations, n_buckets = _qk_v(config, device)
    _, hash_sort = backends.select("lsh_hash_sort", device, backend)
    return Prepared(lambda: hash_sort(qk, rotations, n_buckets), fwd_flops=_hash_flops(config, n_buckets))


def transformers_sort(config: dict, device: torch.device) -> Prepared:
    modeling = peer("transformers.models.reformer.modeling_reformer")
    buckets, _ = _buckets(config, device)
    module = modeling.LSHSelfAttention(hf_config(config))
    return Prepared(lambda: module._get_sorted_bucket_idx_and_undo_sorted_bucket_idx(config["seq_len"], buckets, config["n_hashes"]))


def _lsh_attention_flops(config: dict) -> float:
    return flops.chunked_attention(
        config["batch"], config["heads"], config["seq_len"], config["head_dim"], config["chunk_len"],
        N_CHUNKS_BEFORE, N_CHUNKS_AFTER, config["n_hashes"],
    )


def ours_lsh_attention(config: dict, device: torch.device, backend: str) -> Prepared:
    require_kernels("lsh_attention", backend)
    qk, v, rotations, n_buckets = _qk_v(config, device, requires_grad=True)
    buckets, num_keys = reference.hash_vectors(qk, rotations, n_buckets)
    sorted_idx, _ = reference.sort_buckets(buckets, num_keys)

    def fn():
        return functional.lsh_attention(
            qk, v, sorted_idx, n_hashes=config["n_hashes"], chunk_len=config["chunk_len"], n_chunks_before=N_CHUNKS_BEFORE,
            n_chunks_after=N_CHUNKS_AFTER, causal=config["causal"], backend=backend,
        )

    forward, train_step = train_callables(fn, [qk, v])
    work = _lsh_attention_flops(config)
    return Prepared(forward, train_step, work, flops.with_backward(work))


# ---- layer level: hidden states -> projections -> attention (before the output projection) ------

def _hidden_states(config: dict, device: torch.device):
    gen = generator_for(config, device)
    hidden = randn((config["batch"], config["seq_len"], hidden_size(config)), config, device, gen, requires_grad=True)
    return hidden, gen


def _projections(names: tuple[str, ...], config: dict, device: torch.device, gen: torch.Generator) -> dict:
    """The layer's projection weights, identical for every competitor of the configuration."""
    size = hidden_size(config)
    return {name: randn((size, size), config, device, gen).mul_(size**-0.5).requires_grad_() for name in names}


def _load_projections(module: torch.nn.Module, weights: dict) -> None:
    with torch.no_grad():
        for name, weight in weights.items():
            getattr(module, name).weight.copy_(weight)


def _lsh_layer_work(config: dict) -> tuple[float, float]:
    return flops.lsh_layer(
        config["batch"], config["heads"], config["seq_len"], config["head_dim"], hidden_size(config), config["n_hashes"],
        n_buckets_for(config), config["chunk_len"], N_CHUNKS_BEFORE, N_CHUNKS_AFTER,
    )


def _prepared(fn, leaves, work) -> Prepared:
    forward, train_step = train_callables(fn, leaves)
    return Prepared(forward, train_step, *work)


def ours_lsh_layer(config: dict, device: torch.device, backend: str) -> Prepared:
    """The module a user builds, ``reformer_kernels.nn.LSHSelfAttention``, with the peers' weights
    (its rotations are drawn per call, as the module does; max_position_embeddings = seq_len gives
    the peers' bucket count)."""
    require_kernels("lsh_layer", backend)
    hidden, gen = _hidden_states(config, device)
    weights = _projections(LSH_PROJECTIONS, config, device, gen)
    module = ours_nn.LSHSelfAttention(
        hidden_size(config), config["heads"], config["head_dim"], num_hashes=config["n_hashes"],
        num_buckets=n_buckets_for(config), chunk_len=config["chunk_len"], n_chunks_before=N_CHUNKS_BEFORE,
        n_chunks_after=N_CHUNKS_AFTER, causal=config["causal"], max_position_embeddings=config["seq_len"],
    )
    _load_projections(module, weights)
    modules_to([module], config, device)

    def fn():
        with backends.use_backend(backend):
            return module(hidden)

    return _prepared(fn, [hidden, *module.parameters()], _lsh_layer_work(config))


def _transformers_layer(module_class: str, names: tuple[str, ...], work: tuple[float, float], config: dict,
                        device: torch.device) -> Prepared:
    """transformers' attention layer ``module_class`` with the configuration's projection weights."""
    modeling = peer("transformers.models.reformer.modeling_reformer")
    hidden, gen = _hidden_states(config, device)
    weights = _projections(names, config, device, gen)
    module = getattr(modeling, module_class)(hf_config(config))
    _load_projections(module, weights)
    modules_to([module], config, device)
    return _prepared(lambda: module(hidden).hidden_states, [hidden, *module.parameters()], work)


def transformers_lsh_layer(config: dict, device: torch.device) -> Prepared:
    return _transformers_layer("LSHSelfAttention", LSH_PROJECTIONS, _lsh_layer_work(config), config, device)


def reformer_pytorch_lsh_layer(config: dict, device: torch.device) -> Prepared:
    reformer_pytorch = peer("reformer_pytorch")
    if config["seq_len"] % (2 * config["chunk_len"]):
        raise NotAvailable(f"reformer-pytorch needs seq_len divisible by 2 * chunk_len = {2 * config['chunk_len']}")
    hidden, gen = _hidden_states(config, device)
    weights = _projections(LSH_PROJECTIONS, config, device, gen)
    attention = reformer_pytorch.LSHAttention(bucket_size=config["chunk_len"], n_hashes=config["n_hashes"], causal=config["causal"])

    def fn():
        qk = split_heads(hidden @ weights["query_key"].t(), config["heads"]).flatten(0, 1)
        v = split_heads(hidden @ weights["value"].t(), config["heads"]).flatten(0, 1)
        out = attention(qk, v)[0]
        return merge_heads(out.unflatten(0, (config["batch"], config["heads"])))

    return _prepared(fn, [hidden, *weights.values()], _lsh_layer_work(config))


def _sdpa_context(config: dict, device: torch.device):
    """FlashAttention on GPU for half precision (the dense state of the art); default dispatch elsewhere."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if device.type == "cuda" and config["dtype"] in (torch.float16, torch.bfloat16):
        return "flash", lambda: sdpa_kernel([SDPBackend.FLASH_ATTENTION])
    return "default", None


def sdpa_backend_name(config: dict, device: torch.device) -> str:
    return _sdpa_context(config, device)[0]


def sdpa_layer(config: dict, device: torch.device, n_projections: int) -> Prepared:
    """Dense attention after the same projections: what the layer would cost without LSH or chunks.
    With the LSH layer's two projections the keys are the queries (shared QK)."""
    hidden, gen = _hidden_states(config, device)
    names = LSH_PROJECTIONS if n_projections == 2 else LOCAL_PROJECTIONS
    weights = _projections(names, config, device, gen)
    _, context = _sdpa_context(config, device)

    def fn():
        projected = [split_heads(hidden @ weights[name].t(), config["heads"]) for name in names]
        q, k, v = (projected[0], projected[0], projected[1]) if n_projections == 2 else projected
        if context is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=config["causal"])
        else:
            with context():
                out = F.scaled_dot_product_attention(q, k, v, is_causal=config["causal"])
        return merge_heads(out)

    work = flops.dense_layer(config["batch"], config["heads"], config["seq_len"], config["head_dim"], hidden_size(config), n_projections, config["causal"])
    return _prepared(fn, [hidden, *weights.values()], work)


def _local_layer_work(config: dict) -> tuple[float, float]:
    return flops.local_layer(
        config["batch"], config["heads"], config["seq_len"], config["head_dim"], hidden_size(config), config["chunk_len"],
        N_CHUNKS_BEFORE, N_CHUNKS_AFTER,
    )


def ours_local_layer(config: dict, device: torch.device, backend: str) -> Prepared:
    require_kernels("local_layer", backend)
    hidden, gen = _hidden_states(config, device)
    weights = _projections(LOCAL_PROJECTIONS, config, device, gen)

    def fn():
        q, k, v = (split_heads(hidden @ weights[name].t(), config["heads"]) for name in LOCAL_PROJECTIONS)
        out = functional.local_attention(
            q, k, v, chunk_len=config["chunk_len"], n_chunks_before=N_CHUNKS_BEFORE, n_chunks_after=N_CHUNKS_AFTER,
            causal=config["causal"], backend=backend,
        )
        return merge_heads(out)

    return _prepared(fn, [hidden, *weights.values()], _local_layer_work(config))


def transformers_local_layer(config: dict, device: torch.device) -> Prepared:
    return _transformers_layer("LocalSelfAttention", LOCAL_PROJECTIONS, _local_layer_work(config), config, device)


def local_attention_package_layer(config: dict, device: torch.device) -> Prepared:
    """lucidrains' local_attention (reformer-pytorch's local heads), without its rotary embeddings
    so that it computes the same attention."""
    local_attention = peer("local_attention")
    hidden, gen = _hidden_states(config, device)
    weights = _projections(LOCAL_PROJECTIONS, config, device, gen)
    attention = local_attention.LocalAttention(
        window_size=config["chunk_len"], causal=config["causal"], look_backward=N_CHUNKS_BEFORE,
        look_forward=N_CHUNKS_AFTER, use_rotary_pos_emb=False, autopad=True,
    )

    def fn():
        q, k, v = (split_heads(hidden @ weights[name].t(), config["heads"]) for name in LOCAL_PROJECTIONS)
        return merge_heads(attention(q, k, v))

    return _prepared(fn, [hidden, *weights.values()], _local_layer_work(config))


# ---- reversible block: LayerNorm -> LSH attention -> output projection, then the feed-forward ------

def _block_work(config: dict) -> tuple[float, float]:
    size = hidden_size(config)
    tokens = config["batch"] * config["seq_len"]
    forward, train = _lsh_layer_work(config)
    extra = flops.linear(tokens, size, size) + 2 * flops.linear(tokens, size, 4 * size)
    return forward + extra, train + flops.with_backward(extra)


def ours_reversible_block(config: dict, device: torch.device, backend: str) -> Prepared:
    require_kernels("reversible_block", backend)
    size = hidden_size(config)
    hidden, _ = _hidden_states(config, device)
    attention = torch.nn.Sequential(
        torch.nn.LayerNorm(size),
        ours_nn.LSHSelfAttention(
            size, config["heads"], config["head_dim"], num_hashes=config["n_hashes"], num_buckets=n_buckets_for(config),
            chunk_len=config["chunk_len"], n_chunks_before=N_CHUNKS_BEFORE, n_chunks_after=N_CHUNKS_AFTER, causal=config["causal"],
        ),
        torch.nn.Linear(size, size, bias=False),
    )
    block = ours_nn.ReversibleSequence([ours_nn.ReversibleBlock(attention, ours_nn.ChunkedFeedForward(size, 4 * size))])
    norm = torch.nn.LayerNorm(2 * size)
    modules_to([block, norm], config, device)

    def fn():
        with backends.use_backend(backend):
            return norm(torch.cat(block(hidden, hidden), dim=-1))

    return _prepared(fn, [hidden, *block.parameters(), *norm.parameters()], _block_work(config))


def transformers_reversible_block(config: dict, device: torch.device) -> Prepared:
    modeling = peer("transformers.models.reformer.modeling_reformer")
    hidden, _ = _hidden_states(config, device)
    size = hidden_size(config)
    encoder = modeling.ReformerEncoder(hf_config(config, attn_layers=["lsh"], num_hidden_layers=1, feed_forward_size=4 * size))
    modules_to([encoder], config, device)
    encoder.train()
    return _prepared(lambda: encoder(hidden).hidden_states, [hidden, *encoder.parameters()], _block_work(config))


# ---- LM head + loss: the projection to the vocabulary and the cross-entropy ----------------------

LM_HEAD_VOCAB = 32000  # a sentencepiece vocabulary's size: its (tokens x vocab) logits are the cost


def _lm_head_inputs(config: dict, device: torch.device):
    """Hidden states (tokens, 2 * hidden): the LM head sees concat(y1, y2); the vocabulary
    projection's weight and bias; labels."""
    gen = generator_for(config, device)
    size = 2 * hidden_size(config)
    hidden = randn((config["batch"] * config["seq_len"], size), config, device, gen, requires_grad=True)
    weight = randn((LM_HEAD_VOCAB, size), config, device, gen).mul_(size**-0.5).requires_grad_()
    bias = randn((LM_HEAD_VOCAB,), config, device, gen).requires_grad_()
    labels = torch.randint(0, LM_HEAD_VOCAB, (hidden.shape[0],), generator=gen, device=device)
    return hidden, weight, bias, labels


def _lm_head_work(config: dict) -> tuple[float, float]:
    forward = flops.linear(config["batch"] * config["seq_len"], 2 * hidden_size(config), LM_HEAD_VOCAB)
    return forward, flops.with_backward(forward)


def ours_lm_head_loss(config: dict, device: torch.device, backend: str) -> Prepared:
    require_kernels("lm_head_loss", backend)
    hidden, weight, bias, labels = _lm_head_inputs(config, device)
    return _prepared(lambda: ours_nn.linear_cross_entropy(hidden, weight, bias, labels, backend=backend),
                     [hidden, weight, bias], _lm_head_work(config))


def transformers_lm_head_loss(config: dict, device: torch.device) -> Prepared:
    """transformers' ReformerOnlyLMHead (all tokens x vocab logits at once) + CrossEntropyLoss, as
    its ReformerModelWithLMHead computes the loss."""
    modeling = peer("transformers.models.reformer.modeling_reformer")
    hidden, weight, bias, labels = _lm_head_inputs(config, device)
    head = modeling.ReformerOnlyLMHead(hf_config(config, vocab_size=LM_HEAD_VOCAB))
    with torch.no_grad():
        head.decoder.weight.copy_(weight)
        (head.decoder.bias if head.decoder.bias is not None else head.bias).copy_(bias)
    modules_to([head], config, device)
    loss = torch.nn.CrossEntropyLoss()
    return _prepared(lambda: loss(head(hidden[None]).flatten(0, 1), labels), [hidden, *head.parameters()],
                     _lm_head_work(config))


# ---- whole language models: transformers' Reformer settings and a training step -------------------

def lm_settings(config: dict, vocab_size: int) -> dict:
    """transformers' ReformerConfig fields of a causal Reformer LM of ``config``'s shape, local and LSH
    layers alternating, axial positions, no dropout (also accepted by ours)."""
    hidden = hidden_size(config)
    rows = config["chunk_len"]
    return dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_attention_heads=config["heads"],
        attention_head_size=config["head_dim"],
        feed_forward_size=4 * hidden,
        attn_layers=["local", "lsh"] * (config["layers"] // 2) + ["local"] * (config["layers"] % 2),
        num_hashes=config["n_hashes"],
        num_buckets=config_num_buckets(config),
        lsh_attn_chunk_length=config["chunk_len"],
        local_attn_chunk_length=config["chunk_len"],
        max_position_embeddings=config["seq_len"],
        axial_pos_shape=[rows, config["seq_len"] // rows],
        axial_pos_embds_dim=[hidden // 4, hidden - hidden // 4],
        is_decoder=True,
        hidden_dropout_prob=0.0,
        lsh_attention_probs_dropout_prob=0.0,
        local_attention_probs_dropout_prob=0.0,
        pad_token_id=0,
        eos_token_id=2,
    )


def transformers_lm_model(settings: dict):
    """transformers' ReformerModelWithLMHead with ``settings``, its weights drawn from seed 0 (ours
    loads its state dict, so that both train the same network)."""
    transformers = peer("transformers")
    torch.manual_seed(0)
    return transformers.ReformerModelWithLMHead(transformers.ReformerConfig(**settings))


def adamw_training(model: torch.nn.Module, loss_fn, fwd_flops: float | None = None, train_flops: float | None = None) -> Prepared:
    """A model's training step: forward + loss + backward + AdamW step; ``loss_fn`` alone is the forward."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        return loss

    return Prepared(loss_fn, train_step, fwd_flops, train_flops)


# ---- cases: who competes on an op -------------------------------------------------------------------

def ours_cases(suite: str, op: str, builder, config: dict, device: torch.device) -> list[Case]:
    """One case of ours per backend that targets ``device`` ("auto" first)."""
    return [
        Case(suite, op, "reformer_kernels", backend_label(op, backend, device), config, functools.partial(builder, config, device, backend),
             tokens=config["batch"] * config["seq_len"])
        for backend in our_backends(device)
    ]


def peer_case(suite: str, op: str, competitor: str, backend: str, builder, config: dict, device: torch.device) -> Case:
    return Case(suite, op, competitor, backend, config, functools.partial(builder, config, device), tokens=config["batch"] * config["seq_len"])


def layer_cases(suite: str, op: str, config: dict, device: torch.device, backends_of_ours: bool = True) -> list[Case]:
    """An attention layer's competitors (``op`` "lsh_layer" or "local_layer") on one configuration:
    ours on every backend (or "auto" alone), transformers, reformer-pytorch's (lucidrains' local_attention
    for the local layer) and dense SDPA after the same projections."""
    ours, transformers_layer, package, n_projections = {
        "lsh_layer": (ours_lsh_layer, transformers_lsh_layer, ("reformer-pytorch", "pytorch", reformer_pytorch_lsh_layer), 2),
        "local_layer": (ours_local_layer, transformers_local_layer,
                        ("reformer-pytorch", "local_attention", local_attention_package_layer), 3),
    }[op]
    mine = ours_cases(suite, op, ours, config, device)
    return (mine if backends_of_ours else mine[:1]) + [
        peer_case(suite, op, "transformers", "pytorch", transformers_layer, config, device),
        peer_case(suite, op, *package, config, device),
        peer_case(suite, op, "torch-sdpa", sdpa_backend_name(config, device), functools.partial(sdpa_layer, n_projections=n_projections),
                  config, device),
    ]
