"""Every Triton kernel compiles to a cubin for sm_80 and sm_90 without a GPU, as a launch compiles it.

The interpreter runs the kernels' Python, not the compiler, so type and layout errors that only
compiled code hits (loop-carried types, dot shapes, shared memory), register spills and missing
tensor-core instructions would otherwise wait for a GPU machine. Each test calls the op's real
launcher on CPU tensors laid out as a GPU run lays them out, with ``JITFunction.run`` and
``Autotuner.run`` recording the launch instead of running it; each recorded launch is then
specialized by Triton's own binder (pointer and int divisibility by 16, ints equal to 1), for
every config its autotuner can choose, and compiled with Triton's ptxas for the target. The cubin's
resources come from Triton's cuobjdump. A compile that does not finish within COMPILE_LIMIT_S
fails (a guard against ptxas hanging, as it did on the untiled 2048-bucket hash; not a speed check)."""
import contextlib
import re
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from unittest import mock

import pytest
import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction, create_function_from_signature

from reformer_kernels import backends
from reformer_kernels.ops import chunk_attention_triton
from reformer_kernels.ops.dropout_add import triton_kernels as triton_reversible
from reformer_kernels.ops.linear_cross_entropy import triton_kernels as triton_cross_entropy
from reformer_kernels.ops.lsh_attention import triton_kernels as triton_lsh_attention
from reformer_kernels.ops.lsh_hash import triton_kernels as triton_hashing

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(backends.triton_interpreted(), reason="under TRITON_INTERPRET=1 the kernels are not compiled"),
]

ARCHS = (80, 90)
# Most dynamic shared memory one block may use (bytes): A100 (sm_80), H100 (sm_90).
SHARED_MEMORY = {80: 166912, 90: 232448}
COMPILE_LIMIT_S = 60


@contextlib.contextmanager
def recorded_launches():
    """Inside the block, Triton launches are recorded as (kernel, args, kwargs) instead of run."""
    launches = []

    def record(kernel, *args, grid, warmup=False, **kwargs):
        launches.append((kernel, args, kwargs))

    with mock.patch.object(JITFunction, "run", record), mock.patch.object(Autotuner, "run", record), \
            pytest.MonkeyPatch.context() as patch:
        patch.setattr(backends, "triton_interpreted", lambda: False)  # the GPU tiles and configs, not the test ones
        yield launches


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

    def __str__(self):
        return (f"{self.name} sm_{self.arch} {self.config}: {self.registers} registers, {self.stack_bytes} B stack, "
                f"{self.shared_bytes} B shared, {self.hmma} HMMA, {self.hgmma} HGMMA")


def compile_launch(kernel, args: tuple, kwargs: dict, arch: int) -> list[Variant]:
    """Compile a recorded launch for sm_<arch> as ``JITFunction.run`` would, once per config of its
    autotuner (every config it can choose)."""
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    fn = kernel.fn if isinstance(kernel, Autotuner) else kernel
    configs = [config.all_kwargs() for config in kernel.configs] if isinstance(kernel, Autotuner) else [{}]
    variants = []
    for config in configs:
        launch_kwargs = {**kwargs, **config}
        bound, specialization, _ = create_function_from_signature(fn.signature, fn.params, backend)(*args, **launch_kwargs)
        options, signature, constexprs, attrs = fn._pack_args(backend, launch_kwargs, bound, specialization, None)
        chosen = {key: value for key, value in config.items() if key in ("num_warps", "num_stages")} or \
            {"num_warps": options.num_warps}
        name = fn.__name__
        with deadline(COMPILE_LIMIT_S, f"{name} for sm_{arch} {chosen}"):
            compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)
        variants.append(inspect_cubin(compiled, name, arch, chosen))
    return variants


def inspect_cubin(compiled, name: str, arch: int, config: dict) -> Variant:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        dump = subprocess.run([knobs.nvidia.cuobjdump.path, "-res-usage", "-sass", cubin.name], capture_output=True,
                              text=True, check=True).stdout
    return Variant(name, arch, config, int(re.search(r"REG:(\d+)", dump).group(1)),
                   int(re.search(r"STACK:(\d+)", dump).group(1)), compiled.metadata.shared,
                   len(re.findall(r"\bHMMA\.", dump)), len(re.findall(r"\bHGMMA\.", dump)))


def compile_op(arch: int, call) -> list[Variant]:
    """Every variant that ``call()`` (an op's launcher on CPU tensors) would compile for sm_<arch>."""
    with recorded_launches() as launches:
        call()
    assert launches, "the call launched no Triton kernel"
    return [variant for launch in launches for variant in compile_launch(*launch, arch)]


def check_variants(variants: list[Variant], dtype: torch.dtype, *, dots: bool, spill_allowance: int = 0) -> None:
    """Within the arch's shared memory, spills within ``spill_allowance`` bytes, and for fp16/bf16
    kernels with a tl.dot, tensor-core instructions: HMMA on sm_80, HGMMA or HMMA on sm_90 (Triton
    picks wgmma where the tile allows it)."""
    for variant in variants:
        print(variant)
        assert variant.shared_bytes <= SHARED_MEMORY[variant.arch], f"{variant}: more shared memory than sm_{variant.arch} has"
        assert variant.stack_bytes <= spill_allowance, f"{variant}: spills beyond the allowance of {spill_allowance} B"
        if dots and dtype != torch.float32:
            assert variant.hmma + variant.hgmma > 0, f"{variant}: no tensor-core instruction for its {dtype} dots"


TORCH_TO_TRITON = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def compile_for(kernel, arch: int, types: dict, constexprs: dict, **options):
    """Compile ``kernel`` (a jitted function, or the autotuner around one) for sm_<arch>; every
    other argument is an int32 scalar unless ``types`` names it."""
    fn = kernel.fn if isinstance(kernel, triton.runtime.Autotuner) else kernel
    signature = {name: "constexpr" if name in constexprs else types.get(name, "i32") for name in fn.arg_names}
    source = ASTSource(fn=fn, signature=signature,
                       constexprs={(fn.arg_names.index(name),): value for name, value in constexprs.items()})
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


def attention_types(dtype: torch.dtype, lsh: bool) -> dict:
    element = TORCH_TO_TRITON[dtype]
    # LSH writes fp32 per-round rows that are combined or summed afterwards; local writes results.
    rows = "*fp32" if lsh else f"*{element}"
    return {
        **{name: f"*{element}" for name in ("Q", "K", "V", "DOut")}, "DropMask": "*u8",
        "SortedIdx": "*i64" if lsh else "*fp32", "Mask": "*u8", "Out": rows, "DQ": rows, "DK": rows, "DV": rows,
        **{name: "*fp32" for name in ("Lse", "RoundWeight", "Delta")},
        **{name: "fp32" for name in ("key_scale", "mask_value", "self_mask_value", "drop_scale")},
        **{name: "i64" for name in ("stride_xb", "stride_ob", "stride_gb", "stride_sb", "stride_db", "stride_dh")},
    }


# fp32 with head_dim 128 has the largest tiles; the A100 (sm_80) has the least shared memory.
@pytest.mark.parametrize("arch,dtype,head_dim", [(90, torch.bfloat16, 64), (80, torch.float32, 128)])
@pytest.mark.parametrize("lsh", [True, False])
@pytest.mark.parametrize("dropout", [False, True])
def test_attention_kernels_compile(arch, dtype, head_dim, lsh, dropout):
    """The launchers' tile for a chunk of 64, forward and backward, with and without attention
    dropout, within the GPU's shared memory."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(backends, "triton_interpreted", lambda: False)  # the GPU tile, not the test tile
        tile = chunk_attention_triton.tiles(64, head_dim, dtype)
    shared_memory = {80: 166912, 90: 232448}[arch]
    for kernel in (chunk_attention_triton.attention_fwd_kernel, chunk_attention_triton.attention_bwd_kernel):
        compiled = compile_for(kernel, arch, attention_types(dtype, lsh), dict(LSH=lsh, CAUSAL=True, HAS_MASK=True, DROPOUT=dropout, **tile),
                               num_warps=8, num_stages=2)
        assert compiled.metadata.shared <= shared_memory, f"{compiled.name} needs {compiled.metadata.shared} B of shared memory"


def test_combine_kernel_compiles():
    compile_for(triton_lsh_attention._combine_rounds_kernel, 90, {"OutRounds": "*fp32", "Lse": "*fp32", "Out": "*bf16"},
                dict(HEAD_BLOCK=64, BLOCK=16))


# The Reformer's LM head has D = 2 * hidden: 512 for the enwik8 and crime-and-punishment configs.
@pytest.mark.parametrize("arch,dtype", [(90, torch.bfloat16), (80, torch.float32), (80, torch.float16)])
def test_cross_entropy_kernels_compile(arch, dtype):
    """The launchers' tiles for D = 512, forward and both backward kernels, within the GPU's shared memory."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(backends, "triton_interpreted", lambda: False)  # the GPU tile, not the test tile
        forward_tile = triton_cross_entropy.forward_tiles(dtype)
        backward_tile = triton_cross_entropy.backward_tiles(512, dtype)
    element = TORCH_TO_TRITON[dtype]
    types = {
        **{name: f"*{element}" for name in ("Hidden", "Weight", "Bias")}, "Labels": "*i64",
        **{name: "*fp32" for name in ("Losses", "Lse", "SoftmaxScale", "LabelScale", "GradScale", "GradHidden",
                                      "GradWeight", "GradBias")},
        "stride_gs": "i64",
    }
    shared_memory = {80: 166912, 90: 232448}[arch]
    kernels = [(triton_cross_entropy.linear_cross_entropy_fwd_kernel, forward_tile),
               (triton_cross_entropy.linear_cross_entropy_grad_hidden_kernel, backward_tile),
               (triton_cross_entropy.linear_cross_entropy_grad_weight_kernel, backward_tile)]
    for kernel, constexprs in kernels:
        compiled = compile_for(kernel, arch, types, dict(HAS_BIAS=True, **constexprs), num_warps=8, num_stages=2)
        assert compiled.metadata.shared <= shared_memory, f"{compiled.name} needs {compiled.metadata.shared} B of shared memory"


@pytest.mark.parametrize("arch", [80, 90])
def test_dropout_add_kernel_compiles(arch):
    """Forward (fp32 residual stream + bf16 sub-layer output, as under autocast) and backward (no
    residual), with and without dropout: the Philox draw and the int64 counters compile."""
    for residual, has_residual in (("*fp32", True), ("*bf16", False)):
        for dropout in (True, False):
            compile_for(triton_reversible._dropout_add_kernel, arch,
                        {"Residual": residual, "X": "*bf16", "Out": residual, "n_elements": "i64", "seed": "i64",
                         "philox_offset": "i64", "p": "fp32", "scale": "fp32", "sign": "fp32"},
                        dict(HAS_RESIDUAL=has_residual, DROPOUT=dropout, BLOCK=triton_reversible.BLOCK), num_warps=4)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("n_buckets", [[64], [2048], [64, 128]], ids=str)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_hash_kernel_compiles_for_any_number_of_buckets(arch, dtype, n_buckets, head_dim):
    """The rotation is tiled: 2048 buckets need no more shared memory or registers than 64 did, in
    every dtype (fp32 took over 10 minutes in ptxas and 2048 fp16 buckets 278 KB of shared memory
    before), with padding as the layers launch it."""
    batch, heads, seq_len, n_hashes = 2, 4, 1024, 2
    vectors = torch.randn(batch, seq_len, heads, head_dim, dtype=dtype).transpose(1, 2)  # head-split, as a layer gives it
    rotations = torch.randn(heads, head_dim, n_hashes, sum(n_buckets) // 2, dtype=dtype)
    mask = torch.ones(batch, seq_len, dtype=torch.bool)
    variants = compile_op(arch, lambda: triton_hashing.lsh_hash(vectors, rotations, n_buckets, mask))
    check_variants(variants, dtype, dots=True)
