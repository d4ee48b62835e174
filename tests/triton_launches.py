"""Triton launches recorded instead of run, for the tests that check what a launch would compile
(tests/ops/test_triton_compile.py), which precision its dots get (tests/ops/test_triton_dot_precision.py)
or that the launchers' host code reads no tensor value (tests/test_no_host_sync.py), on a machine
without a GPU; benchmarks/bench_traffic.py counts the bytes the recorded launches move."""
import contextlib
from unittest import mock

import torch
from triton.runtime.autotuner import Autotuner
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

from reformer_kernels import backends
from reformer_kernels.ops.local_attention import triton_kernels as triton_local_attention
from reformer_kernels.ops.lsh_attention import triton_kernels as triton_lsh_attention


@contextlib.contextmanager
def recorded_launches():
    """Inside the block every Triton launch appends (kernel, args, kwargs) to the list it yields
    and runs nothing, compiled or interpreted (TRITON_INTERPRET=1); the launchers pick their GPU
    tiles and autotune configs, not the interpreter's."""
    launches = []

    def record(kernel, *args, grid, warmup=False, **kwargs):
        launches.append((kernel, args, kwargs))

    with mock.patch.object(JITFunction, "run", record), mock.patch.object(Autotuner, "run", record), \
            mock.patch.object(InterpretedFunction, "run", record), \
            mock.patch.object(backends, "triton_interpreted", lambda: False):
        yield launches


def launched_function(kernel) -> JITFunction:
    """The jitted function behind a recorded launch's kernel (an autotuner wraps one)."""
    return kernel.fn if isinstance(kernel, Autotuner) else kernel


def launchable_configs(kernel: Autotuner, args: tuple, kwargs: dict, arch: int) -> list:
    """The configs that ``kernel``'s autotuner keeps for a launch on an sm_<arch> device."""
    if kernel.early_config_prune is None:
        return kernel.configs
    with mock.patch.object(torch.cuda, "get_device_capability", lambda device=None: divmod(arch, 10)):
        return kernel.early_config_prune(kernel.configs, dict(zip(kernel.arg_names, args)), **kwargs)


@contextlib.contextmanager
def tf32_matmuls(enabled: bool = True):
    """torch.backends.cuda.matmul.allow_tf32 set to ``enabled`` inside the block, restored after
    through the same (legacy) API, so that torch's getters do not see a mix of old and new APIs."""
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        matmul.allow_tf32 = before


# A Philox key as functional draws one: a uint64 seed as int64 (its top bit set) and an offset.
DROPOUT_SEED, DROPOUT_OFFSET = -(2**62) - 5, 8


# The attention launches whose compiled variants differ: (causal, padding mask, dropout, chunk_len -
# BLOCK, with BLOCK the tile). Each flag is a constexpr and each int's divisibility by 16 a
# specialization, so each is a variant of its own to ptxas: every flag combination at chunk_len =
# BLOCK, then with every flag on chunk lengths that are not multiples of 16, BLOCK - 4 (dropout's
# whole groups of four) and BLOCK - 1 (its per-element draw). The first has every flag on.
LAUNCH_FLAGS = [(causal, masked, dropout, 0) for causal in (True, False) for masked in (True, False)
                for dropout in (True, False)] + [(True, True, True, -4), (True, True, True, -1)]


def lsh_attention_launches(dtype, head_dim, chunk_len, causal=True, masked=True, dropout=True):
    """The LSH op's forward (attention, then the round combination) and backward as a layer
    launches them: head-split views; by default causal, padding mask and attention dropout (the
    variant with every code path; each flag set False drops its path); 2 rounds with a gradient
    of lse (per-round gradients, in the input dtype, summed by a kernel), then the backward of 1
    round without (gradients written in place)."""
    batch, heads, seq_len, n_hashes, before, after = 2, 4, 4 * chunk_len, 2, 1, 0
    qk, v = (torch.randn(batch, seq_len, heads, head_dim, dtype=dtype).transpose(1, 2) for _ in range(2))
    sorted_idx = torch.arange(n_hashes * seq_len, dtype=torch.int32).expand(batch, heads, -1).contiguous()
    config = (n_hashes, chunk_len, before, after, *_flag_arguments(batch, seq_len, causal, masked, dropout))
    out, lse = triton_lsh_attention.lsh_attention_fwd(qk, v, sorted_idx, *config)
    triton_lsh_attention.lsh_attention_bwd(torch.randn_like(out), lse, qk, v, sorted_idx, out, lse, *config)
    first_round = sorted_idx[..., :seq_len].contiguous()  # the positions in order
    triton_lsh_attention.lsh_attention_bwd(torch.randn_like(out), None, qk, v, first_round, out, lse[:, :, :1],
                                           1, *config[1:])


def local_attention_launches(dtype, head_dim, chunk_len, causal=True, masked=True, dropout=True):
    """The local op's forward and backward, as ``lsh_attention_launches``."""
    batch, heads, seq_len, before, after = 2, 4, 4 * chunk_len, 1, 1
    q, k, v = (torch.randn(batch, seq_len, heads, head_dim, dtype=dtype).transpose(1, 2) for _ in range(3))
    config = (chunk_len, before, after, *_flag_arguments(batch, seq_len, causal, masked, dropout))
    out, lse = triton_local_attention.local_attention_fwd(q, k, v, *config)
    triton_local_attention.local_attention_bwd(torch.randn_like(out), q, k, v, out, lse, *config)


def _flag_arguments(batch, seq_len, causal, masked, dropout):
    """The schemas' (causal, attention_mask, dropout_p, dropout_seed, dropout_offset) for the flags."""
    mask = torch.ones(batch, seq_len, dtype=torch.bool) if masked else None
    return causal, mask, 0.1 if dropout else 0.0, DROPOUT_SEED, DROPOUT_OFFSET
