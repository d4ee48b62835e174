"""The public functional API. Every op validates its inputs here, once for all backends, then
runs on the backend chosen by ``reformer_kernels.backends`` (argument ``backend=``, the
``use_backend`` context, the REFORMER_KERNELS_BACKEND variable, or "auto").

Shapes: B batch, H heads, L sequence length, d head dim. Attention ops take float16, bfloat16,
float32 or float64 tensors and return the same dtype. An ``attention_mask`` is (B, L), bool or 0/1
of any dtype, 0 marking a padding token; every backend receives it as bool.
"""
from __future__ import annotations

import math
import os

import torch

from . import backends, reference
from . import ops  # noqa: F401  (importing it registers every op's implementations into backends)
from .ops.dropout_add import philox_seed_offset

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ----------------------------------------------------------------------------- validation


DEBUG_ENV_VAR = "REFORMER_KERNELS_DEBUG"
_debug_checks: bool | None = None  # set by set_debug_checks; None: DEBUG_ENV_VAR decides


def set_debug_checks(enabled: bool | None) -> None:
    """Run the checks that read tensor values (``checks_values``) on GPU tensors too (True), or
    not (False), overriding the environment variable REFORMER_KERNELS_DEBUG (1: on, 0 or unset:
    off); None follows that variable again."""
    global _debug_checks
    if enabled is not None:
        _check_bool("set_debug_checks", "enabled", enabled)
    _debug_checks = enabled


def debug_checks() -> bool:
    """Whether debug checks are on: ``set_debug_checks``, else REFORMER_KERNELS_DEBUG."""
    if _debug_checks is not None:
        return _debug_checks
    value = os.environ.get(DEBUG_ENV_VAR, "0").strip()
    if value not in ("0", "1", ""):
        raise ValueError(f"environment variable {DEBUG_ENV_VAR}={value!r} must be 1 (debug checks on) or 0 (off)")
    return value == "1"


def checks_values(like: torch.Tensor) -> bool:
    """Whether the checks that read tensor values (ids in range, 0/1 masks) run on tensors on
    ``like``'s device. On the CPU, yes: the values are in host memory once the op that made them
    returned, so reading them waits for nothing and costs one pass over ids or a mask. On a GPU
    only in debug mode (``set_debug_checks``): there each read copies to the host and waits for
    every queued kernel, a sync per call that would stall the launch queue. Inside torch.compile,
    never, since a read breaks the graph. Without them, bad values are caught only where a kernel
    checks them itself (the C++ kernels' range checks)."""
    if torch.compiler.is_compiling():
        return False
    return like.device.type == "cpu" or debug_checks()


def check_mask_values(name: str, mask: torch.Tensor) -> None:
    """A padding mask is bool or holds only 0 (padding) and 1 (token): ``.bool()`` would read
    transformers' additive masks (0 / -10000) inverted and soft weights as all ones, so they are
    refused. Reads the values, so only where ``checks_values(mask)``. ``name`` starts the message."""
    if mask.dtype == torch.bool or not mask.numel() or not checks_values(mask):
        return
    if not bool(((mask == 0) | (mask == 1)).all()):
        bad = mask[(mask != 0) & (mask != 1)]
        raise ValueError(
            f"{name} must hold only 1 (token) and 0 (padding), got values such as {bad[:3].tolist()}: pass 1 for "
            "tokens and 0 for padding (an additive mask of 0 / -10000 converts with (mask == 0).long())"
        )


def _check_int(fn: str, name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{fn}: {name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{fn}: {name} must be >= {minimum}, got {value}")
    return value


def _check_bool(fn: str, name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{fn}: {name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def _check_float_tensor(fn: str, name: str, t: object) -> torch.Tensor:
    """A tensor of a floating dtype the kernels take."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{fn}: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}; convert it with .float()")
    return t


def _check_heads_tensor(fn: str, name: str, t: object) -> torch.Tensor:
    """A (B, H, L, d) float tensor with L, d >= 1."""
    _check_float_tensor(fn, name, t)
    if t.dim() != 4:
        raise ValueError(
            f"{fn}: {name} must be (batch, heads, seq_len, head_dim), got shape {tuple(t.shape)}; "
            "split the hidden dim into heads and move heads before the sequence"
        )
    if t.shape[2] < 1 or t.shape[3] < 1:
        raise ValueError(f"{fn}: {name} has shape {tuple(t.shape)}: seq_len and head_dim must be >= 1")
    return t


def _check_same(fn: str, first: str, a: torch.Tensor, second: str, b: torch.Tensor) -> None:
    if b.shape != a.shape:
        raise ValueError(f"{fn}: {second} has shape {tuple(b.shape)} but {first} has {tuple(a.shape)}; they must match")
    if b.dtype != a.dtype:
        raise TypeError(f"{fn}: {second} is {b.dtype} but {first} is {a.dtype}; cast one with .to({first}.dtype)")
    if b.device != a.device:
        raise ValueError(f"{fn}: {second} is on {b.device} but {first} is on {a.device}; move them to one device")


def _check_attention_mask(fn: str, attention_mask: object, like: torch.Tensor) -> torch.Tensor | None:
    """None, or the (B, L) mask of the (B, H, L, d) tensor ``like`` as bool."""
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"{fn}: attention_mask must be a torch.Tensor or None, got {type(attention_mask).__name__}")
    if attention_mask.is_complex():
        raise TypeError(f"{fn}: attention_mask must be bool or 0/1 numbers, got {attention_mask.dtype}")
    expected = (like.shape[0], like.shape[2])
    if tuple(attention_mask.shape) != expected:
        raise ValueError(
            f"{fn}: attention_mask must be (batch, seq_len) = {expected}, got {tuple(attention_mask.shape)}; "
            "one entry per token, 0 for padding"
        )
    if attention_mask.device != like.device:
        raise ValueError(f"{fn}: attention_mask is on {attention_mask.device} but the inputs are on {like.device}; move it")
    check_mask_values(f"{fn}: attention_mask", attention_mask)
    return attention_mask.bool()


def _check_n_buckets(fn: str, n_buckets: object) -> int | tuple[int, ...]:
    """An even int >= 2, or a non-empty tuple/list of them (returned as a tuple)."""
    factors = n_buckets if isinstance(n_buckets, (tuple, list)) else (n_buckets,)
    if len(factors) == 0:
        raise ValueError(f"{fn}: n_buckets must be an even int or a tuple of even ints, got an empty {type(n_buckets).__name__}")
    for factor in factors:
        if isinstance(factor, bool) or not isinstance(factor, int):
            raise TypeError(f"{fn}: n_buckets must be an even int or a tuple of even ints, got {n_buckets!r}")
        if factor < 2 or factor % 2:
            raise ValueError(
                f"{fn}: n_buckets {n_buckets!r} has factor {factor}: every factor must be even and >= 2 "
                "(hashing takes argmax over [xR, -xR]); try default_num_buckets(seq_len, chunk_len, max_position_embeddings)"
            )
    return n_buckets if isinstance(n_buckets, int) else tuple(factors)


def _check_hashing(fn: str, rotations: object, vectors: torch.Tensor, n_buckets: object) -> int | tuple[int, ...]:
    """``n_buckets`` (``_check_n_buckets``, returned as the backends take it) and ``rotations``
    shaped, typed and placed for hashing ``vectors`` into them."""
    n_buckets = _check_n_buckets(fn, n_buckets)
    if not isinstance(rotations, torch.Tensor):
        raise TypeError(f"{fn}: rotations must be a torch.Tensor, got {type(rotations).__name__}")
    rotation_size = sum(reference.bucket_factors(n_buckets))
    heads, head_dim = vectors.shape[1], vectors.shape[3]
    expected = (heads, head_dim, rotation_size // 2)
    if rotations.dim() != 4 or (rotations.shape[0], rotations.shape[1], rotations.shape[3]) != expected or rotations.shape[2] < 1:
        raise ValueError(
            f"{fn}: rotations must be (heads, head_dim, n_hashes, R / 2) = ({heads}, {head_dim}, n_hashes, {rotation_size // 2}) "
            f"for n_buckets {n_buckets!r} (R = sum of the bucket factors), got {tuple(rotations.shape)}"
        )
    if rotations.dtype != vectors.dtype:
        raise TypeError(
            f"{fn}: rotations are {rotations.dtype} but the vectors are {vectors.dtype}; cast with rotations.to(vectors.dtype)"
        )
    if rotations.device != vectors.device:
        raise ValueError(f"{fn}: rotations are on {rotations.device} but the vectors on {vectors.device}; move them")
    return n_buckets


def _check_chunking(fn: str, chunk_len: object, n_chunks_before: object, n_chunks_after: object) -> None:
    _check_int(fn, "chunk_len", chunk_len, 1)
    _check_int(fn, "n_chunks_before", n_chunks_before, 0)
    _check_int(fn, "n_chunks_after", n_chunks_after, 0)


def _check_window(fn: str, n_chunks: int, n_chunks_before: int, n_chunks_after: int) -> None:
    """Neighbour chunks lie on the ring of the input's ``n_chunks`` chunks, at most ``n_chunks``
    away. Up to there transformers, which slices instead of rolling, takes the same chunks (a shift
    of n_chunks is the chunk itself in both); further out the two disagree, and a huge value would
    also size the window past what memory or index arithmetic can hold."""
    for name, value in (("n_chunks_before", n_chunks_before), ("n_chunks_after", n_chunks_after)):
        if value > n_chunks:
            raise ValueError(
                f"{fn}: {name} {value} reaches past the {n_chunks} chunk(s) of this input (n_hashes * seq_len / "
                f"chunk_len, padded): a neighbour chunk can be at most {n_chunks} away on that ring; lower {name} to at "
                f"most {n_chunks} or attend over a longer sequence"
            )


def _check_dropout_p(fn: str, dropout_p: object, *, name: str = "dropout_p", allow_one: bool = False) -> float:
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)):
        raise TypeError(f"{fn}: {name} must be a float, got {type(dropout_p).__name__} {dropout_p!r}")
    if not (0.0 <= dropout_p <= 1.0 if allow_one else 0.0 <= dropout_p < 1.0):
        interval = "[0, 1]" if allow_one else "[0, 1)"
        raise ValueError(f"{fn}: {name} must lie in {interval}, got {dropout_p}; pass the probability of dropping an element")
    return float(dropout_p)


def _check_generator(fn: str, generator: object, like: torch.Tensor) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{fn}: generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != like.device.type:
        raise ValueError(
            f"{fn}: generator is on {generator.device} but the inputs are on {like.device}; "
            f"pass torch.Generator(device={str(like.device)!r}) or None for the default one"
        )


def _check_sorted_idx(fn: str, sorted_idx: object, qk: torch.Tensor, n_hashes: int) -> torch.Tensor:
    if not isinstance(sorted_idx, torch.Tensor):
        raise TypeError(f"{fn}: sorted_idx must be a torch.Tensor, got {type(sorted_idx).__name__}")
    if sorted_idx.dtype not in (torch.int32, torch.int64):
        raise TypeError(
            f"{fn}: sorted_idx must be int32 or int64, got {sorted_idx.dtype}; use the sorted_idx that bucket_sort returns"
        )
    batch, heads, seq_len, _ = qk.shape
    n = n_hashes * seq_len
    if tuple(sorted_idx.shape) != (batch, heads, n):
        raise ValueError(
            f"{fn}: sorted_idx must be (batch, heads, n_hashes * seq_len) = {(batch, heads, n)}, got {tuple(sorted_idx.shape)}; "
            "check n_hashes"
        )
    if sorted_idx.device != qk.device:
        raise ValueError(f"{fn}: sorted_idx is on {sorted_idx.device} but qk is on {qk.device}; move it")
    if checks_values(sorted_idx):
        low, high = torch.aminmax(sorted_idx)
        if low.item() < 0 or high.item() >= n:
            raise ValueError(
                f"{fn}: sorted_idx spans [{low.item()}, {high.item()}] but must be a permutation of [0, n_hashes * seq_len = {n})"
            )
    return sorted_idx


# ----------------------------------------------------------------------------- dispatch


def _attention_dropout(dropout_p: float, device: torch.device) -> dict:
    """The attention-dropout arguments of every backend's attention impl: ``dropout_p`` and the
    Philox key (``dropout_seed``, ``dropout_offset``) drawn from the default generator of
    ``device``, from which every backend draws the same keep decisions inside its kernels (and
    regenerates them in the backward); none without dropout."""
    if dropout_p == 0.0:
        return {}
    seed, offset = philox_seed_offset(device)
    return dict(dropout_p=dropout_p, dropout_seed=seed, dropout_offset=offset)


def _run_lsh_attention(
    qk, v, sorted_idx, *, n_hashes, chunk_len, n_chunks_before, n_chunks_after, causal, attention_mask, dropout_p, backend
):
    _, run = backends.select("lsh_attention", qk.device, backend)
    chunking = dict(n_hashes=n_hashes, chunk_len=chunk_len, n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after)
    dropout = _attention_dropout(dropout_p, qk.device)
    return run(qk, v, sorted_idx, **chunking, causal=causal, attention_mask=attention_mask, **dropout)


# ----------------------------------------------------------------------------- public ops


def default_num_buckets(seq_len: int, chunk_len: int, max_position_embeddings: int) -> int | tuple[int, int]:
    """transformers' choice of num_buckets when the config leaves it unset: a power of two near
    2 * seq_len / chunk_len, split into two factors (a tuple) when large. Needs seq_len >= chunk_len."""
    fn = "default_num_buckets"
    _check_int(fn, "chunk_len", chunk_len, 1)
    _check_int(fn, "seq_len", seq_len, chunk_len)
    _check_int(fn, "max_position_embeddings", max_position_embeddings, 1)
    return reference.default_num_buckets(seq_len, chunk_len, max_position_embeddings)


def head_projections(
    x: torch.Tensor, weights: list[torch.Tensor] | tuple[torch.Tensor, ...], heads: int, *, backend: str | None = None
) -> list[torch.Tensor]:
    """An attention layer's input projections (bias-free linear maps) split into heads.

    Args:
        x: (B, L, D) float.
        weights: one or more (H * d, D) weights of x's dtype and device (``nn.Linear.weight``:
            the product is ``x @ weight.T``).
        heads: H, which must divide the weights' H * d rows.
        backend: see ``reformer_kernels.backends``.

    Returns:
        One (B, H, L, d) tensor per weight. The CPU kernels (float32, float64) write each head's
        rows densely, which the attention kernels read faster than a head-split view; other
        backends and dtypes return head-split views of torch's matmul.
    """
    fn = "head_projections"
    _check_float_tensor(fn, "x", x)
    if x.dim() != 3:
        raise ValueError(f"{fn}: x must be (batch, seq_len, hidden), got shape {tuple(x.shape)}")
    if not isinstance(weights, (list, tuple)) or not weights:
        raise TypeError(f"{fn}: weights must be a non-empty list of (heads * head_dim, hidden) tensors, got {weights!r:.80}")
    _check_int(fn, "heads", heads, 1)
    for i, weight in enumerate(weights):
        name = f"weights[{i}]"
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(weight).__name__}")
        if weight.dim() != 2 or weight.shape[1] != x.shape[2] or weight.shape != weights[0].shape:
            raise ValueError(
                f"{fn}: {name} must be (heads * head_dim, {x.shape[2]}) like weights[0] {tuple(weights[0].shape)}, "
                f"got {tuple(weight.shape)}"
            )
        if weight.dtype != x.dtype:
            raise TypeError(f"{fn}: {name} is {weight.dtype} but x is {x.dtype}; cast one with .to(x.dtype)")
        if weight.device != x.device:
            raise ValueError(f"{fn}: {name} is on {weight.device} but x is on {x.device}; move them to one device")
    if weights[0].shape[0] % heads:
        raise ValueError(f"{fn}: the weights' {weights[0].shape[0]} rows do not split into heads = {heads}; pass a divisor")
    _, impl = backends.select("head_projections", x.device, backend)
    return impl(x, list(weights), heads)


def lsh_hash(
    vectors: torch.Tensor,
    rotations: torch.Tensor,
    n_buckets: int | tuple[int, ...],
    *,
    attention_mask: torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, int]:
    """Angular LSH bucket ids, offset per hash round, ready for ``bucket_sort``.

    Args:
        vectors: (B, H, L, d) float: the shared query/key projections.
        rotations: (H, d, n_hashes, R / 2), same dtype and device as ``vectors``, with R =
            n_buckets (int) or sum(n_buckets) (factors); random, e.g. ``torch.randn`` after
            ``torch.manual_seed(hash_seed)`` as transformers draws them.
        n_buckets: even int, or tuple of even factors (bucket = i1 + b1 * i2 + ...).
        attention_mask: (B, L) or None; if it pads anything, padding tokens get the extra bucket
            prod(n_buckets) and each round has prod(n_buckets) + 1 ids. The compiled backends on
            GPU tensors count any mask as padding (finding out would be a host sync): the ids of an
            all-ones mask then differ, their sort order does not.
        backend: see ``reformer_kernels.backends``.

    Returns:
        ``(buckets, num_keys)``: buckets (B, H, n_hashes * L) int64, round r's ids in
        [r * n', (r + 1) * n') with n' the ids per round; num_keys = n_hashes * n' (int).
    """
    fn = "lsh_hash"
    _check_heads_tensor(fn, "vectors", vectors)
    n_buckets = _check_hashing(fn, rotations, vectors, n_buckets)
    attention_mask = _check_attention_mask(fn, attention_mask, vectors)
    _, impl = backends.select("lsh_hash", vectors.device, backend)
    return impl(vectors, rotations, n_buckets, attention_mask=attention_mask)


def lsh_hash_sort(
    vectors: torch.Tensor,
    rotations: torch.Tensor,
    n_buckets: int | tuple[int, ...],
    *,
    attention_mask: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """``lsh_hash`` then ``bucket_sort`` as one backend op: the ``sorted_idx`` of ``lsh_attention``
    without the bucket ids. On GPU backends the hash writes the radix sort's packed keys and one
    device-wide sort follows (no int64 ids, no packing pass); on the CPU the ids' counting sort.

    Args: as ``lsh_hash``.

    Returns:
        sorted_idx (B, H, n_hashes * L) int32, as ``bucket_sort`` returns it for the ids of
        ``lsh_hash``: positions in (round, bucket, position) order.
    """
    fn = "lsh_hash_sort"
    _check_heads_tensor(fn, "vectors", vectors)
    n_buckets = _check_hashing(fn, rotations, vectors, n_buckets)
    return _hash_sort(vectors, rotations, n_buckets, _check_attention_mask(fn, attention_mask, vectors), backend)


def _hash_sort(vectors: torch.Tensor, rotations: torch.Tensor, n_buckets: int | tuple[int, ...],
               attention_mask: torch.Tensor | None, backend: str | None) -> torch.Tensor:
    """The checked arguments' "lsh_hash_sort": the one dispatch point of the hash -> sort op."""
    _, impl = backends.select("lsh_hash_sort", vectors.device, backend)
    return impl(vectors, rotations, n_buckets, attention_mask=attention_mask)


def bucket_sort(
    buckets: torch.Tensor, num_buckets: int, *, inverse: bool = True, backend: str | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stable sort of LSH bucket ids by (bucket, position) along the last dimension.

    Args:
        buckets: (..., N) int64, values in [0, num_buckets), N < 2^31: bucket ids with the
            hash-round offsets already added (round r of n_buckets buckets maps bucket b to
            r * n_buckets + b), so one sort orders by (round, bucket, position).
        num_buckets: int, the exclusive upper bound of the ids (n_hashes * n_buckets, counting the
            extra padding bucket where there is one).
        inverse: whether to compute ``undo_sort`` (one scatter); ``lsh_attention`` needs only
            ``sorted_idx``.
        backend: see ``reformer_kernels.backends``.

    Returns:
        ``(sorted_idx, undo_sort)``, both (..., N) int32: ``sorted_idx`` lists positions in sorted
        order (ties keep position order), ``undo_sort`` is its inverse permutation (None when
        ``inverse`` is False). torch's gather and scatter take int32 indices; ``.long()`` gives
        the int64 that older code may expect.
    """
    if not isinstance(buckets, torch.Tensor):
        raise TypeError(f"bucket_sort: buckets must be a torch.Tensor, got {type(buckets).__name__}")
    if buckets.dtype != torch.int64:
        raise TypeError(f"bucket_sort: buckets must be int64, got {buckets.dtype}; convert with buckets.long()")
    if buckets.dim() < 1:
        raise ValueError("bucket_sort: buckets must have at least one dimension (..., N), got a 0-d tensor")
    if isinstance(num_buckets, bool) or not isinstance(num_buckets, int) or num_buckets < 1:
        raise ValueError(f"bucket_sort: num_buckets must be a positive int, got {num_buckets!r}")
    _check_bool("bucket_sort", "inverse", inverse)
    if buckets.shape[-1] > 2**31 - 1:
        raise ValueError(
            f"bucket_sort: rows of {buckets.shape[-1]} ids are longer than int32 sorted_idx can index (2^31 - 1); "
            "sort shorter rows"
        )
    if buckets.numel() > 0 and checks_values(buckets):
        low, high = torch.aminmax(buckets)
        if low.item() < 0 or high.item() >= num_buckets:
            raise ValueError(
                f"bucket_sort: bucket ids span [{low.item()}, {high.item()}] but must lie in [0, num_buckets={num_buckets}); "
                "pass num_buckets = n_hashes * n_buckets (+ n_hashes for a padding bucket)"
            )
    _, impl = backends.select("bucket_sort", buckets.device, backend)
    sorted_idx = impl(buckets, num_buckets)
    return sorted_idx, reference.invert_permutation(sorted_idx) if inverse else None


def lsh_attention(
    qk: torch.Tensor,
    v: torch.Tensor,
    sorted_idx: torch.Tensor,
    *,
    n_hashes: int,
    chunk_len: int,
    n_chunks_before: int = 1,
    n_chunks_after: int = 0,
    causal: bool = False,
    attention_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    return_lse: bool = False,
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Shared-QK attention within chunks of the bucket-sorted sequence, combined over hash rounds.

    Queries are ``qk``; keys are ``qk`` / RMS(qk) / sqrt(d). The n_hashes * L sorted entries are cut
    into chunks of ``chunk_len``; each attends to itself and ``n_chunks_before``/``after``
    neighbours (wrapping around). Padding and (if causal) future keys score -1e9, the query's own
    position -1e5 (fp16: -1e4, -1e3). Full attention = ``sorted_idx`` = arange(L), n_hashes=1,
    chunk_len=L, no neighbours.

    Args:
        qk, v: (B, H, L, d), one float dtype, one device.
        sorted_idx: (B, H, n_hashes * L) int32 or int64, a permutation of [0, n_hashes * L) as
            ``bucket_sort`` returns (entry r * L + i is position i in round r).
        n_hashes: int >= 1. chunk_len: int >= 1 dividing n_hashes * L (and L when n_hashes > 1).
        n_chunks_before, n_chunks_after: int >= 0.
        causal: bool. attention_mask: (B, L) or None.
        dropout_p: float in [0, 1), dropout on the attention probabilities (every backend;
            drawn inside the kernels from a Philox key taken from the default generator, so
            seeding it reproduces the dropout, on every backend the same; no mask is stored).
        return_lse: also return the per-round log-sum-exp.
        backend: see ``reformer_kernels.backends``.

    Returns:
        out (B, H, L, d) in qk's dtype; with ``return_lse`` also lse (B, H, n_hashes, L), each
        round's log-sum-exp of scores at original positions (out = sum_r out_r * softmax_r(lse)).
    """
    fn = "lsh_attention"
    _check_heads_tensor(fn, "qk", qk)
    _check_heads_tensor(fn, "v", v)
    _check_same(fn, "qk", qk, "v", v)
    _check_int(fn, "n_hashes", n_hashes, 1)
    _check_sorted_idx(fn, sorted_idx, qk, n_hashes)
    _check_chunking(fn, chunk_len, n_chunks_before, n_chunks_after)
    seq_len = qk.shape[2]
    if (n_hashes * seq_len) % chunk_len:
        raise ValueError(
            f"{fn}: chunk_len {chunk_len} must divide n_hashes * seq_len = {n_hashes * seq_len}; "
            "pad the sequence (lsh_self_attention does it for you)"
        )
    if n_hashes > 1 and seq_len % chunk_len:
        raise ValueError(
            f"{fn}: with n_hashes {n_hashes} > 1, chunk_len {chunk_len} must divide seq_len {seq_len} "
            "so no chunk spans two rounds; pad the sequence (lsh_self_attention does it for you)"
        )
    _check_window(fn, n_hashes * seq_len // chunk_len, n_chunks_before, n_chunks_after)
    _check_bool(fn, "causal", causal)
    _check_bool(fn, "return_lse", return_lse)
    attention_mask = _check_attention_mask(fn, attention_mask, qk)
    dropout_p = _check_dropout_p(fn, dropout_p)
    out, lse = _run_lsh_attention(
        qk,
        v,
        sorted_idx,
        n_hashes=n_hashes,
        chunk_len=chunk_len,
        n_chunks_before=n_chunks_before,
        n_chunks_after=n_chunks_after,
        causal=causal,
        attention_mask=attention_mask,
        dropout_p=dropout_p,
        backend=backend,
    )
    return (out, lse.to(qk.dtype)) if return_lse else out


def local_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    chunk_len: int,
    n_chunks_before: int = 1,
    n_chunks_after: int = 0,
    causal: bool = False,
    attention_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    backend: str | None = None,
) -> torch.Tensor:
    """Attention within chunks of ``chunk_len`` positions and their neighbour chunks (wrapping around).

    Keys are scaled by 1 / sqrt(d); padding and (if causal) future keys score -1e9 (fp16: -1e4);
    no self mask. L <= chunk_len: full attention. Any L: the sequence is padded internally to a
    multiple of chunk_len with masked keys and the output cropped.

    Args:
        q, k, v: (B, H, L, d), one float dtype, one device.
        chunk_len: int >= 1. n_chunks_before, n_chunks_after: int >= 0.
        causal: bool. attention_mask: (B, L) or None.
        dropout_p: float in [0, 1), dropout on the attention probabilities (every backend;
            drawn inside the kernels from a Philox key taken from the default generator, so
            seeding it reproduces the dropout, on every backend the same; no mask is stored).
        backend: see ``reformer_kernels.backends``.

    Returns:
        out (B, H, L, d) in q's dtype.
    """
    fn = "local_attention"
    _check_heads_tensor(fn, "q", q)
    for name, t in (("k", k), ("v", v)):
        _check_heads_tensor(fn, name, t)
        _check_same(fn, "q", q, name, t)
    _check_chunking(fn, chunk_len, n_chunks_before, n_chunks_after)
    _check_bool(fn, "causal", causal)
    attention_mask = _check_attention_mask(fn, attention_mask, q)
    dropout_p = _check_dropout_p(fn, dropout_p)
    chunking = dict(chunk_len=chunk_len, n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after)
    _, run = backends.select("local_attention", q.device, backend)
    batch, heads, seq_len, _ = q.shape
    used_chunk_len, before, after, padded_len = reference.local_chunking(seq_len, chunk_len, n_chunks_before, n_chunks_after)
    _check_window(fn, padded_len // used_chunk_len, before, after)
    dropout = _attention_dropout(dropout_p, q.device)
    return run(q, k, v, **chunking, causal=causal, attention_mask=attention_mask, **dropout)


def lsh_self_attention(
    qk: torch.Tensor,
    v: torch.Tensor,
    rotations: torch.Tensor,
    n_buckets: int | tuple[int, ...],
    *,
    chunk_len: int,
    n_chunks_before: int = 1,
    n_chunks_after: int = 0,
    causal: bool = False,
    attention_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    backend: str | None = None,
) -> torch.Tensor:
    """The whole LSH attention of the paper in one call: lsh_hash_sort -> lsh_attention.

    A sequence no longer than ``chunk_len`` gets full attention (no hashing, as transformers). A
    longer one whose length is not a multiple of chunk_len is padded with masked positions (which
    then hash to the padding bucket) and the output cropped.

    Args:
        qk, v: (B, H, L, d), one float dtype, one device.
        rotations: (H, d, n_hashes, R / 2) in qk's dtype; see ``lsh_hash``.
        n_buckets: even int or tuple of even factors; see ``default_num_buckets``.
        chunk_len: int >= 1. n_chunks_before, n_chunks_after: int >= 0.
        causal: bool. attention_mask: (B, L) or None.
        dropout_p: float in [0, 1), dropout on the attention probabilities (every backend;
            drawn inside the kernels from a Philox key taken from the default generator, so
            seeding it reproduces the dropout, on every backend the same; no mask is stored).
        backend: see ``reformer_kernels.backends``; used for every step.

    Returns:
        out (B, H, L, d) in qk's dtype.
    """
    fn = "lsh_self_attention"
    _check_heads_tensor(fn, "qk", qk)
    _check_heads_tensor(fn, "v", v)
    _check_same(fn, "qk", qk, "v", v)
    n_buckets = _check_hashing(fn, rotations, qk, n_buckets)
    _check_chunking(fn, chunk_len, n_chunks_before, n_chunks_after)
    _check_bool(fn, "causal", causal)
    attention_mask = _check_attention_mask(fn, attention_mask, qk)
    dropout_p = _check_dropout_p(fn, dropout_p)
    masks = dict(causal=causal, dropout_p=dropout_p, backend=backend)

    batch, heads, seq_len, _ = qk.shape
    if seq_len <= chunk_len:
        positions = torch.arange(seq_len, device=qk.device).expand(batch, heads, seq_len)
        out, _ = _run_lsh_attention(
            qk,
            v,
            positions,
            n_hashes=1,
            chunk_len=seq_len,
            n_chunks_before=0,
            n_chunks_after=0,
            attention_mask=attention_mask,
            **masks,
        )
        return out

    padded_len = math.ceil(seq_len / chunk_len) * chunk_len
    _check_window(fn, rotations.shape[2] * padded_len // chunk_len, n_chunks_before, n_chunks_after)
    if padded_len > seq_len:
        (qk, v), attention_mask = reference.pad_sequence((qk, v), attention_mask, padded_len)
    sorted_idx = _hash_sort(qk, rotations, n_buckets, attention_mask, backend)
    out, _ = _run_lsh_attention(
        qk,
        v,
        sorted_idx,
        n_hashes=rotations.shape[2],
        chunk_len=chunk_len,
        n_chunks_before=n_chunks_before,
        n_chunks_after=n_chunks_after,
        attention_mask=attention_mask,
        **masks,
    )
    return out[:, :, :seq_len]


def _check_sort_key_runs(fn: str, name: str, runs: object, like: torch.Tensor) -> torch.Tensor:
    """int64 sort keys (B, H, n_hashes, n) of the (B, H, L, d) tensor ``like``."""
    if not isinstance(runs, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(runs).__name__}")
    if runs.dtype != torch.int64:
        raise TypeError(f"{fn}: {name} must be int64 sort keys (bucket * 2**32 + position), got {runs.dtype}")
    if runs.dim() != 4 or tuple(runs.shape[:2]) != tuple(like.shape[:2]) or runs.shape[2] < 1:
        raise ValueError(
            f"{fn}: {name} must be (batch, heads, n_hashes, n) = ({like.shape[0]}, {like.shape[1]}, n_hashes >= 1, n), "
            f"got {tuple(runs.shape)}"
        )
    if runs.device != like.device:
        raise ValueError(f"{fn}: {name} is on {runs.device} but qk is on {like.device}; move it")
    return runs


def lsh_decode_step(
    qk: torch.Tensor,
    v: torch.Tensor,
    merged: torch.Tensor,
    recent: torch.Tensor,
    n_recent: int,
    sort_keys: torch.Tensor,
    key_valid: torch.Tensor,
    *,
    position: int,
    padded_len: int,
    chunk_len: int,
    n_chunks_before: int = 1,
    n_chunks_after: int = 0,
    backend: str | None = None,
) -> torch.Tensor:
    """One cached decoding step of causal LSH attention, in one call: inserts ``position`` into
    each hash round's bucket order (in ``recent``, in place) and attends it within its chunk
    windows, exactly as ``lsh_attention`` (causal, stable bucket order, rounds combined by lse)
    attends position ``position`` of ``padded_len`` positions whose ones past ``position`` are
    padding. Cost per call: a binary search per round and one window of attention per round,
    whatever the context, plus the insertion into ``recent`` (at most its length).

    A round's order is held as sort keys, bucket * 2**32 + position (padding in bucket
    prod(n_buckets), after the others), in two sorted runs: ``merged`` and the first ``n_recent``
    entries of ``recent``. The caller counts n_recent + 1 after the call and merges the two runs
    before ``recent`` is full, e.g. once every ``recent.shape[-1]`` calls
    (``reformer_kernels.nn.attention.BucketOrder``).

    Args:
        qk, v: (B, H, capacity, d), the cached shared query/key projections and values,
            position ``position`` included; one float dtype, one device.
        merged: (B, H, n_hashes, m) int64, each round's sorted keys.
        recent: (B, H, n_hashes, R) int64, contiguous, each round's sorted first ``n_recent`` keys
            (written: the new key is inserted).
        n_recent: int in [0, R), with m + n_recent = position.
        sort_keys: (B, H, n_hashes) int64, position's keys (its bucket in each round).
        key_valid: (B, position + 1) bool, False at padding.
        position: int in [0, capacity). padded_len: a multiple of chunk_len > position.
        chunk_len: int >= 1. n_chunks_before, n_chunks_after: int >= 0.
        backend: see ``reformer_kernels.backends``.

    Returns:
        out (B, H, d) in qk's dtype.
    """
    fn = "lsh_decode_step"
    _check_heads_tensor(fn, "qk", qk)
    _check_heads_tensor(fn, "v", v)
    _check_same(fn, "qk", qk, "v", v)
    _check_sort_key_runs(fn, "merged", merged, qk)
    _check_sort_key_runs(fn, "recent", recent, qk)
    n_hashes = merged.shape[2]
    if recent.shape[2] != n_hashes:
        raise ValueError(f"{fn}: recent holds {recent.shape[2]} rounds but merged {n_hashes}; pass the runs of one bucket order")
    if not recent.is_contiguous():
        raise ValueError(f"{fn}: recent must be contiguous (the step inserts into it in place); pass the order's own tensor")
    capacity = qk.shape[2]
    _check_int(fn, "position", position, 0)
    if position >= capacity:
        raise ValueError(f"{fn}: position {position} is past the {capacity} positions qk and v hold; write it into the cache first")
    _check_int(fn, "n_recent", n_recent, 0)
    if n_recent >= recent.shape[3]:
        raise ValueError(
            f"{fn}: n_recent {n_recent} leaves no free slot in recent (length {recent.shape[3]}); merge the runs first"
        )
    if merged.shape[3] + n_recent != position:
        raise ValueError(
            f"{fn}: merged ({merged.shape[3]} keys) and n_recent ({n_recent}) must hold the {position} positions before "
            f"position {position}; step one position at a time"
        )
    if not isinstance(sort_keys, torch.Tensor) or sort_keys.dtype != torch.int64:
        raise TypeError(f"{fn}: sort_keys must be an int64 tensor, got {getattr(sort_keys, 'dtype', type(sort_keys).__name__)}")
    if tuple(sort_keys.shape) != (*qk.shape[:2], n_hashes) or sort_keys.device != qk.device:
        raise ValueError(
            f"{fn}: sort_keys must be (batch, heads, n_hashes) = {(*qk.shape[:2], n_hashes)} on {qk.device}, "
            f"got {tuple(sort_keys.shape)} on {sort_keys.device}"
        )
    if checks_values(sort_keys) and bool((sort_keys % 2**32 != position).any()):
        raise ValueError(f"{fn}: sort_keys must hold position {position} in their low 32 bits: pass the new position's keys")
    if not isinstance(key_valid, torch.Tensor) or key_valid.dtype != torch.bool:
        raise TypeError(f"{fn}: key_valid must be a bool tensor, got {getattr(key_valid, 'dtype', type(key_valid).__name__)}")
    if tuple(key_valid.shape) != (qk.shape[0], position + 1) or key_valid.device != qk.device:
        raise ValueError(
            f"{fn}: key_valid must be (batch, position + 1) = {(qk.shape[0], position + 1)} on {qk.device}, "
            f"got {tuple(key_valid.shape)} on {key_valid.device}"
        )
    _check_chunking(fn, chunk_len, n_chunks_before, n_chunks_after)
    _check_int(fn, "padded_len", padded_len, 1)
    if padded_len <= position or padded_len % chunk_len:
        raise ValueError(
            f"{fn}: padded_len {padded_len} must be a multiple of chunk_len {chunk_len} greater than position {position}"
        )
    _check_window(fn, n_hashes * padded_len // chunk_len, n_chunks_before, n_chunks_after)
    _, impl = backends.select("lsh_decode_step", qk.device, backend)
    return impl(qk, v, merged, recent, n_recent, sort_keys, key_valid, position, padded_len, chunk_len, n_chunks_before,
                n_chunks_after)


def dropout_add(
    residual: torch.Tensor,
    x: torch.Tensor,
    p: float,
    *,
    training: bool = True,
    subtract: bool = False,
    generator: torch.Generator | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """residual + dropout(x, p), or with ``subtract`` residual - dropout(x, p): the residual
    connection of a reversible half (y1 = x1 + dropout(attention(x2))) and its inverse, the
    backward's reconstruction (x1 = y1 - dropout(attention(x2))).

    Dropout as torch's: elements of x kept with probability 1 - p and scaled by 1 / (1 - p). The
    keep decisions are a Philox stream whose key is drawn from ``generator`` (default: the default
    generator of the inputs' device), so restoring the generator state before a second call
    regenerates them, and every backend draws the same ones (``reformer_kernels.reference.dropout``;
    not torch's own dropout mask). The cpu and triton backends are one fused kernel that stores no
    mask: the backward regenerates it from the saved seed and offset. With ``training=False`` or
    p = 0 no random number is drawn.

    Args:
        residual: float tensor, any shape. x: float tensor of residual's shape and device; the dtypes
            may differ (autocast), the result has their promoted dtype.
        p: float in [0, 1], the probability of dropping an element of x (1: the result is residual).
        training: bool, False for no dropout (eval). subtract: bool.
        generator: a torch.Generator on the inputs' device type, or None.
        backend: see ``reformer_kernels.backends``.

    Returns:
        A tensor of residual's shape, dtype torch.promote_types(residual.dtype, x.dtype).
    """
    fn = "dropout_add"
    _check_float_tensor(fn, "residual", residual)
    _check_float_tensor(fn, "x", x)
    if x.shape != residual.shape:
        raise ValueError(
            f"{fn}: x has shape {tuple(x.shape)} but residual has {tuple(residual.shape)}; they must match (no broadcasting)"
        )
    if x.device != residual.device:
        raise ValueError(f"{fn}: x is on {x.device} but residual is on {residual.device}; move them to one device")
    p = _check_dropout_p(fn, p, name="p", allow_one=True)
    _check_bool(fn, "training", training)
    _check_bool(fn, "subtract", subtract)
    _check_generator(fn, generator, x)
    _, impl = backends.select("dropout_add", x.device, backend)
    return impl(residual, x, p, training=training, subtract=subtract, generator=generator)


def dropout(
    x: torch.Tensor,
    p: float,
    *,
    training: bool = True,
    generator: torch.Generator | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """dropout(x, p) as ``dropout_add`` draws it, without a residual: elements of x kept with
    probability 1 - p and scaled by 1 / (1 - p), decided by the Philox stream keyed from
    ``generator`` (default: the default generator of x's device), so restoring the generator state
    regenerates the mask; the cpu and triton backends store no mask for the backward.

    Args:
        x: float tensor, any shape. p: float in [0, 1]. training: bool, False for no dropout.
        generator: a torch.Generator on x's device type, or None. backend: see ``reformer_kernels.backends``.

    Returns:
        A tensor of x's shape and dtype.
    """
    fn = "dropout"
    _check_float_tensor(fn, "x", x)
    p = _check_dropout_p(fn, p, name="p", allow_one=True)
    _check_bool(fn, "training", training)
    _check_generator(fn, generator, x)
    _, impl = backends.select("dropout_add", x.device, backend)
    return impl(None, x, p, training=training, subtract=False, generator=generator)


def dropout_relu(
    x: torch.Tensor,
    p: float,
    *,
    bias: torch.Tensor | None = None,
    training: bool = True,
    generator: torch.Generator | None = None,
    grad_in_place: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """relu(dropout(x + bias, p)), the feed-forward's bias, dropout and relu activation (in
    transformers' order), in one kernel each way, after a bias-free matrix product (whose output
    torch need not first fill with the bias): the mask is the one ``dropout`` draws from a generator
    in the same state (restoring the state regenerates it), and the backward needs none (an output
    element is positive exactly where x + bias was kept and positive). With ``training=False`` or
    p = 0 it is torch.relu(x + bias) and draws nothing.

    Args:
        x: float tensor, any shape. p: float in [0, 1].
        bias: None or a (x.shape[-1],) tensor of x's dtype and device. training: bool, False for no dropout.
        generator: a torch.Generator on x's device type, or None.
        grad_in_place: bool; True lets the backward write x's gradient over the output's (the "cpu"
            backend, outside torch.compile): one tensor of x's size fewer alive. Only for an output
            whose gradient nothing else reads (e.g. one that only a Linear consumes, whose backward
            hands over a fresh gradient); never for one that you pass your own gradient to.
        backend: see ``reformer_kernels.backends``.

    Returns:
        A tensor of x's shape and dtype.
    """
    fn = "dropout_relu"
    _check_float_tensor(fn, "x", x)
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"{fn}: bias must be a torch.Tensor or None, got {type(bias).__name__}")
        if x.dim() == 0 or bias.shape != x.shape[-1:]:
            raise ValueError(f"{fn}: bias must have shape (x.shape[-1],) = {tuple(x.shape[-1:])}, got {tuple(bias.shape)}")
        if bias.dtype != x.dtype:
            raise TypeError(f"{fn}: bias is {bias.dtype} but x is {x.dtype}; cast it with .to(x.dtype)")
        if bias.device != x.device:
            raise ValueError(f"{fn}: bias is on {bias.device} but x is on {x.device}; move them to one device")
    p = _check_dropout_p(fn, p, name="p", allow_one=True)
    _check_bool(fn, "training", training)
    _check_generator(fn, generator, x)
    _check_bool(fn, "grad_in_place", grad_in_place)
    _, impl = backends.select("dropout_relu", x.device, backend)
    return impl(x, bias, p, training=training, generator=generator, grad_in_place=grad_in_place)
