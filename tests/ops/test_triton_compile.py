"""Every Triton kernel compiles to a cubin for sm_80 and sm_90 without a GPU. The interpreter
runs the kernels' Python, not the compiler, so type and layout errors that only compiled code
hits (loop-carried types, dot shapes, shared memory) would otherwise wait for a GPU machine."""
import pytest
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

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
        **{name: f"*{element}" for name in ("Q", "K", "V", "DOut")},
        "SortedIdx": "*i64" if lsh else "*fp32", "Mask": "*u8", "Out": rows, "DQ": rows, "DK": rows, "DV": rows,
        **{name: "*fp32" for name in ("Lse", "RoundWeight", "Delta")},
        **{name: "fp32" for name in ("key_scale", "mask_value", "self_mask_value", "drop_scale")},
        **{name: "i64" for name in ("stride_xb", "stride_ob", "stride_gb", "stride_sb", "dropout_seed", "dropout_offset")},
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


def test_combine_and_hash_kernels_compile():
    compile_for(triton_lsh_attention._combine_rounds_kernel, 90, {"OutRounds": "*fp32", "Lse": "*fp32", "Out": "*bf16"},
                dict(HEAD_BLOCK=64, BLOCK=16))
    for n_factors in (1, 2):
        compile_for(triton_hashing._hash_kernel, 90,
                    {"X": "*fp16", "Rotations": "*fp16", "Mask": "*u8", "Factors": "*i32", "Buckets": "*i64"},
                    dict(N_FACTORS=n_factors, HAS_PADDING=True, HEAD_BLOCK=64, ROT_BLOCK=16, BLOCK=64))


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
                         "philox_offset": "i64", "threshold": "i32", "scale": "fp32", "sign": "fp32"},
                        dict(HAS_RESIDUAL=has_residual, DROPOUT=dropout, BLOCK=triton_reversible.BLOCK), num_warps=4)
