"""The attention autotuners drop the configs that reformer_kernels/ops/attention_spills.py lists, for
the launches they were measured on, and nothing else. Launches are recorded, not run or compiled
(tests/triton_launches.py); whether a listed config does spill is tests/ops/test_triton_compile.py's
check (slow: it compiles every variant)."""
import itertools

import pytest
import torch

from reformer_kernels import backends
from reformer_kernels.ops.attention_spills import SPILLING_WARPS, spill_key
from tests.triton_launches import (LAUNCH_FLAGS, launchable_configs, launched_function, local_attention_launches,
                                   lsh_attention_launches, recorded_launches)

pytestmark = pytest.mark.skipif(backends.triton_interpreted(),
                                reason="under TRITON_INTERPRET=1 the autotuners hold one config: nothing to drop")

# The launches the table was measured on: (op, dtype, head_dim, chunk_len, causal, mask, dropout).
MEASURED = [
    (op, dtype, head_dim, block + offset, causal, masked, dropout)
    for op, dtype, head_dim, block in itertools.product(("lsh", "local"), (torch.float16, torch.bfloat16), (32, 64, 128),
                                                        (64, 32, 16))
    for causal, masked, dropout, offset in LAUNCH_FLAGS
]


def attention_launches(op, dtype, head_dim, chunk_len, causal, masked, dropout):
    """(kernel name, autotuner, args, kwargs) of the forward and backward attention kernels."""
    launches_of = lsh_attention_launches if op == "lsh" else local_attention_launches
    with recorded_launches() as launches:
        launches_of(dtype, head_dim, chunk_len, causal, masked, dropout)
    return [(launched_function(kernel).__name__, kernel, args, kwargs) for kernel, args, kwargs in launches
            if launched_function(kernel).__name__ in SPILLING_WARPS]


def key_of(kernel, args, kwargs) -> tuple:
    return spill_key({**dict(zip(kernel.arg_names, args)), **kwargs})


def test_every_listed_config_is_dropped_for_its_launches_and_only_there():
    """Each launch whose key is listed keeps only the other config on the listed arch and both on
    an arch the table does not measure (sm_89); every other launch keeps both; every entry is the
    key of some measured launch (none is dead)."""
    used = {name: set() for name in SPILLING_WARPS}
    for launch in MEASURED:
        for name, kernel, args, kwargs in attention_launches(*launch):
            key = key_of(kernel, args, kwargs)
            for arch in (80, 90):
                kept = {config.num_warps for config in launchable_configs(kernel, args, kwargs, arch)}
                spilling = SPILLING_WARPS[name].get((arch, *key))
                assert kept == {4, 8} - {spilling}, (launch, name, arch, kept)
                if spilling is not None:
                    used[name].add((arch, *key))
            assert {config.num_warps for config in launchable_configs(kernel, args, kwargs, 89)} == {4, 8}
    for name, table in SPILLING_WARPS.items():
        assert set(table) == used[name], f"{name}: entries no measured launch has: {set(table) - used[name]}"


def test_key_tells_the_variants_apart():
    """The flags, LSH or local, and chunk_len's whole dropout groups and divisibility by 16 (an int
    specialization) are in the key: forward launches that compile different variants never share one."""
    launches = [("lsh", 32, True), ("lsh", 31, True), ("lsh", 28, True), ("lsh", 32, False), ("local", 32, True)]
    keys = {key_of(kernel, args, kwargs)
            for op, chunk_len, causal in launches
            for name, kernel, args, kwargs in attention_launches(op, torch.float16, 64, chunk_len, causal, True, True)
            if name == "attention_fwd_kernel"}
    assert len(keys) == len(launches)
