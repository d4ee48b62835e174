"""fp32 dots follow torch's TF32 setting: each Triton launcher reads it on the host at launch and
passes DOT_PRECISION="tf32" to its kernels when torch.backends.cuda.matmul.allow_tf32 is True (torch's
default is False: "ieee"); fp16/bf16 always get "ieee", which their tensor-core dots ignore.

The host-side choice is tested on recorded launches (tests/triton_launches.py). The interpreter
(TRITON_INTERPRET=1) computes every tl.dot as numpy's fp32 matmul whatever its input_precision, so
TF32's rounding is checked only on a GPU (the last test, which .ci/gpu-check runs);
tests/ops/test_triton_compile.py checks that the tf32 variants compile to tensor-core instructions."""
import subprocess
import sys

import pytest
import torch

from reformer_kernels.ops.linear_cross_entropy import triton_kernels as triton_cross_entropy
from reformer_kernels.ops.lsh_hash import triton_kernels as triton_hashing
from reformer_kernels.ops.triton_utils import dot_precision
from tests.triton_launches import (launched_function, local_attention_launches, lsh_attention_launches,
                                   recorded_launches, tf32_matmuls)

KERNELS_WITH_DOTS = {
    "attention_fwd_kernel", "attention_bwd_kernel", "_hash_kernel", "linear_cross_entropy_fwd_kernel",
    "linear_cross_entropy_grad_hidden_kernel", "linear_cross_entropy_grad_weight_kernel",
}


def launch_every_op(dtype):
    """Every launcher whose kernels have tl.dot, on small CPU tensors, launches recorded."""
    lsh_attention_launches(dtype, 32, 16)
    local_attention_launches(dtype, 32, 16)
    vectors, rotations = torch.randn(1, 2, 64, 32, dtype=dtype), torch.randn(2, 32, 2, 8, dtype=dtype)
    triton_hashing.lsh_hash(vectors, rotations, [16], None)
    hidden, weight, labels = torch.randn(40, 32, dtype=dtype), torch.randn(50, 32, dtype=dtype), torch.randint(0, 50, (40,))
    losses, lse = triton_cross_entropy.linear_cross_entropy_fwd(hidden, weight, None, labels, -100)
    scales = triton_cross_entropy.row_scales(torch.ones_like(losses), torch.zeros_like(lse), labels, -100)
    triton_cross_entropy.linear_cross_entropy_grad_hidden(*scales, hidden, weight, None, labels, lse)
    triton_cross_entropy.linear_cross_entropy_grad_weight(*scales, hidden, weight, None, labels, lse)


def launched_precisions(dtype) -> dict[str, set[str]]:
    with recorded_launches() as launches:
        launch_every_op(dtype)
    precisions = {}
    for kernel, _, kwargs in launches:
        if "DOT_PRECISION" in kwargs:
            precisions.setdefault(launched_function(kernel).fn.__name__, set()).add(kwargs["DOT_PRECISION"])
    assert set(precisions) == KERNELS_WITH_DOTS
    return precisions


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_torch_default_keeps_ieee_dots(dtype):
    with tf32_matmuls(False):
        assert launched_precisions(dtype) == {name: {"ieee"} for name in KERNELS_WITH_DOTS}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_allow_tf32_gives_fp32_tensor_core_dots(dtype):
    expected = "tf32" if dtype == torch.float32 else "ieee"
    with tf32_matmuls(True):
        assert launched_precisions(dtype) == {name: {expected} for name in KERNELS_WITH_DOTS}
    assert launched_precisions(dtype) == {name: {"ieee"} for name in KERNELS_WITH_DOTS}


def test_float32_matmul_precision_high_allows_tf32():
    """torch.set_float32_matmul_precision("high") (or "medium") sets allow_tf32, so the kernels follow it."""
    before = torch.get_float32_matmul_precision()
    try:
        for precision, expected in (("high", "tf32"), ("medium", "tf32"), ("highest", "ieee")):
            torch.set_float32_matmul_precision(precision)
            assert dot_precision(torch.float32) == expected, precision
    finally:
        torch.set_float32_matmul_precision(before)


def test_new_fp32_precision_api_allows_tf32():
    """torch's newer spelling, torch.backends.cuda.matmul.fp32_precision = "tf32", also counts; it
    runs in a process of its own, since after it torch's legacy getters (allow_tf32) raise."""
    code = ("import torch\n"
            "from reformer_kernels.ops.triton_utils import dot_precision\n"
            "torch.backends.cuda.matmul.fp32_precision = 'tf32'\n"
            "print(dot_precision(torch.float32), dot_precision(torch.float16))\n"
            "torch.backends.cuda.matmul.fp32_precision = 'ieee'\n"
            "print(dot_precision(torch.float32))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["tf32", "ieee", "ieee"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
                    reason="TF32 tensor cores need a GPU of sm_80 or later")
def test_tf32_rounds_fp32_dots_on_a_gpu():
    """On a GPU the flag changes the arithmetic: the LM head's log-sum-exp over logits of 2048-long
    dots is within fp32 round-off of float64 by default and off by TF32's rounding, larger but
    bounded, when allow_tf32 is set."""
    gen = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(256, 2048, generator=gen), torch.randn(320, 2048, generator=gen)
    labels = torch.randint(0, 320, (256,), generator=gen)
    exact = torch.logsumexp(hidden.double() @ weight.double().T, dim=1)
    errors = {}
    for tf32 in (False, True):
        with tf32_matmuls(tf32):
            _, lse = triton_cross_entropy.linear_cross_entropy_fwd(hidden.cuda(), weight.cuda(), None, labels.cuda(), -100)
        errors[tf32] = (lse.cpu().double() - exact).abs().max().item()
    assert errors[False] < 1e-3 < errors[True] < 0.5, errors
