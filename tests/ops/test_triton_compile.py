"""Every Triton kernel compiles to a cubin for sm_80 and sm_90 without a GPU, as a launch compiles it.

The interpreter runs the kernels' Python, not the compiler, so type and layout errors that only
compiled code hits (loop-carried types, dot shapes, shared memory), register spills and missing
tensor-core instructions would otherwise wait for a GPU machine. Each test calls the op's real
launcher on CPU tensors laid out as a GPU run lays them out, recording its launches instead of
running them (tests/triton_launches.py); each recorded launch is then
specialized by Triton's own binder (pointer and int divisibility by 16, ints equal to 1), for
every config its autotuner holds (those its pruning drops for the target too: they must still
spill, the others no more than KNOWN_SPILLS), and compiled with Triton's ptxas for the target; fp32
compiles twice, as launched by default and with torch.backends.cuda.matmul.allow_tf32 (TF32
dots). The cubin's resources come from Triton's cuobjdump. A compile that does not finish within COMPILE_LIMIT_S
fails (a guard against ptxas hanging, as it did on the untiled 2048-bucket hash; not a speed check)."""
import contextlib
import re
import signal
import subprocess
import tempfile
from dataclasses import dataclass

import pytest
import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import create_function_from_signature

from reformer_kernels import backends
from reformer_kernels.ops.dropout_add import triton_kernels as triton_reversible
from reformer_kernels.ops.dropout_relu import triton_kernels as triton_dropout_relu
from reformer_kernels.ops.linear_cross_entropy import triton_kernels as triton_cross_entropy
from reformer_kernels.ops.lsh_hash import triton_kernels as triton_hashing
from tests.triton_launches import (LAUNCH_FLAGS, launchable_configs, launched_function, local_attention_launches,
                                   lsh_attention_launches, recorded_launches, tf32_matmuls)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(backends.triton_interpreted(), reason="under TRITON_INTERPRET=1 the kernels are not compiled"),
]

ARCHS = (80, 90)
# (dtype, torch.backends.cuda.matmul.allow_tf32): fp32 compiles its default full-precision ("ieee")
# dots and, with TF32 allowed, its tensor-core variant.
PRECISIONS = [pytest.param((dtype, tf32), id=str(dtype) + ("-tf32" if tf32 else ""))
              for dtype, tf32 in ((torch.float16, False), (torch.bfloat16, False), (torch.float32, False),
                                  (torch.float32, True))]
# Most dynamic shared memory one block may use (bytes): A100 (sm_80), H100 (sm_90).
SHARED_MEMORY = {80: 166912, 90: 232448}
COMPILE_LIMIT_S = 60


@contextlib.contextmanager
def deadline(seconds: int, what: str):
    def expire(signum, frame):
        raise TimeoutError(f"{what} did not compile within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Variant:
    """One compiled kernel variant and what its cubin uses per thread and block."""
    name: str
    arch: int
    config: dict
    registers: int
    stack_bytes: int  # the local-memory frame: register spills (the kernels hold no local arrays)
    shared_bytes: int
    hmma: int  # warp-level tensor-core instructions (mma.sync)
    hgmma: int  # warpgroup tensor-core instructions (wgmma, sm_90)
    pruned: bool = False  # a config its autotuner drops on this arch (warp_configs' rule), so never launched

    def __str__(self):
        return (f"{self.name} sm_{self.arch} {self.config}{' (pruned)' if self.pruned else ''}: {self.registers} registers, "
                f"{self.stack_bytes} B stack, {self.shared_bytes} B shared, {self.hmma} HMMA, {self.hgmma} HGMMA")


def compile_launch(kernel, args: tuple, kwargs: dict, arch: int) -> list[Variant]:
    """Compile a recorded launch for sm_<arch> as ``JITFunction.run`` would, once per config of its
    autotuner (every config it can choose, and those its pruning drops on sm_<arch>, marked pruned)."""
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    fn = launched_function(kernel)
    configs = kernel.configs if isinstance(kernel, Autotuner) else [None]
    kept = launchable_configs(kernel, args, kwargs, arch) if isinstance(kernel, Autotuner) else configs
    variants = []
    for autotune_config in configs:
        config = autotune_config.all_kwargs() if autotune_config is not None else {}
        launch_kwargs = {**kwargs, **config}
        bound, specialization, _ = create_function_from_signature(fn.signature, fn.params, backend)(*args, **launch_kwargs)
        options, signature, constexprs, attrs = fn._pack_args(backend, launch_kwargs, bound, specialization, None)
        chosen = {key: value for key, value in config.items() if key in ("num_warps", "num_stages")} or \
            {"num_warps": options.num_warps}
        name = fn.__name__
        with deadline(COMPILE_LIMIT_S, f"{name} for sm_{arch} {chosen}"):
            compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)
        variants.append(inspect_cubin(compiled, name, arch, chosen, pruned=autotune_config not in kept))
    return variants


def inspect_cubin(compiled, name: str, arch: int, config: dict, pruned: bool) -> Variant:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        dump = subprocess.run([knobs.nvidia.cuobjdump.path, "-res-usage", "-sass", cubin.name], capture_output=True,
                              text=True, check=True).stdout
    return Variant(name, arch, config, int(re.search(r"REG:(\d+)", dump).group(1)),
                   int(re.search(r"STACK:(\d+)", dump).group(1)), compiled.metadata.shared,
                   len(re.findall(r"\bHMMA\.", dump)), len(re.findall(r"\bHGMMA\.", dump)), pruned)


def compile_op(arch: int, call, tf32: bool = False) -> list[Variant]:
    """Every variant that ``call()`` (an op's launcher on CPU tensors) would compile for sm_<arch>,
    with torch.backends.cuda.matmul.allow_tf32 = ``tf32`` while it launches."""
    with tf32_matmuls(tf32), recorded_launches() as launches:
        call()
    assert launches, "the call launched no Triton kernel"
    return [variant for launch in launches for variant in compile_launch(*launch, arch)]


def check_variants(variants: list[Variant], dtype: torch.dtype, tf32: bool = False, *,
                   without_dots: tuple[str, ...] = ()) -> None:
    """Every variant within its arch's shared memory and, for fp16/bf16 and for fp32 launched with
    ``tf32`` allowed, with tensor-core instructions: HMMA on sm_80; HGMMA or HMMA on sm_90 (Triton
    picks wgmma where the tile and warps allow it, mma.sync elsewhere). Kernels named in
    ``without_dots`` have no tl.dot."""
    for variant in variants:
        print(variant)
        assert variant.shared_bytes <= SHARED_MEMORY[variant.arch], f"{variant}: more shared memory than sm_{variant.arch} has"
        if (dtype != torch.float32 or tf32) and variant.name not in without_dots:
            tensor_core = variant.hmma if variant.arch == 80 else variant.hmma + variant.hgmma
            assert tensor_core > 0, f"{variant}: no tensor-core instruction for its {dtype} dots (tf32 {tf32})"


# Spills in variants that launch where both autotune configs spill (where one does, its autotuner
# drops it: reformer_kernels/ops/attention_spills.py, which says what was measured and how), fp16/bf16:
# (op, head_dim, chunk_len as the test's BLOCK, flags, kernel, arch, num_warps) -> stack bytes per
# thread of the (fp16, bf16) variant, the most allowed; flags are (causal, padding mask, dropout,
# chunk_len - BLOCK), test_attention_kernels_compile's launch EVERY_FLAG, FLAG_LAUNCHES the others.
# History: before the attention kernels' registers were cut (one Philox draw per four dropout
# elements, window loops of 32 entries, gradients written as soon as complete, 32-slot blocks for
# the backward and the head_dim-128 forward), 42 variants of the every-flag launch spilled, up to
# 2128 B; on 2026-12-06 the other flag combinations were measured too: 83 variants spilled 8 to
# 24 B per thread with one of the two configs (now dropped), two with both: local attention's
# head_dim-128 16-slot backward on sm_80, causal with a padding mask and no dropout, 8 B in fp16 and
# bf16.
EVERY_FLAG = LAUNCH_FLAGS[0]
_MASK_ONLY = (True, True, False, 0)
_SPILLS: dict[tuple, tuple[int, int]] = {
    ('local', 128, 16, _MASK_ONLY, 'attention_bwd_kernel', 80, 4): (8, 8),
    ('local', 128, 16, _MASK_ONLY, 'attention_bwd_kernel', 80, 8): (8, 8),
}
KNOWN_SPILLS: dict[tuple, int] = {
    (op, dtype, head_dim, chunk_len, flags, kernel, arch, warps): spills[dtype == torch.bfloat16]
    for (op, head_dim, chunk_len, flags, kernel, arch, warps), spills in _SPILLS.items()
    for dtype in (torch.float16, torch.bfloat16)
    if spills[dtype == torch.bfloat16]
}


def check_spills(variants: list[Variant], dtype: torch.dtype, case: tuple = (), *, fp32: bool = False) -> None:
    """No spills beyond KNOWN_SPILLS[(*case, kernel, arch, num_warps)], and a spill in every config
    that an autotuner drops, in the largest of its variants (else it is dropped for nothing: delete
    the rule). fp32 variants are bounded only where ``fp32``: elsewhere they are reported, not
    bounded. Their ieee dots run on the FMA units out of registers; their tf32 dots (allow_tf32) on tensor cores, whose fp32 operands take
    twice the registers of fp16's in tiles sized for fp16: measured on 2026-12-05 (Triton 3.8.0) for
    the LSH op at chunk_len 64 after the attention kernels' registers were cut, the tf32 variants
    spill none at head_dim 64 (up to 1152 B before) and up to 408 B at 128 (the 4-warp backward on
    sm_80; 384 B on sm_90), every one with tensor-core instructions."""
    if dtype == torch.float32 and not fp32:
        return
    most, most_pruned = {}, {}  # a key's largest spill: a launcher may compile several variants of one kernel
    for variant in variants:
        key = (*case, variant.name, variant.arch, variant.config["num_warps"])
        if variant.pruned:
            most_pruned[key] = max(most_pruned.get(key, 0), variant.stack_bytes)
            continue
        allowed = KNOWN_SPILLS.get(key, 0)
        assert variant.stack_bytes <= allowed, (
            f"{variant}: spills {variant.stack_bytes} B, {allowed} B allowed (where the other config does not "
            "spill, its autotuner drops this one: reformer_kernels/ops/attention_spills.py; else KNOWN_SPILLS)")
        most[key] = max(most.get(key, 0), variant.stack_bytes)
    for key, stack_bytes in most.items():
        assert key not in KNOWN_SPILLS or stack_bytes > 0, f"{key} no longer spills: drop it from KNOWN_SPILLS"
    for key, stack_bytes in most_pruned.items():
        assert stack_bytes > 0, f"{key} is dropped by its autotuner but no longer spills: delete its rule"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("head_dim", [32, 64, 128])
@pytest.mark.parametrize("chunk_len", [64, 32, 16])  # the three tiles (BLOCK) the launchers pick
@pytest.mark.parametrize("op", ["lsh", "local"])
def test_attention_kernels_compile(arch, precision, head_dim, chunk_len, op):
    """Forward and backward (with the backward's prologue, and LSH's kernels that combine the
    rounds), at every autotune config, within the arch's shared memory, with tensor cores for
    fp16/bf16 and tf32 and, for fp16/bf16, no spills beyond KNOWN_SPILLS."""
    dtype, tf32 = precision
    launches = lsh_attention_launches if op == "lsh" else local_attention_launches
    variants = compile_op(arch, lambda: launches(dtype, head_dim, chunk_len), tf32)
    check_variants(variants, dtype, tf32,
                   without_dots=("_combine_rounds_kernel", "attention_bwd_prologue_kernel", "_sum_rounds_kernel"))
    check_spills(variants, dtype, (op, dtype, head_dim, chunk_len, EVERY_FLAG))


# The launches test_attention_kernels_compile does not make (LAUNCH_FLAGS after the first): dropping
# a code path can make a variant spill that the full one does not.
FLAG_LAUNCHES = [
    pytest.param(flags, id=f"causal{int(flags[0])}-mask{int(flags[1])}-dropout{int(flags[2])}-chunk{flags[3]:+d}")
    for flags in LAUNCH_FLAGS[1:]
]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("head_dim", [32, 64, 128])
@pytest.mark.parametrize("block", [64, 32, 16])
@pytest.mark.parametrize("op", ["lsh", "local"])
@pytest.mark.parametrize("flags", FLAG_LAUNCHES)
def test_attention_kernels_compile_with_every_flag(arch, precision, head_dim, block, op, flags):
    """Every other launch of the attention kernels (FLAG_LAUNCHES), checked as
    test_attention_kernels_compile checks the launch with every flag on: within COMPILE_LIMIT_S and
    the arch's shared memory, tensor cores for fp16/bf16 and tf32, and for fp16/bf16 no spills beyond
    KNOWN_SPILLS, the autotuners' pruning included (check_spills)."""
    dtype, tf32 = precision
    causal, masked, dropout, chunk_offset = flags
    launches = lsh_attention_launches if op == "lsh" else local_attention_launches
    variants = compile_op(arch, lambda: launches(dtype, head_dim, block + chunk_offset, causal, masked, dropout), tf32)
    check_variants(variants, dtype, tf32, without_dots=("_combine_rounds_kernel", "attention_bwd_prologue_kernel",
                                                        "_sum_rounds_kernel"))
    check_spills(variants, dtype, (op, dtype, head_dim, block, flags))


# The Reformer's LM head has D = 2 * hidden: 512 for crime-and-punishment, 2048 for enwik8.
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("dim", [512, 2048])
def test_cross_entropy_kernels_compile(arch, precision, dim):
    """Forward and both backward kernels as the op launches them (with a bias), at every autotune
    config: shared memory, tensor cores and no spills for fp16/bf16 and tf32."""
    dtype, tf32 = precision
    n_tokens, vocab_size = 300, 1000
    hidden, weight, bias = torch.randn(n_tokens, dim, dtype=dtype), torch.randn(vocab_size, dim, dtype=dtype), \
        torch.randn(vocab_size, dtype=dtype)
    labels = torch.randint(0, vocab_size, (n_tokens,))

    def launches():
        losses, lse = triton_cross_entropy.linear_cross_entropy_fwd(hidden, weight, bias, labels, -100)
        scales = triton_cross_entropy.row_scales(torch.ones_like(losses), torch.zeros_like(lse), labels, -100)
        triton_cross_entropy.linear_cross_entropy_grad_hidden(*scales, hidden, weight, bias, labels, lse)
        triton_cross_entropy.linear_cross_entropy_grad_weight(*scales, hidden, weight, bias, labels, lse)

    variants = compile_op(arch, launches, tf32)
    check_variants(variants, dtype, tf32)
    check_spills(variants, dtype, fp32=tf32)  # the tf32 variants spill nothing either


@pytest.mark.parametrize("arch", ARCHS)
def test_dropout_add_kernel_compiles(arch):
    """Forward (fp32 residual stream + bf16 sub-layer output, as under autocast) and backward (no
    residual), with and without dropout: the Philox draw and the int64 counters compile, unspilled."""
    residual, x = torch.randn(4, 1000), torch.randn(4, 1000, dtype=torch.bfloat16)

    def launches():
        for p in (0.0, 0.1):
            triton_reversible.dropout_add_op(residual, x, p, 2**62, 4, False, torch.float32)
            triton_reversible.dropout_add_op(None, x, p, -5, 4, True, torch.bfloat16)

    variants = compile_op(arch, launches)
    check_variants(variants, torch.bfloat16, without_dots=("_dropout_add_kernel",))
    check_spills(variants, torch.bfloat16)


@pytest.mark.parametrize("arch", ARCHS)
def test_dropout_relu_kernels_compile(arch):
    """The feed-forward's fused bias, dropout and relu (bf16 product and bias, as under autocast; with
    and without bias) and its backward from the output: the Philox draw compiles, unspilled."""
    x, bias = torch.randn(4, 1000, dtype=torch.bfloat16), torch.randn(1000, dtype=torch.bfloat16)

    def launches():
        for b in (bias, None):
            out = triton_dropout_relu.dropout_relu_op(x, b, 0.1, 2**62, 4)
        triton_dropout_relu.dropout_relu_backward_op(x, out, 0.1)

    variants = compile_op(arch, launches)
    check_variants(variants, torch.bfloat16, without_dots=("_dropout_relu_kernel", "_dropout_relu_backward_kernel"))
    check_spills(variants, torch.bfloat16)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("n_buckets", [[32], [64], [2048], [64, 128]], ids=str)  # ROT_BLOCK 16, then 32
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("padded", [True, False], ids=["mask", "no_mask"])
def test_hash_kernel_compiles_for_any_number_of_buckets(arch, precision, n_buckets, head_dim, padded):
    """The rotation is tiled: 2048 buckets need no more shared memory or registers than 64 did, in
    every dtype (fp32 took over 10 minutes in ptxas and 2048 fp16 buckets 278 KB of shared memory
    before), with and without a padding mask (a GPU launch counts any mask), as the layers launch
    it: the int64 ids of lsh_hash and the packed 32-bit keys and positions of lsh_hash_packed."""
    dtype, tf32 = precision
    batch, heads, seq_len, n_hashes = 2, 4, 1024, 2
    vectors = torch.randn(batch, seq_len, heads, head_dim, dtype=dtype).transpose(1, 2)  # head-split, as a layer gives it
    rotations = torch.randn(heads, head_dim, n_hashes, sum(n_buckets) // 2, dtype=dtype)
    mask = torch.ones(batch, seq_len, dtype=torch.bool) if padded else None

    def launches():
        triton_hashing.lsh_hash(vectors, rotations, n_buckets, mask)
        triton_hashing.lsh_hash_packed(vectors, rotations, n_buckets, mask)

    variants = compile_op(arch, launches, tf32)
    check_variants(variants, dtype, tf32)
    check_spills(variants, dtype, fp32=True)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_hash_kernel_compiles_with_64_bit_keys(arch, precision):
    """lsh_hash_packed's uint64 keys, where rows * num_keys passes 2^32 (8 rows of 2 rounds of 2^30
    buckets), the uint32 keys above: a variant of its own."""
    dtype, tf32 = precision
    n_buckets = [1024, 1024, 1024]
    vectors = torch.randn(2, 256, 4, 64, dtype=dtype).transpose(1, 2)
    rotations = torch.randn(4, 64, 2, sum(n_buckets) // 2, dtype=dtype)
    variants = compile_op(arch, lambda: triton_hashing.lsh_hash_packed(vectors, rotations, n_buckets, None), tf32)
    assert len(variants) == 1
    check_variants(variants, dtype, tf32)
    check_spills(variants, dtype, fp32=True)
