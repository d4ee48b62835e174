"""Bytes and FLOPs per token-head of every GPU kernel the ops launch, and the time they would take on
an H100, counted without a GPU from what the launchers pass, so that a first GPU run has numbers to
be compared with.

    python -m benchmarks --suite traffic [--configs cnp enwik8] [--precisions bf16 fp32 fp32-tf32]
                                         [--seq-len L] [--out DIR]

Each op's Triton launcher runs on CPU tensors laid out as a layer passes them (head-split views of
the projections), with its launches recorded instead of run (tests/triton_launches.py) and every
torch op it calls around them seen by a dispatch mode: the launcher's ``.contiguous()`` copies,
fp32 buffers and prologue/epilogue arithmetic are kernels on a GPU too. The hash is the layer's
lsh_hash_packed, which writes the sort's packed (row, id) keys and int32 positions. The sort has no
Triton kernel: its row is a model of CUB's device-wide radix sort of those keys and positions as
bucket_sort_packed runs it, with no packing pass (bucket_sort's, on int64 ids, read 8 bytes and
wrote 8 per entry): each pass reads and writes every key and value once, the first reading the
hash's output and the last writing sorted_idx; one pass per 8 bits of the largest packed key,
rows * num_keys - 1, with the keys' and positions' sizes as the hash allocates them. So the
numbers follow the launchers: change what they pass and the report changes with them.

Bytes: every tensor a kernel reads or writes, counted once per launch (distinct elements x element
size; an argument that the launch's constexprs leave unused, such as the dummy mask, is not
counted). That is the compulsory traffic, the DRAM bytes when the L2 cache serves re-reads (the
attention window's neighbour chunks, the LM head's weight tiles); it is a lower bound.
FLOPs: the matrix products the kernels execute, tile padding and the backward's recomputation
included (benchmarks/flops.py counts the op's useful work instead); softmax, masks and elementwise
work are not counted. Time per launch on an H100 SXM: max(bytes / 3.35 TB/s, FLOPs / peak), the peak
of the dots' precision: 990 TFLOP/s for fp16/bf16 tensor cores, 495 for TF32, 67 for fp32 on the FMA
units (the default, "ieee"; see triton_utils.dot_precision).
Minimum: per op, the bytes its inputs and outputs take when each is read or written once, indices
as int32 and activations in the input dtype (issue 30 puts the LSH forward at about 1.5 KB and its
backward at 2-4 KB per token-head).

Configurations: the published ones of bench_real_configs (batch 1, causal, no padding): cnp at 16K
(hidden 256, 2 heads of 64, 1 hash, buckets [64, 128], chunks of 64, vocab 320, hidden dropout 0.05,
local attention dropout 0.05) and enwik8 at 4K (hidden 1024, 8 heads of 128, 4 hashes, 32 buckets, LSH chunk 256,
local chunk 128, vocab 258, hidden dropout 0.2, attention dropouts 0.1), each in bf16 (every tensor
in bf16; fp16 moves the same bytes), fp32 and fp32 with TF32 allowed.
Writes traffic.csv/.json to --out (default bench-results/h100-estimate/) and prints the table.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass, replace

import torch
import triton
from torch.utils._python_dispatch import TorchDispatchMode

from reformer_kernels import reference
from reformer_kernels.ops.dropout_add import triton_kernels as triton_dropout_add
from reformer_kernels.ops.linear_cross_entropy import triton_kernels as triton_cross_entropy
from reformer_kernels.ops.local_attention import triton_kernels as triton_local_attention
from reformer_kernels.ops.lsh_attention import triton_kernels as triton_lsh_attention
from reformer_kernels.ops.lsh_hash import triton_kernels as triton_hashing
from reformer_kernels.reference.hashing import bucket_factors
from tests.triton_launches import launched_function, recorded_launches, tf32_matmuls

from . import report

SUITE = "traffic"
HBM_BYTES_PER_S = 3.35e12
# H100 SXM dense peaks by the dots' precision (tensor cores for fp16/bf16 and TF32, FMA units for ieee fp32).
PEAK_FLOPS = {"16-bit": 990e12, "tf32": 495e12, "ieee": 67e12}
COLUMNS = ("config", "seq_len", "precision", "op", "kernel", "launches", "read_bytes", "write_bytes", "bytes", "min_bytes",
           "flops", "memory_us", "compute_us", "estimate_us", "bound")
SHOWN = ("config", "seq_len", "precision", "op", "kernel", "launches", "bytes", "min_bytes", "flops", "estimate_us", "bound")
TOTAL = "total"


@dataclass(frozen=True)
class Config:
    """A published Reformer configuration at one length: what its kernels' shapes depend on."""
    name: str
    seq_len: int
    hidden: int
    heads: int
    head_dim: int
    n_hashes: int
    n_buckets: int | tuple[int, ...]
    lsh_chunk_len: int
    local_chunk_len: int
    vocab_size: int
    hidden_dropout: float
    local_dropout: float
    lsh_dropout: float
    batch: int = 1
    n_chunks_before: int = 1
    n_chunks_after: int = 0


CONFIGS = {config.name: config for config in (
    Config("cnp", 16384, 256, 2, 64, 1, (64, 128), 64, 64, 320, 0.05, 0.05, 0.0),
    Config("enwik8", 4096, 1024, 8, 128, 4, 32, 256, 128, 258, 0.2, 0.1, 0.1),
)}
# (name, dtype, allow_tf32)
PRECISIONS = (("bf16", torch.bfloat16, False), ("fp32", torch.float32, False), ("fp32-tf32", torch.float32, True))


def distinct_bytes(t: torch.Tensor) -> int:
    """The memory a tensor's elements occupy: a broadcast (stride 0) dimension counts once."""
    return math.prod(size for size, stride in zip(t.shape, t.stride()) if stride != 0) * t.element_size()


@dataclass
class Kernel:
    """One launch: a Triton kernel or a torch op (a kernel of its own on a GPU)."""
    name: str
    read_bytes: int
    write_bytes: int
    flops: float = 0.0
    peak: str = "16-bit"


class TorchOps(TorchDispatchMode):
    """Appends a Kernel for every torch op that moves data: views and allocations move none; an op
    reads its tensor arguments and writes its outputs and the arguments it mutates."""
    ALLOCATIONS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}

    def __init__(self, kernels: list):
        super().__init__()
        self.kernels = kernels

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func.overloadpacket.__name__
        if func.is_view or packet in self.ALLOCATIONS:
            return out
        mutated = {argument.name for argument in func._schema.arguments
                   if argument.alias_info is not None and argument.alias_info.is_write}
        named = dict(zip((argument.name for argument in func._schema.arguments), args), **kwargs)
        reads = [t for name, value in named.items() if name not in mutated or packet not in ("copy_", "fill_", "zero_")
                 for t in tensors(value)]
        writes = [t for name in mutated for t in tensors(named.get(name))]
        if not mutated:
            writes += tensors(out)
        self.kernels.append(Kernel(f"{func.namespace}.{packet}", sum(map(distinct_bytes, reads)),
                                   sum(map(distinct_bytes, writes))))
        return out


def tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in tensors(item)]
    return []


# What each Triton kernel writes (every other tensor argument is read), and the constexpr flags
# without which an argument is a placeholder that the kernel never touches. A tensor passed twice
# (LSH's backward stores dk into DQ, passing the same buffer as DK) counts once.
WRITES = {
    "_hash_kernel": {"Keys", "Positions"},
    "attention_fwd_kernel": {"Out", "Lse"},
    "attention_bwd_prologue_kernel": {"RoundWeight", "Delta"},
    "attention_bwd_kernel": {"DQ", "DK", "DV"},
    "_sum_rounds_kernel": {"GradQK", "GradV"},
    "_combine_rounds_kernel": {"Out"},
    "_dropout_add_kernel": {"Out"},
    "linear_cross_entropy_fwd_kernel": {"Losses", "Lse"},
    "linear_cross_entropy_grad_hidden_kernel": {"GradHidden"},
    "linear_cross_entropy_grad_weight_kernel": {"GradWeight", "GradBias"},
}
USED_ONLY_WITH = {"SortedIdx": ("LSH",), "RoundWeight": ("LSH",), "DLse": ("HAS_DLSE",),
                  "Mask": ("HAS_MASK", "HAS_PADDING"), "Positions": ("WRITE_POSITIONS",), "Bias": ("HAS_BIAS",),
                  "Residual": ("HAS_RESIDUAL",)}


def used(param: str, constexprs: dict) -> bool:
    """Whether a launch with these constexprs touches its tensor argument ``param``."""
    return all(constexprs[flag] for flag in USED_ONLY_WITH.get(param, ()) if flag in constexprs)


def dot_flops(name: str, a: dict) -> float:
    """The FLOPs of the tl.dot products that a launch executes (tiles padded, the backward's
    recomputation included), from its arguments ``a`` by parameter name."""
    if name == "attention_fwd_kernel" or name == "attention_bwd_kernel":
        batch, heads = a["Q"].shape[:2]
        block, head = a["BLOCK"], a["HEAD_BLOCK"]
        window = a["window"] if name == "attention_fwd_kernel" else a["n_chunks_before"] + 1 + a["n_chunks_after"]
        programs = a["n_slots"] // a["chunk_len"] * triton.cdiv(a["chunk_len"], block) * heads * batch
        # forward: q k^T and p v per key block; backward: stage 1 (q k^T, do v^T, p^T do, ds^T q) then
        # stage 2 (q k^T, do v^T, ds k), over the same window
        dots = 2 if name == "attention_fwd_kernel" else 4 + 3
        return programs * triton.cdiv(window * a["chunk_len"], block) * dots * 2.0 * block * block * head
    if name == "_hash_kernel":
        batch, heads, seq_len = a["X"].shape[:3]
        n_hashes = a["Rotations"].shape[2]
        tiles = sum(triton.cdiv(factor // 2, a["ROT_BLOCK"]) for factor in a["factors"])
        return n_hashes * triton.cdiv(seq_len, a["BLOCK"]) * heads * batch * tiles * 2.0 * a["BLOCK"] * a["HEAD_BLOCK"] * a["ROT_BLOCK"]
    if name.startswith("linear_cross_entropy"):
        n, v, d, bn, bv, bd = a["n_tokens"], a["vocab_size"], a["dim"], a["BLOCK_N"], a["BLOCK_V"], a["BLOCK_D"]
        tiles = triton.cdiv(n, bn) * triton.cdiv(v, bv)
        logits = tiles * triton.cdiv(d, bd) * 2.0 * bn * bv * bd
        if name == "linear_cross_entropy_fwd_kernel":
            return logits
        # each of the dim / BLOCK_OUT programs that share a logits tile recomputes it
        out_tiles = triton.cdiv(d, a["BLOCK_OUT"])
        return out_tiles * (logits + tiles * 2.0 * bn * bv * a["BLOCK_OUT"])
    return 0.0


def triton_kernel(kernel, args: tuple, kwargs: dict) -> Kernel:
    """A recorded Triton launch as a Kernel: its tensors' bytes and its dots' FLOPs."""
    fn = launched_function(kernel)
    name = fn.fn.__name__
    named = dict(zip(fn.arg_names, args), **kwargs)
    if name not in WRITES:
        raise KeyError(f"bench_traffic: no read/write split for the Triton kernel {name}: add it to WRITES")
    constexprs = {key: value for key, value in named.items() if not isinstance(value, torch.Tensor)}
    reads, writes = {}, {}
    for param, value in named.items():
        if isinstance(value, torch.Tensor) and used(param, constexprs):
            (writes if param in WRITES[name] else reads)[value.data_ptr()] = distinct_bytes(value)
    precision = named.get("DOT_PRECISION", "ieee")
    dtype = next(value.dtype for value in named.values() if isinstance(value, torch.Tensor) and value.is_floating_point())
    peak = "16-bit" if dtype in (torch.float16, torch.bfloat16) else precision
    return Kernel(name, sum(reads.values()), sum(writes.values()), dot_flops(name, named), peak)


def record(call) -> tuple[list[Kernel], object]:
    """The kernels, in launch order, that ``call()`` would run on a GPU, and what it returned (the
    outputs of recorded launches are allocated, never written)."""
    with recorded_launches() as launches, TorchOps(launches):
        result = call()
    return [launch if isinstance(launch, Kernel) else triton_kernel(*launch) for launch in launches], result


def head_split(config: Config, dtype: torch.dtype) -> torch.Tensor:
    """(B, H, L, d) as a layer's projection gives it: a view of (B, L, H * d)."""
    x = torch.randn(config.batch, config.seq_len, config.heads, config.head_dim, dtype=dtype)
    return x.transpose(1, 2)


def sort_kernels(config: Config, keys: torch.Tensor, positions: torch.Tensor) -> tuple[list[Kernel], torch.Tensor]:
    """The radix passes of bucket_sort_packed over the hash's ``keys`` and ``positions``, modeled
    (see the module docstring); also returns, for the attention, the sorted_idx of a reference hash."""
    qk = head_split(config, torch.float32)
    rotations = torch.randn(config.heads, config.head_dim, config.n_hashes, sum(bucket_factors(config.n_buckets)) // 2)
    buckets, num_keys = reference.hash_vectors(qk, rotations, config.n_buckets)
    key_bits = (buckets.shape[0] * buckets.shape[1] * num_keys - 1).bit_length()
    passes = math.ceil(key_bits / 8)
    moved = passes * keys.numel() * (keys.element_size() + positions.element_size())
    return [Kernel(f"radix passes (model: {passes})", moved, moved)], reference.argsort_buckets(buckets, num_keys)


def op_kernels(config: Config, dtype: torch.dtype) -> dict[str, list[Kernel]]:
    """Every op's kernels for one layer of each kind, the reversible residuals and the LM head loss."""
    c = config
    # the gradient of the attention output comes back through the head merge as a head-split view too
    qk, v, q, k, grad_out = (head_split(c, dtype) for _ in range(5))
    seed, offset = -(2**62) - 5, 8
    lsh = (c.n_hashes, c.lsh_chunk_len, c.n_chunks_before, c.n_chunks_after, True, None, c.lsh_dropout, seed, offset)
    local = (c.local_chunk_len, c.n_chunks_before, c.n_chunks_after, True, None, c.local_dropout, seed, offset)
    factors = list(bucket_factors(c.n_buckets))
    rotations = torch.randn(c.heads, c.head_dim, c.n_hashes, sum(factors) // 2, dtype=dtype)
    ops = {}
    ops["lsh_hash"], (keys, positions) = record(lambda: triton_hashing.lsh_hash_packed._init_fn(qk, rotations, factors, None))
    ops["bucket_sort"], sorted_idx = sort_kernels(c, keys, positions)
    ops["lsh_attention fwd"], (out, lse) = record(
        lambda: triton_lsh_attention.lsh_attention_fwd._init_fn(qk, v, sorted_idx, *lsh))
    ops["lsh_attention bwd"], _ = record(lambda: triton_lsh_attention.lsh_attention_bwd._init_fn(
        grad_out, None, qk, v, sorted_idx, out, lse, *lsh))
    ops["local_attention fwd"], (out, lse) = record(
        lambda: triton_local_attention.local_attention_fwd._init_fn(q, k, v, *local))
    ops["local_attention bwd"], _ = record(lambda: triton_local_attention.local_attention_bwd._init_fn(
        grad_out, q, k, v, out, lse, *local))
    # a reversible half: y = x + dropout(f(x)) forward, x = y - dropout(f) and d f = dropout(d y) backward
    residual, branch = (torch.randn(c.batch, c.seq_len, c.hidden, dtype=dtype) for _ in range(2))
    dropout_add = triton_dropout_add.dropout_add_op._init_fn
    ops["dropout_add fwd"], _ = record(lambda: dropout_add(residual, branch, c.hidden_dropout, seed, offset, False, dtype))
    ops["dropout_add reconstruct"], _ = record(
        lambda: dropout_add(residual, branch, c.hidden_dropout, seed, offset, True, dtype))
    ops["dropout_add bwd"], _ = record(lambda: dropout_add(None, branch, c.hidden_dropout, seed, offset, False, dtype))
    # the LM head reads the concatenated reversible halves (2 * hidden) and has a bias
    tokens, dim = c.batch * c.seq_len, 2 * c.hidden
    hidden, weight = torch.randn(tokens, dim, dtype=dtype), torch.randn(c.vocab_size, dim, dtype=dtype)
    bias, labels = torch.randn(c.vocab_size, dtype=dtype), torch.randint(0, c.vocab_size, (tokens,))
    ops["linear_cross_entropy fwd"], (_, lse) = record(
        lambda: triton_cross_entropy.linear_cross_entropy_fwd._init_fn(hidden, weight, bias, labels, -100))
    # the loss is the mean of the per-token losses (its gradient a broadcast scalar); the op's
    # backward fills the gradient of the unused lse with zeros
    grad_losses = torch.ones(()).expand(tokens)

    def loss_backward():
        scales = triton_cross_entropy.row_scales(grad_losses, torch.zeros_like(lse), labels, -100)
        triton_cross_entropy.linear_cross_entropy_grad_hidden._init_fn(*scales, hidden, weight, bias, labels, lse)
        triton_cross_entropy.linear_cross_entropy_grad_weight._init_fn(*scales, hidden, weight, bias, labels, lse)

    ops["linear_cross_entropy bwd"], _ = record(loss_backward)
    return ops


def minimum_bytes(op: str, config: Config, dtype: torch.dtype) -> float:
    """The bytes of ``op``'s inputs and outputs, each read or written once (activations in
    ``dtype``, sorted indices and sort keys int32, lse fp32), for the whole sequence."""
    c, size = config, torch.empty((), dtype=dtype).element_size()
    rows = c.batch * c.heads * c.seq_len  # token-heads
    activation = rows * c.head_dim * size  # one (B, H, L, d) tensor
    per_round = rows * c.n_hashes * 4  # one int32 / fp32 value per token-head and round
    tokens, dim = c.batch * c.seq_len, 2 * c.hidden
    residual = tokens * c.hidden * size  # one (B, L, hidden) tensor
    head = c.vocab_size * dim * size + c.vocab_size * size  # weight and bias
    return {
        "lsh_hash": activation + per_round,  # vectors in, keys out
        "bucket_sort": 2 * per_round,  # keys in, sorted indices out
        "lsh_attention fwd": 3 * activation + 2 * per_round,  # qk, v, sorted_idx in; out, lse out
        "lsh_attention bwd": 6 * activation + 2 * per_round,  # qk, v, out, d out, sorted_idx, lse in; d qk, d v out
        "local_attention fwd": 4 * activation + rows * 4,  # q, k, v in; out, lse out
        "local_attention bwd": 8 * activation + rows * 4,  # q, k, v, out, d out, lse in; d q, d k, d v out
        "dropout_add fwd": 3 * residual,  # residual, x in, their sum out
        "dropout_add bwd": 2 * residual,  # d out in, d x out
        "dropout_add reconstruct": 3 * residual,  # y, f in, x out
        "linear_cross_entropy fwd": tokens * (dim * size + 4 + 4 + 4) + head,  # hidden, labels in; loss, lse out
        "linear_cross_entropy bwd": tokens * (2 * dim * size + 4 + 4) + 2 * head,  # and d hidden, d weight, d bias
    }[op]


def estimate(kernels: list[Kernel]) -> tuple[float, float, float]:
    """(memory-bound, compute-bound, estimated) microseconds, summed over launches."""
    memory = sum((k.read_bytes + k.write_bytes) / HBM_BYTES_PER_S for k in kernels) * 1e6
    compute = sum(k.flops / PEAK_FLOPS[k.peak] for k in kernels) * 1e6
    both = sum(max((k.read_bytes + k.write_bytes) / HBM_BYTES_PER_S, k.flops / PEAK_FLOPS[k.peak]) for k in kernels) * 1e6
    return memory, compute, both


def row(config: Config, precision: str, op: str, kernel: str, kernels: list[Kernel], min_bytes: float | None) -> dict:
    rows = config.batch * config.heads * config.seq_len
    read, write = sum(k.read_bytes for k in kernels), sum(k.write_bytes for k in kernels)
    memory, compute, both = estimate(kernels)
    return dict(config=config.name, seq_len=config.seq_len, precision=precision, op=op, kernel=kernel, launches=len(kernels),
                read_bytes=round(read / rows, 1), write_bytes=round(write / rows, 1), bytes=round((read + write) / rows, 1),
                min_bytes="" if min_bytes is None else round(min_bytes / rows, 1),
                flops=round(sum(k.flops for k in kernels) / rows), memory_us=round(memory, 2), compute_us=round(compute, 2),
                estimate_us=round(both, 2), bound="memory" if memory >= compute else "compute")


def rows_for(config: Config, precision: str, dtype: torch.dtype, tf32: bool) -> list[dict]:
    """Per op: a row per kernel (launches of one kernel summed), then the op's total; last the
    configuration's total over every op. Bytes and FLOPs per token-head, times for the sequence."""
    torch.manual_seed(0)
    with tf32_matmuls(tf32):
        ops = op_kernels(config, dtype)
    rows, every = [], []
    for op, kernels in ops.items():
        names = list(dict.fromkeys(k.name for k in kernels))
        rows += [row(config, precision, op, name, [k for k in kernels if k.name == name], None) for name in names]
        rows.append(row(config, precision, op, TOTAL, kernels, minimum_bytes(op, config, dtype)))
        every += kernels
    minimum = sum(minimum_bytes(op, config, dtype) for op in ops)
    rows.append(row(config, precision, TOTAL, TOTAL, every, minimum))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks --suite {SUITE}", description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    p.add_argument("--precisions", nargs="+", choices=[name for name, _, _ in PRECISIONS],
                   default=[name for name, _, _ in PRECISIONS])
    p.add_argument("--seq-len", type=int, default=None,
                   help="another length for every configuration (default: cnp 16K, enwik8 4K; the other fields, buckets included, kept)")
    p.add_argument("--out", default=None, help="output folder (default: bench-results/h100-estimate/, not tracked by git)")
    args = p.parse_args(argv)
    rows = []
    for name in args.configs:
        config = CONFIGS[name] if args.seq_len is None else replace(CONFIGS[name], seq_len=args.seq_len)
        for precision, dtype, tf32 in PRECISIONS:
            if precision in args.precisions:
                rows += rows_for(config, precision, dtype, tf32)
    out_dir = args.out or os.path.join(report.OUT, "h100-estimate")
    env = dict(report.environment(torch.device("cpu")), hbm_bytes_per_s=HBM_BYTES_PER_S, peak_flops=PEAK_FLOPS)
    header = [f"per token-head: bytes (read + written), min_bytes (each input and output once) and FLOPs (executed dots); "
              f"estimate_us: the whole sequence on an H100, max(bytes / {HBM_BYTES_PER_S / 1e12:.2f} TB/s, FLOPs / peak) "
              "per launch"]
    report.write_table(out_dir, SUITE, COLUMNS, rows, SHOWN, header)
    report.write_suite(out_dir, SUITE, rows, env, columns=COLUMNS, rows_key="kernels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
