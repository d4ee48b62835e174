"""The CPU memory pool (reformer_kernels._extension.cpu_memory_pool) and what the reversible layers get
from it: a training step reuses the blocks of the step before, so after the first steps it faults
no pages in and its peak resident memory does not grow with depth; and no result changes."""
import contextlib
import json
import os
import platform
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from reformer_kernels import _extension, models
from reformer_kernels.nn import ReversibleBlock, ReversibleSequence
from tests.marks import requires_extension
from tests.models.hf_reference import TINY

pytestmark = requires_extension
MIB = 2**20
# Tensors of a few MiB, above the pool's 128 KiB floor, at a length that still trains in well under a second.
SEQ_LEN = 4096
WIDE = dict(TINY, hidden_size=64, attention_head_size=32, feed_forward_size=128, max_position_embeddings=SEQ_LEN,
            axial_pos_shape=[64, 64], axial_pos_embds_dim=[32, 32], lsh_attn_chunk_length=64, local_attn_chunk_length=64,
            is_decoder=True)


def test_a_freed_block_is_reused_for_the_next_tensor_of_about_its_size():
    _extension.empty_cpu_memory_pool()
    with _extension.cpu_memory_pool():
        first = torch.empty(MIB)  # 4 MiB
        block = first.data_ptr()
        del first
        again = torch.empty(MIB - 100)  # a little smaller: the same whole pages
        assert again.data_ptr() == block
        del again
    # Outside the scope a cached block is still taken: the last layer and the loss reuse the pool's.
    outside = torch.empty(MIB)
    assert outside.data_ptr() == block


def test_the_pool_does_not_map_fresh_blocks_outside_its_scope():
    _extension.empty_cpu_memory_pool()
    start = _extension.cpu_memory_pool_stats()
    outside = torch.empty(3 * MIB)  # nothing cached: the previous allocator's
    assert _extension.cpu_memory_pool_stats() == start
    with _extension.cpu_memory_pool():
        inside = torch.ones(3 * MIB)
    now = _extension.cpu_memory_pool_stats()
    assert now["mapped"] == start["mapped"] + 1 and now["in_use_bytes"] == start["in_use_bytes"] + inside.nbytes
    del outside
    assert _extension.cpu_memory_pool_stats() == now
    assert inside.sum().item() == 3 * MIB, "a tensor outlives the scope its block came from"


def test_outside_its_scope_the_pool_carves_a_tensor_out_of_a_larger_idle_block():
    _extension.empty_cpu_memory_pool()
    with _extension.cpu_memory_pool():
        idle = torch.empty(2 * MIB)  # 8 MiB, then free
    block = idle.data_ptr()
    del idle
    start = _extension.cpu_memory_pool_stats()
    outside = torch.empty(MIB)  # 4 MiB: the start of the idle block, nothing mapped
    now = _extension.cpu_memory_pool_stats()
    assert outside.data_ptr() == block and (now["mapped"], now["unmapped"]) == (start["mapped"], start["unmapped"])
    assert (now["cached_bytes"], now["in_use_bytes"]) == (4 * MIB, start["in_use_bytes"] + outside.nbytes)


def test_freed_neighbours_merge_into_one_block_for_a_larger_tensor():
    """The pool's pages serve any mix of sizes: two 4 MiB tensors cut from one 8 MiB block, freed,
    make room for an 8 MiB tensor again, without mapping anything."""
    _extension.empty_cpu_memory_pool()
    with _extension.cpu_memory_pool():
        whole = torch.empty(2 * MIB)
        block = whole.data_ptr()
        del whole
        halves = [torch.empty(MIB), torch.empty(MIB)]
        assert sorted(h.data_ptr() for h in halves) == [block, block + 4 * MIB]
        del halves
        start = _extension.cpu_memory_pool_stats()
        again = torch.empty(2 * MIB)
    assert again.data_ptr() == block and _extension.cpu_memory_pool_stats()["mapped"] == start["mapped"]


def test_blocks_that_two_passes_did_not_reuse_are_unmapped_at_the_next():
    _extension.empty_cpu_memory_pool()
    with _extension.cpu_memory_pool():
        unused = torch.empty(MIB)
    del unused
    cached = []
    for _ in range(3):
        with _extension.cpu_memory_pool():
            cached.append(_extension.cpu_memory_pool_stats()["cached_bytes"])
    assert cached == [4 * MIB, 4 * MIB, 0]


def test_exit_without_enter_is_a_clear_error():
    with pytest.raises(RuntimeError, match="without a matching memory_pool_enter"):
        _extension._C.memory_pool_exit()


def wide_model(layers):
    config = models.ReformerConfig(**WIDE, attn_layers=(["local", "lsh"] * layers)[:layers])
    return models.ReformerModelWithLMHead(config).train()


def training_gradients(model, ids):
    model.zero_grad()
    torch.manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dropout's reference fallback, where it warns
        model(input_ids=ids, labels=ids).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_reversible_gradients_are_bit_identical_with_and_without_the_pool(monkeypatch):
    """float64, dropout on: fresh (zeroed) blocks, reused blocks that hold the previous step's values,
    and no pool at all give the same bits; a kernel that read memory it did not write would differ."""
    torch.manual_seed(0)
    config = dict(WIDE, hidden_dropout_prob=0.1, local_attention_probs_dropout_prob=0.1)
    model = models.ReformerModelWithLMHead(models.ReformerConfig(**config, attn_layers=["local", "lsh", "local"]))
    model = model.double().train()
    ids = torch.randint(0, TINY["vocab_size"], (1, SEQ_LEN))
    _extension.empty_cpu_memory_pool()
    fresh = training_gradients(model, ids)
    reused = _extension.cpu_memory_pool_stats()["reused"]
    again = training_gradients(model, ids)
    assert _extension.cpu_memory_pool_stats()["reused"] > reused, "the second step must run on reused blocks"
    monkeypatch.setattr(_extension, "cpu_memory_pool", contextlib.nullcontext)
    _extension.empty_cpu_memory_pool()
    without = training_gradients(model, ids)
    for name, grad in fresh.items():
        assert torch.equal(again[name], grad) and torch.equal(without[name], grad), name


# Run in a fresh process with glibc's malloc thresholds pinned (every block of 128 KiB or more is its
# own mapping, returned to the system when freed), so that what malloc keeps or returns depends
# neither on what `import torch` allocated nor on the machine. It prints, per run, the pool's bytes
# (in use + cached) after the training steps and the minor faults of the last step; the last run
# is the deep model again with the reversible layers kept out of the pool, for comparison.
DEPTH_SCRIPT = """
import contextlib, json, resource, warnings
import torch
from reformer_kernels import _extension
from tests.nn.test_memory import SEQ_LEN, wide_model
warnings.simplefilter("ignore")
pooled = _extension.cpu_memory_pool
results = []
for layers, pool in ((3, pooled), (7, pooled), (7, contextlib.nullcontext)):
    _extension.cpu_memory_pool = pool
    _extension.empty_cpu_memory_pool()
    torch.manual_seed(0)
    model = wide_model(layers)
    ids = torch.randint(0, 50, (1, SEQ_LEN))
    optimizer = torch.optim.AdamW(model.parameters())
    for _ in range(4):  # the pool settles within the first steps
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    stats = _extension.cpu_memory_pool_stats()
    results.append(dict(layers=layers, pool_bytes=stats["in_use_bytes"] + stats["cached_bytes"],
                        faults=resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults))
print(json.dumps(results))
"""


def pinned_malloc_run(script: str):
    """The JSON ``script`` prints last, run in a fresh process with glibc's malloc thresholds pinned
    at 128 KiB (GLIBC_TUNABLES), so that what malloc keeps or returns does not depend on the machine."""
    tunables = "glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=131072"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, GLIBC_TUNABLES=tunables, PYTHONPATH=root)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env, cwd=root)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


PINS_GLIBC = pytest.mark.skipif(platform.system() != "Linux",
                                reason="pins glibc malloc's thresholds (GLIBC_TUNABLES): Linux only")


@PINS_GLIBC
def test_training_steps_reuse_memory_instead_of_faulting_it_in_whatever_the_depth():
    """Deterministic measures: the pool holds about the same bytes for 7 layers as for 3 (each layer reuses
    the blocks of the one before; both depths have local and LSH layers in the reversible part), and
    a steady-state training step of the 7-layer model faults in under a tenth of the pages the same
    step faults in when its reversible layers do not reuse memory (each of them then maps its
    temporaries afresh, thousands of pages per layer)."""
    shallow, deep, unpooled = pinned_malloc_run(DEPTH_SCRIPT)
    # A block or two of slack: freed ranges merge only where the kernel happened to place mappings
    # side by side, so the pool's size moves by 1-2 MiB from run to run (either depth); a layer that
    # kept its own temporaries would add several MiB per layer, 4 layers here.
    assert deep["pool_bytes"] <= 1.2 * shallow["pool_bytes"], (shallow, deep)
    assert unpooled["pool_bytes"] == 0 and deep["faults"] < unpooled["faults"] / 10, (deep, unpooled)


@pytest.mark.skipif(platform.system() != "Linux", reason="reads /proc/self/status: Linux only")
def test_emptying_the_pool_returns_its_free_blocks_to_the_system():
    script = """
import torch
from reformer_kernels import _extension
def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
start = rss_mib()
with _extension.cpu_memory_pool():
    blocks = [torch.ones(2**20) for _ in range(16)]
del blocks
cached = rss_mib()
released = _extension.empty_cpu_memory_pool()
print(cached - start, cached - rss_mib(), released / 2**20)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    kept, returned, released = map(float, done.stdout.strip().splitlines()[-1].split())
    assert kept >= 60 and released == 64, f"the 64 MiB freed stay cached ({kept:.1f} MiB resident, {released} MiB emptied)"
    assert returned >= 60, f"emptying the pool handed back only {returned:.1f} MiB of the 64 MiB cached"


# Steady-state minor faults of one step of the whole model (embeddings, layers, final LayerNorm, LM
# head), glibc's thresholds pinned as above: an eval forward under no_grad (the reversible function
# does not run there) and a bf16-autocast training step (whose bf16 and fp32 temporaries differ in
# size between the forward and the backward); each with the models' pool and with no pool at all.
STEADY_SCRIPT = """
import contextlib, json, resource, warnings
import torch
from reformer_kernels import _extension
from tests.nn.test_memory import SEQ_LEN, wide_model
warnings.simplefilter("ignore")
pooled = _extension.cpu_memory_pool
torch.manual_seed(0)
model = wide_model(3)
ids = torch.randint(0, 50, (1, SEQ_LEN))
optimizer = torch.optim.AdamW(model.parameters())

def infer():
    model.eval()
    with torch.no_grad():
        model(input_ids=ids).logits

def train_bf16():
    model.train()
    optimizer.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()

results = {}
for pool in (pooled, contextlib.nullcontext):
    _extension.cpu_memory_pool = pool
    _extension.empty_cpu_memory_pool()
    for step in (infer, train_bf16):
        # The pool settles within the first steps: training's are planned at its fourth (the first
        # step also creates the optimizer's state), whose arena faults in once; the fifth is steady.
        for _ in range(5):
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            step()
        results[f"{step.__name__} {pool is pooled}"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
print(json.dumps(results))
"""


@PINS_GLIBC
def test_inference_and_bf16_autocast_training_reuse_memory_instead_of_faulting_it_in():
    """The models run their whole forward in the pool (and the reversible backward its part), so
    their steady-state steps fault in under a tenth of the pages the same steps fault in without
    it, where each large temporary is a fresh mapping: tens of thousands of pages."""
    faults = pinned_malloc_run(STEADY_SCRIPT)
    for step in ("infer", "train_bf16"):
        assert faults[f"{step} True"] < faults[f"{step} False"] / 10, faults


def test_the_reversible_backward_holds_two_gradients_two_stream_tensors_and_one_sub_layer():
    """What the memory-saving backward holds at its peak, counted in (L, hidden) float32 tensors
    with sub-layers that are bias-free linear maps: the two carried (negated) gradients, the two
    stream tensors of the block being undone (at first the outputs kept from the forward, in use
    before the backward starts, which it lets go of as it goes), and one sub-layer's recomputation,
    whose output is consumed by the reconstruction (x2 = y2 - g(y1), after which y2 is dropped) and
    whose backward makes the gradient of its output and of its input: 2 + 2 + 2 = 6, of which 4 are
    allocated by the backward. Keeping each stream tensor and gradient term until the loop rebinds
    its name, and subtracting out of place, made it 10; saving the outputs (save_for_backward, which
    holds them until the backward returns) 8."""
    torch.manual_seed(0)
    hidden = 64
    stream = SEQ_LEN * hidden * 4  # 1 MiB: every stream-sized tensor comes from the pool
    sequence = ReversibleSequence([ReversibleBlock(nn.Linear(hidden, hidden, bias=False), nn.Linear(hidden, hidden, bias=False))
                                   for _ in range(4)])
    x = torch.randn(1, SEQ_LEN, hidden, requires_grad=True)
    y1, y2 = sequence(x, x)
    loss = (y1 + y2).sum()  # its gradients are expanded scalars, which take no memory
    del y1, y2
    _extension.empty_cpu_memory_pool()
    before = _extension.cpu_memory_pool_stats()["in_use_bytes"]
    loss.backward()
    assert _extension.cpu_memory_pool_stats()["peak_in_use_bytes"] - before <= 4 * stream


def test_the_final_layer_norm_allocates_its_output_and_blocks_of_rows_not_the_concatenation():
    """The encoder's LayerNorm over concat(y1, y2), recorded for the backward, allocates its
    (L, 2 * hidden) output, one block of CONCAT_ROWS concatenated rows and its normalized copy at a
    time, and the per-row mean and 1/std: about 2 stream tensors here, where LayerNorm of torch.cat
    allocates 4 (the concatenation, kept for the backward, and the output)."""
    from reformer_kernels.models.modeling import CONCAT_ROWS

    encoder = wide_model(1).reformer.encoder
    hidden = WIDE["hidden_size"]
    stream = SEQ_LEN * hidden * 4
    y1, y2 = (torch.randn(1, SEQ_LEN, hidden, requires_grad=True) for _ in range(2))
    _extension.empty_cpu_memory_pool()
    before = _extension.cpu_memory_pool_stats()["in_use_bytes"]
    with _extension.cpu_memory_pool():
        out = encoder.final_layer_norm(y1, y2)
    blocks = 2 * CONCAT_ROWS * 2 * hidden * 4
    statistics = 2 * SEQ_LEN * 4
    assert _extension.cpu_memory_pool_stats()["peak_in_use_bytes"] - before <= 2 * stream + blocks + statistics
    out.sum().backward()
    assert y1.grad.shape == y1.shape and y2.grad.shape == y2.shape


def _unmapped(start, end):
    """Whether no mapping of this process intersects the addresses [start, end)."""
    with open("/proc/self/maps") as f:
        for line in f:
            low, high = (int(address, 16) for address in line.split()[0].split("-"))
            if low < end and start < high:
                return False
    return True


@pytest.mark.skipif(platform.system() != "Linux", reason="reads /proc/self/maps: Linux only")
def test_a_free_range_too_small_for_a_tensor_grows_into_its_block_by_mapping_only_the_missing_pages():
    """A 6 MiB tensor when only a 4 MiB range is free: the pool maps the missing 2 MiB right below
    the range (or above it) where that address space is unused, and the tensor spans both, so the
    pool grows by 2 MiB, not 6; with both neighbours taken it maps 6 MiB afresh."""
    _extension.empty_cpu_memory_pool()
    with _extension.cpu_memory_pool():
        first = torch.empty(MIB)
        block = first.data_ptr()
        del first
        start = _extension.cpu_memory_pool_stats()
        below, above = _unmapped(block - 2 * MIB, block), _unmapped(block + 4 * MIB, block + 6 * MIB)
        larger = torch.empty(6 * MIB // 4)
    now = _extension.cpu_memory_pool_stats()
    grown = now["in_use_bytes"] + now["cached_bytes"] - start["in_use_bytes"] - start["cached_bytes"]
    assert now["mapped"] == start["mapped"] + 1
    if below:
        assert larger.data_ptr() == block - 2 * MIB and grown == 2 * MIB
    elif above:
        assert larger.data_ptr() == block and grown == 2 * MIB
    else:
        assert grown == 6 * MIB
    larger.fill_(1.0)  # every page of the block is writable
    assert larger.sum().item() == larger.numel()


# ----------------------------------------------------------------------------- the plan
# A pass of the pool as a list of steps: ("alloc", name, MiB) or ("free", name). Four tensors whose
# lifetimes leave two 4 MiB holes on either side of a 1 MiB tensor when an 8 MiB one comes: best fit
# cannot use them; the bytes in use at once never pass 9 MiB, and the planner's placement (the largest
# first, each at the lowest offset free for its lifetime) needs exactly that.
HOLES = [("alloc", "a", 4), ("alloc", "b", 1), ("alloc", "c", 4), ("free", "a"), ("free", "c"), ("alloc", "d", 8),
         ("free", "b"), ("free", "d")]
WIDER = [("alloc", "a", 2), ("alloc", "b", 6), ("free", "a"), ("alloc", "c", 3), ("free", "b"), ("free", "c")]


def peak_mib(steps):
    live, peak = {}, 0
    for step in steps:
        if step[0] == "alloc":
            live[step[1]] = step[2]
            peak = max(peak, sum(live.values()))
        else:
            del live[step[1]]
    return peak


def run_pass(steps, live, marker):
    """Runs one pass's steps in the pool; every tensor is filled with ``marker`` + its number when
    allocated and must still hold it when freed, and no two live tensors may share an address."""
    with _extension.cpu_memory_pool():
        for step in steps:
            if step[0] == "alloc":
                tensor = torch.empty(step[2] * MIB // 4)
                start, end = tensor.data_ptr(), tensor.data_ptr() + tensor.nbytes
                assert all(end <= other.data_ptr() or other.data_ptr() + other.nbytes <= start for other in live.values()), \
                    "two live tensors overlap"
                live[step[1]] = tensor.fill_(marker + len(live))
            else:
                tensor = live.pop(step[1])
                assert tensor.min().item() == tensor.max().item(), f"{step[1]} was overwritten while alive"
            del tensor  # (a freed tensor dies here, not at the next step)


def test_a_pass_that_repeats_is_planned_into_the_bytes_it_holds_at_once():
    _extension.empty_cpu_memory_pool()
    live = {}
    for marker in range(2):  # the pass, then its repetition: planned at the next pass's start
        run_pass(HOLES, live, marker)
    assert _extension.cpu_memory_pool_stats()["plan_bytes"] == 0
    planned = []
    for marker in range(2, 5):
        run_pass(HOLES, live, marker)
        planned.append(_extension.cpu_memory_pool_stats()["planned"])
    stats = _extension.cpu_memory_pool_stats()
    assert stats["plan_bytes"] == peak_mib(HOLES) * MIB == 9 * MIB
    assert planned[1] - planned[0] == planned[2] - planned[1] == 4, "every request at its planned address"
    assert stats["in_use_bytes"] + stats["cached_bytes"] == 9 * MIB, "the plan's range replaces best fit's blocks"


def test_a_plan_is_made_when_the_pool_was_emptied_before_the_pass_that_makes_it():
    """A plan is worth its range when best fit held more while the passes repeated, whatever the pool
    holds when the plan is made: the benchmarks empty it before the step whose memory they measure."""
    _extension.empty_cpu_memory_pool()
    live = {}
    for marker in range(2):
        run_pass(HOLES, live, marker)
    _extension.empty_cpu_memory_pool()
    planned = _extension.cpu_memory_pool_stats()["planned"]
    run_pass(HOLES, live, 2)
    stats = _extension.cpu_memory_pool_stats()
    assert stats["plan_bytes"] == 9 * MIB and stats["planned"] == planned + 4


def test_a_period_that_cannot_be_planned_is_not_planned_again_at_every_pass():
    """Placing is quadratic in the blocks: a period without a plan worth adopting (here every block
    outlives it) is placed once, not at each of its passes, in any phase of a period of two."""
    _extension.empty_cpu_memory_pool()
    kept = []

    def lasting_pass(mib):
        with _extension.cpu_memory_pool():
            kept.append(torch.empty(mib * MIB // 4))
            if len(kept) > 4:
                kept.pop(0)

    plans = []
    for _ in range(8):
        lasting_pass(1)
        lasting_pass(2)
        plans.append(_extension.cpu_memory_pool_stats()["plans"])
    assert _extension.cpu_memory_pool_stats()["plan_bytes"] == 0
    assert plans[-1] == plans[-3] > plans[0], plans


def test_a_pass_that_differs_drops_the_plan_and_a_new_pattern_gets_its_own():
    _extension.empty_cpu_memory_pool()
    live = {}
    for marker in range(3):
        run_pass(HOLES, live, marker)
    assert _extension.cpu_memory_pool_stats()["plan_bytes"] == 9 * MIB
    run_pass(WIDER, live, 3)  # served by best fit outside the plan's range, which it may not take
    with _extension.cpu_memory_pool():  # this pass's start compares the last one with the plan's
        assert _extension.cpu_memory_pool_stats()["plan_bytes"] == 0
    for marker in range(4, 8):
        run_pass(WIDER, live, marker)
    assert _extension.cpu_memory_pool_stats()["plan_bytes"] == peak_mib(WIDER) * MIB == 9 * MIB


def test_a_plan_survives_emptying_the_pool_and_a_period_of_two_passes_with_a_tensor_alive_across_it():
    """Training's period: a forward pass and a backward pass. Here the second pass leaves a tensor
    alive that the next period's first pass frees (as a step's gradients live until the next
    zero_grad): its lifetime wraps around the period's end, and the plan places it so."""
    first = [("free", "carried"), ("alloc", "x", 2), ("alloc", "y", 3), ("free", "x"), ("free", "y")]
    second = [("alloc", "z", 4), ("alloc", "carried", 1), ("free", "z")]
    _extension.empty_cpu_memory_pool()
    live = {"carried": torch.zeros(MIB // 4)}  # what the period before would have left
    for marker in range(3):
        run_pass(first, live, 2 * marker)
        run_pass(second, live, 2 * marker + 1)
    assert _extension.cpu_memory_pool_stats()["plan_bytes"] == 5 * MIB  # y (3) beside x (2); z (4) beside carried (1)
    _extension.empty_cpu_memory_pool()  # unmaps the plan's free range: the plan maps one anew at its next period
    before = _extension.cpu_memory_pool_stats()["planned"]
    for marker in range(3, 5):
        run_pass(first, live, 2 * marker)
        run_pass(second, live, 2 * marker + 1)
    assert _extension.cpu_memory_pool_stats()["planned"] - before >= 4
    assert _extension.cpu_memory_pool_stats()["plan_bytes"] == 5 * MIB


def test_training_steps_are_planned_into_about_the_bytes_they_hold_at_once():
    """The real pattern: after a few steps of a small model, each step's large tensors come from the
    plan's range, and the pool holds little more than the most bytes ever in use at once (best fit's
    free ranges held about 1.4x that at the crime-and-punishment configuration)."""
    torch.manual_seed(0)
    model = wide_model(4)
    ids = torch.randint(0, 50, (1, SEQ_LEN))
    optimizer = torch.optim.AdamW(model.parameters())
    _extension.empty_cpu_memory_pool()
    planned = []
    for _ in range(6):
        optimizer.zero_grad()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        planned.append(_extension.cpu_memory_pool_stats()["planned"])
    stats = _extension.cpu_memory_pool_stats()
    assert stats["plan_bytes"] > 0 and planned[-1] - planned[-2] == planned[-2] - planned[-3] > 0, planned
    assert stats["in_use_bytes"] + stats["cached_bytes"] <= 1.1 * stats["peak_in_use_bytes"], stats
