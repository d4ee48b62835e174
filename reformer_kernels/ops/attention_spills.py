"""The attention kernels' autotune configs that spill registers where the other config of the same
autotune key does not: the configs their autotuners drop (``triton_utils.prune_spilling_warps``,
the rule in ``triton_utils.warp_configs``).

Measured by tests/ops/test_triton_compile.py on 2026-12-06 (Triton 3.8.0) for fp16/bf16 on sm_80
and sm_90 at head_dim 32, 64 and 128, chunk_len 16, 32 and 64 (every tile the launchers pick), for
every combination of causal, padding mask and attention dropout, and, with all three on, chunk
lengths that are not multiples of 16 (BLOCK - 4: dropout's whole groups of four; BLOCK - 1: its
per-element draw). Every constexpr and every int's divisibility by 16 is a variant of its own to
ptxas, which allocates registers anew for each: which of 4 and 8 warps spills moves with the flags,
so the table lists each variant measured. The spills are 8 to 24 B per thread (a few predicates
and addresses at 128 to 255 registers). A launch whose key is not listed keeps both configs:
either neither spills, or both do (the test's KNOWN_SPILLS bounds those), or it was not measured
(other archs, fp32, other int specializations). The test fails when a listed config no longer
spills or an unlisted one starts to: then this table is measured again.

Key: (arch as 10 * major + minor, q's dtype, HEAD_BLOCK, BLOCK, LSH, CAUSAL, HAS_MASK, DROPOUT,
WHOLE_GROUPS, chunk_len % 16 == 0), flags as 0/1 -> the num_warps that spills."""
import torch

F16, BF16 = torch.float16, torch.bfloat16


def spill_key(arguments: dict) -> tuple:
    """The key of a launch's named arguments and constexprs (without the arch)."""
    flags = ("HEAD_BLOCK", "BLOCK", "LSH", "CAUSAL", "HAS_MASK", "DROPOUT", "WHOLE_GROUPS")
    return (arguments["Q"].dtype, *(int(arguments[name]) for name in flags), int(arguments["chunk_len"] % 16 == 0))


SPILLING_WARPS: dict[str, dict[tuple, int]] = {
    "attention_fwd_kernel": {
        (80, BF16, 128, 32, 1, 1, 1, 0, 1, 1): 4,
        (80, BF16, 32, 32, 1, 1, 1, 1, 0, 0): 4,
        (80, BF16, 32, 64, 1, 1, 1, 1, 1, 0): 8,
        (80, F16, 128, 32, 1, 1, 1, 0, 1, 1): 4,
        (80, F16, 32, 32, 1, 1, 1, 1, 0, 0): 4,
        (80, F16, 32, 64, 1, 1, 1, 1, 1, 0): 8,
        (90, BF16, 128, 16, 0, 1, 1, 1, 1, 0): 4,
        (90, BF16, 32, 16, 0, 1, 1, 1, 0, 0): 8,
        (90, BF16, 32, 32, 0, 1, 0, 1, 1, 1): 8,
        (90, BF16, 64, 16, 1, 1, 1, 1, 0, 0): 8,
        (90, BF16, 64, 32, 1, 1, 1, 1, 0, 0): 4,
        (90, F16, 32, 16, 0, 1, 1, 1, 0, 0): 4,
        (90, F16, 32, 32, 0, 1, 1, 1, 0, 0): 4,
        (90, F16, 64, 16, 1, 1, 1, 1, 0, 0): 8,
    },
    "attention_bwd_kernel": {
        (80, BF16, 128, 16, 1, 0, 0, 1, 1, 1): 8,
        (80, BF16, 128, 16, 1, 0, 1, 1, 1, 1): 8,
        (80, BF16, 128, 16, 1, 1, 0, 1, 1, 1): 8,
        (80, BF16, 128, 16, 1, 1, 1, 1, 0, 0): 8,
        (80, BF16, 128, 16, 1, 1, 1, 1, 1, 0): 8,
        (80, BF16, 128, 16, 1, 1, 1, 1, 1, 1): 8,
        (80, BF16, 64, 32, 0, 0, 1, 0, 1, 1): 8,
        (80, BF16, 64, 32, 0, 0, 1, 1, 1, 1): 4,
        (80, BF16, 64, 32, 0, 1, 0, 0, 1, 1): 4,
        (80, BF16, 64, 32, 1, 0, 1, 0, 1, 1): 8,
        (80, BF16, 64, 32, 1, 1, 1, 0, 1, 1): 8,
        (80, F16, 128, 16, 1, 0, 0, 1, 1, 1): 8,
        (80, F16, 128, 16, 1, 0, 1, 1, 1, 1): 8,
        (80, F16, 128, 16, 1, 1, 0, 1, 1, 1): 8,
        (80, F16, 128, 16, 1, 1, 1, 1, 0, 0): 8,
        (80, F16, 128, 16, 1, 1, 1, 1, 1, 0): 8,
        (80, F16, 128, 16, 1, 1, 1, 1, 1, 1): 8,
        (80, F16, 64, 32, 0, 0, 1, 0, 1, 1): 8,
        (80, F16, 64, 32, 0, 0, 1, 1, 1, 1): 4,
        (80, F16, 64, 32, 0, 1, 0, 0, 1, 1): 4,
        (80, F16, 64, 32, 1, 0, 1, 0, 1, 1): 8,
        (80, F16, 64, 32, 1, 1, 1, 0, 1, 1): 8,
        (90, BF16, 128, 16, 0, 0, 1, 0, 1, 1): 4,
        (90, BF16, 128, 16, 0, 1, 0, 0, 1, 1): 4,
        (90, BF16, 128, 16, 0, 1, 1, 0, 1, 1): 4,
        (90, BF16, 128, 16, 0, 1, 1, 1, 1, 0): 8,
        (90, BF16, 128, 16, 0, 1, 1, 1, 0, 0): 8,
        (90, BF16, 128, 16, 1, 0, 0, 1, 1, 1): 8,
        (90, BF16, 128, 16, 1, 0, 1, 1, 1, 1): 8,
        (90, BF16, 128, 16, 1, 1, 0, 1, 1, 1): 8,
        (90, BF16, 128, 16, 1, 1, 1, 1, 1, 1): 8,
        (90, BF16, 128, 32, 0, 1, 1, 1, 0, 0): 4,
        (90, BF16, 32, 16, 0, 0, 0, 1, 1, 1): 4,
        (90, BF16, 32, 16, 0, 1, 0, 0, 1, 1): 4,
        (90, BF16, 32, 16, 0, 1, 0, 1, 1, 1): 4,
        (90, BF16, 32, 16, 0, 1, 1, 1, 1, 1): 4,
        (90, BF16, 32, 32, 0, 0, 1, 1, 1, 1): 4,
        (90, BF16, 32, 32, 1, 0, 1, 1, 1, 1): 4,
        (90, BF16, 64, 16, 0, 0, 1, 0, 1, 1): 8,
        (90, BF16, 64, 16, 1, 0, 0, 0, 1, 1): 8,
        (90, BF16, 64, 16, 1, 1, 1, 0, 1, 1): 4,
        (90, BF16, 64, 32, 0, 0, 1, 0, 1, 1): 4,
        (90, BF16, 64, 32, 0, 1, 0, 0, 1, 1): 8,
        (90, BF16, 64, 32, 1, 1, 0, 1, 1, 1): 4,
        (90, BF16, 64, 32, 1, 1, 1, 1, 0, 0): 4,
        (90, F16, 128, 16, 0, 0, 1, 0, 1, 1): 4,
        (90, F16, 128, 16, 0, 1, 0, 0, 1, 1): 4,
        (90, F16, 128, 16, 0, 1, 1, 0, 1, 1): 4,
        (90, F16, 128, 16, 0, 1, 1, 1, 0, 0): 8,
        (90, F16, 128, 16, 0, 1, 1, 1, 1, 0): 8,
        (90, F16, 128, 16, 1, 0, 0, 1, 1, 1): 8,
        (90, F16, 128, 16, 1, 0, 1, 1, 1, 1): 8,
        (90, F16, 128, 16, 1, 1, 0, 1, 1, 1): 8,
        (90, F16, 128, 16, 1, 1, 1, 1, 0, 0): 8,
        (90, F16, 128, 16, 1, 1, 1, 1, 1, 1): 8,
        (90, F16, 128, 32, 0, 1, 1, 1, 0, 0): 4,
        (90, F16, 32, 16, 0, 0, 0, 1, 1, 1): 4,
        (90, F16, 32, 16, 0, 1, 0, 0, 1, 1): 4,
        (90, F16, 32, 16, 0, 1, 0, 1, 1, 1): 4,
        (90, F16, 32, 16, 0, 1, 1, 1, 1, 1): 4,
        (90, F16, 32, 32, 0, 0, 1, 1, 1, 1): 4,
        (90, F16, 32, 32, 1, 1, 0, 1, 1, 1): 4,
        (90, F16, 64, 16, 0, 0, 1, 0, 1, 1): 8,
        (90, F16, 64, 16, 1, 0, 0, 0, 1, 1): 8,
        (90, F16, 64, 16, 1, 0, 1, 0, 1, 1): 8,
        (90, F16, 64, 16, 1, 1, 1, 0, 1, 1): 4,
        (90, F16, 64, 32, 0, 0, 1, 0, 1, 1): 4,
        (90, F16, 64, 32, 0, 1, 0, 0, 1, 1): 8,
        (90, F16, 64, 32, 1, 1, 1, 1, 1, 1): 4,
    },
}
