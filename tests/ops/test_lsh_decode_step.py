"""lsh_decode_step: the reference step against the full causal LSH attention at the new position
(float64, exact), every backend against the reference step (the tolerance rule; float64 exact),
and the insertion into ``recent`` exactly. The bucket order's state is drawn whole: any split of
the positions before the new one into the merged and recent runs, padding, windows that wrap
around the rounds, padded lengths past the position. Then the ops' opcheck and schema, and the
errors of functional and of the C++ op (nothing is written to ``recent`` then)."""
import functools
import math

import pytest
import torch
from hypothesis import strategies as st

from reformer_kernels import backends, functional, reference, use_backend
from reformer_kernels.nn import DecodingCache, LSHSelfAttention
from reformer_kernels.ops.lsh_decode_step import triton_kernels as triton_decoding
from reformer_kernels.ops.lsh_decode_step.reference import POSITION_BITS
from tests.marks import requires_extension
from tests.tolerance import assert_within_rule

from .fuzz import ATOL, DTYPES, TRITON_HEAD_DIMS, fuzz_tests
from .inputs import assert_same_schema, triton_only

UNWRITTEN = -7  # what recent holds past its keys: the op must leave it there


@st.composite
def cases(draw, backend):
    tiny = backend == "triton"
    chunk_len = draw(st.integers(1, 4 if tiny else 8))
    position = draw(st.integers(0, 20 if tiny else 60))
    padded_len = (math.ceil((position + 1) / chunk_len) + draw(st.integers(0, 1))) * chunk_len
    n_hashes = draw(st.sampled_from([1, 2, 3] if tiny else [1, 2, 4, 8]))
    n_chunks = n_hashes * padded_len // chunk_len
    recent_len = draw(st.integers(1, 8))
    return dict(
        seed=draw(st.integers(0, 2**31 - 1)),
        dtype=draw(st.sampled_from(DTYPES[backend])),
        batch=draw(st.integers(1, 3)),
        heads=draw(st.integers(1, 2)),
        head_dim=draw(st.sampled_from(TRITON_HEAD_DIMS if tiny else [1, 4, 8, 17, 64])),
        n_hashes=n_hashes,
        n_buckets=draw(st.sampled_from([2, 4, 6])),
        chunk_len=chunk_len,
        n_chunks_before=min(draw(st.integers(0, 2)), n_chunks),
        n_chunks_after=min(draw(st.integers(0, 1)), n_chunks),
        position=position,
        padded_len=padded_len,
        n_recent=draw(st.integers(0, min(position, recent_len - 1))),
        recent_len=recent_len,
        spare=draw(st.integers(0, 3)),  # cache capacity past the position
        padded=draw(st.booleans()),
    )


def step_inputs(case):
    """The op's arguments (float64, CPU) and the bucket ids (B, H, n_hashes, position + 1) they hold."""
    generator = torch.Generator().manual_seed(case["seed"])
    batch, heads, n_hashes, position = case["batch"], case["heads"], case["n_hashes"], case["position"]
    capacity = position + 1 + case["spare"]
    qk = torch.randn(batch, heads, capacity, case["head_dim"], generator=generator, dtype=torch.float64)
    v = torch.randn(batch, heads, capacity, case["head_dim"], generator=generator, dtype=torch.float64)
    key_valid = torch.ones(batch, position + 1, dtype=torch.bool)
    if case["padded"]:
        key_valid = torch.rand(batch, position + 1, generator=generator) > 0.3
    buckets = torch.randint(0, case["n_buckets"], (batch, heads, n_hashes, position + 1), generator=generator)
    buckets = torch.where(key_valid[:, None, None, :], buckets, case["n_buckets"])  # padding sorts last
    keys = buckets * 2**POSITION_BITS + torch.arange(position + 1)
    n_merged = position - case["n_recent"]
    recent = torch.full((batch, heads, n_hashes, case["recent_len"]), UNWRITTEN, dtype=torch.int64)
    recent[..., : case["n_recent"]] = keys[..., n_merged:position].sort(dim=-1).values
    args = dict(qk=qk, v=v, merged=keys[..., :n_merged].sort(dim=-1).values, recent=recent, n_recent=case["n_recent"],
                sort_keys=keys[..., position], key_valid=key_valid, position=position, padded_len=case["padded_len"],
                chunk_len=case["chunk_len"], n_chunks_before=case["n_chunks_before"], n_chunks_after=case["n_chunks_after"])
    return args, buckets


def forward_at_position(args, buckets, n_buckets):
    """Causal LSH attention (reference.lsh_attention) over the padded length, the positions past
    the new one padding in the padding bucket, at the new position."""
    position, padded_len = args["position"], args["padded_len"]
    batch, heads, n_hashes, _ = buckets.shape
    past = padded_len - position - 1
    every = torch.cat([buckets, torch.full((batch, heads, n_hashes, past), n_buckets)], dim=-1)
    order = (every * padded_len + torch.arange(padded_len)).argsort(dim=-1)
    sorted_idx = (order + torch.arange(n_hashes)[:, None] * padded_len).flatten(2)
    qk, v = (torch.nn.functional.pad(t[:, :, : position + 1], (0, 0, 0, past)) for t in (args["qk"], args["v"]))
    mask = torch.cat([args["key_valid"], torch.zeros(batch, past, dtype=torch.bool)], dim=1)
    out, _ = reference.lsh_attention(qk, v, sorted_idx, n_hashes=n_hashes, chunk_len=args["chunk_len"],
                                     n_chunks_before=args["n_chunks_before"], n_chunks_after=args["n_chunks_after"],
                                     causal=True, attention_mask=mask)
    return out[:, :, position]


def run(args, backend=None, dtype=torch.float64, device=torch.device("cpu")):
    """functional.lsh_decode_step on copies of ``args`` in ``dtype`` on ``device``: (out, recent after)."""
    moved = {k: (t.to(device, dtype) if t.is_floating_point() else t.to(device, copy=True)) if isinstance(t, torch.Tensor) else t
             for k, t in args.items()}
    tensors = [moved.pop(k) for k in ("qk", "v", "merged", "recent", "n_recent", "sort_keys", "key_valid")]
    out = functional.lsh_decode_step(*tensors, **moved, backend=backend)
    return out, tensors[3]


def check(backend, device, case):
    args, buckets = step_inputs(case)
    n_recent, position = case["n_recent"], case["position"]
    expected, expected_recent = run(args, "reference")
    assert (expected - forward_at_position(args, buckets, case["n_buckets"])).abs().max().item() < 1e-12, case
    n_merged = position - n_recent
    keys = buckets * 2**POSITION_BITS + torch.arange(position + 1)
    assert torch.equal(expected_recent[..., : n_recent + 1], keys[..., n_merged:].sort(dim=-1).values), case
    assert (expected_recent[..., n_recent + 1 :] == UNWRITTEN).all(), case

    dtype = case["dtype"]
    out, recent = run(args, backend, dtype, device)
    assert out.dtype == dtype and out.shape == expected.shape
    assert torch.equal(recent.cpu(), expected_recent), case
    baseline = run(args, "reference", dtype)[0] if dtype != torch.float64 else expected
    assert_within_rule(out.cpu(), expected, baseline, ATOL[dtype], f"lsh_decode_step {case}")


test_fuzz, test_fuzz_slow = fuzz_tests(check, cases)


def fixed_case(**changes):
    case = dict(seed=0, dtype=torch.float32, batch=2, heads=2, head_dim=16, n_hashes=2, n_buckets=4, chunk_len=4,
                n_chunks_before=1, n_chunks_after=1, position=13, padded_len=16, n_recent=3, recent_len=4, spare=2,
                padded=True)
    return {**case, **changes}


@requires_extension
def test_cpu_opcheck():
    args, _ = step_inputs(fixed_case())
    torch.library.opcheck(torch.ops.reformer_kernels.lsh_decode_step.default, tuple(args.values()))


@triton_only
def test_triton_opcheck(backend, device):
    args, _ = step_inputs(fixed_case())
    args = {k: t.to(device, torch.float32) if isinstance(t, torch.Tensor) and t.is_floating_point() else
            t.to(device) if isinstance(t, torch.Tensor) else t for k, t in args.items()}
    torch.library.opcheck(triton_decoding.lsh_decode_step, tuple(args.values()))


def test_triton_op_takes_the_schema_of_the_compiled_op():
    assert_same_schema("lsh_decode_step", triton_decoding.lsh_decode_step)


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=requires_extension)])
def test_backend_impls_take_the_schema_arguments_by_name(backend):
    """functional calls every impl positionally in the schema's order; by the schema's names each
    gives the same answer and insertion too."""
    args, _ = step_inputs(fixed_case(dtype=torch.float64))
    _, impl = backends.select("lsh_decode_step", torch.device("cpu"), backend)
    expected, expected_recent = run(args, "reference")
    recent = args["recent"].clone()
    torch.testing.assert_close(impl(**{**args, "recent": recent}), expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(recent, expected_recent)


@pytest.mark.parametrize(
    "change,error,match",
    [
        (dict(position=14), ValueError, "merged .* and n_recent .* must hold the 14 positions"),
        (dict(position=16), ValueError, "position 16 is past the 16 positions"),
        (dict(n_recent=4), ValueError, "n_recent 4 leaves no free slot"),
        (dict(padded_len=18), ValueError, "padded_len 18 must be a multiple of chunk_len 4"),
        (dict(padded_len=12), ValueError, "padded_len 12 must be a multiple of chunk_len 4 greater than position 13"),
        (dict(chunk_len=0), ValueError, "chunk_len must be >= 1"),
        (dict(n_chunks_before=9), ValueError, "n_chunks_before 9 reaches past the 8 chunk"),
        (dict(sort_keys="shift"), ValueError, "sort_keys must hold position 13"),
        (dict(sort_keys="int32"), TypeError, "sort_keys must be an int64 tensor"),
        (dict(key_valid="short"), ValueError, r"key_valid must be \(batch, position \+ 1\) = \(2, 14\)"),
        (dict(key_valid="long"), TypeError, "key_valid must be a bool tensor"),
        (dict(merged="int32"), TypeError, "merged must be int64 sort keys"),
        (dict(recent="rounds"), ValueError, "recent holds 1 rounds but merged 2"),
        (dict(recent="strided"), ValueError, "recent must be contiguous"),
        (dict(v="short"), ValueError, "v has shape"),
    ],
)
def test_bad_arguments_are_named_and_nothing_is_written(change, error, match):
    args, _ = step_inputs(fixed_case(dtype=torch.float64))
    bad = {
        ("sort_keys", "shift"): lambda: args["sort_keys"] + 1,
        ("sort_keys", "int32"): lambda: args["sort_keys"].int(),
        ("key_valid", "short"): lambda: args["key_valid"][:, :-1],
        ("key_valid", "long"): lambda: args["key_valid"].long(),
        ("merged", "int32"): lambda: args["merged"].int(),
        ("recent", "rounds"): lambda: args["recent"][:, :, :1].contiguous(),
        ("recent", "strided"): lambda: args["recent"].transpose(0, 1).contiguous().transpose(0, 1),
        ("v", "short"): lambda: args["v"][:, :, :-1],
    }
    (name, value), = change.items()
    args[name] = bad[name, value]() if (name, value) in bad else value
    before = args["recent"].clone()
    tensors = [args.pop(k) for k in ("qk", "v", "merged", "recent", "n_recent", "sort_keys", "key_valid")]
    with pytest.raises(error, match=match):
        functional.lsh_decode_step(*tensors, **args, backend="reference")
    assert torch.equal(tensors[3], before)


@triton_only
def test_triton_direct_op_calls_reject_what_would_address_out_of_bounds(backend, device):
    args, _ = step_inputs(fixed_case())
    args = {k: t.to(device, torch.float32) if isinstance(t, torch.Tensor) and t.is_floating_point() else
            t.to(device) if isinstance(t, torch.Tensor) else t for k, t in args.items()}
    before = args["recent"].clone()
    for changes in (dict(n_recent=4), dict(position=14), dict(position=16), dict(key_valid=args["key_valid"][:, :-1]),
                    dict(recent=args["recent"].transpose(0, 1).contiguous().transpose(0, 1))):
        with pytest.raises(ValueError, match="lsh_decode_step: need 0 <= n_recent"):
            triton_decoding.lsh_decode_step(*{**args, **changes}.values())
        assert torch.equal(args["recent"], before)


@requires_extension
def test_direct_op_calls_reject_bad_inputs_before_writing():
    args, _ = step_inputs(fixed_case())
    before = args["recent"].clone()
    op = torch.ops.reformer_kernels.lsh_decode_step

    def call(**changes):
        return op(*{**args, **changes}.values())

    for changes, error, match in (
        (dict(n_recent=4), ValueError, "n_recent = 4 must lie in"),
        (dict(position=14), ValueError, "merged holds 10 keys and recent 3"),
        (dict(padded_len=15), ValueError, "padded_len 15 must be a multiple of chunk_len 4"),
        (dict(key_valid=args["key_valid"][:, :-1]), ValueError, r"key_valid must be \(batch, position \+ 1\)"),
        (dict(sort_keys=args["sort_keys"].int()), TypeError, "sort_keys must be int64"),
        (dict(v=args["v"].float()), TypeError, "v must have the dtype of qk"),
        (dict(n_chunks_before=2**31), ValueError, "window"),
    ):
        with pytest.raises(error, match=match):
            call(**changes)
        assert torch.equal(args["recent"], before)


# Spills of the step's kernel measured with Triton 3.8.0 (2026-12-05), (head_dim, dtype, arch) -> stack
# bytes per thread: the fp32 window tiles of keys and values at head_dim 128 on sm_80 (4 warps;
# 8 warps spill there on sm_90 too). A variant that stops spilling must leave the table.
DECODE_SPILLS = {(128, torch.float32, 80): 8}


@pytest.mark.slow
@pytest.mark.skipif(backends.triton_interpreted(), reason="under TRITON_INTERPRET=1 the kernels are not compiled")
@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("n_hashes, head_dim", [(1, 64), (8, 128)])
def test_triton_kernel_compiles_without_spills(arch, dtype, n_hashes, head_dim):
    """The step compiles for sm_80 and sm_90 as generate launches it (tests/ops/test_triton_compile.py's
    harness): a 4K-position cache, 2 heads, chunks of 64 with one before, a 256-key recent run."""
    from .test_triton_compile import check_variants, compile_op

    batch, heads, position, n_recent = 2, 2, 4000, 100
    qk = torch.randn(batch, heads, position + 96, head_dim, dtype=dtype)
    merged = torch.zeros(batch, heads, n_hashes, position - n_recent, dtype=torch.int64)
    recent = torch.zeros(batch, heads, n_hashes, 256, dtype=torch.int64)
    sort_keys = torch.zeros(batch, heads, n_hashes, dtype=torch.int64)
    key_valid = torch.ones(batch, position + 1, dtype=torch.bool)
    variants = compile_op(arch, lambda: triton_decoding.lsh_decode_step(
        qk, qk, merged, recent, n_recent, sort_keys, key_valid, position, 4032, 64, 1, 0))
    check_variants(variants, dtype, without_dots=("_decode_step_kernel",))
    for variant in variants:
        allowed = DECODE_SPILLS.get((head_dim, dtype, arch), 0)
        assert variant.stack_bytes <= allowed, f"{variant}: spills {variant.stack_bytes} B, {allowed} B allowed"
        assert (head_dim, dtype, arch) not in DECODE_SPILLS or variant.stack_bytes, f"{variant}: no longer spills, drop it"


@triton_only
def test_triton_steps_of_a_layer_through_merges(backend, device, monkeypatch):
    """A layer's cached steps with the Triton step, padding and merges every 3 steps included, give
    the reference step's outputs (everything else on the reference backend, so both bucket alike),
    and the same bucket order."""
    torch.manual_seed(0)
    module = LSHSelfAttention(16, 2, 16, num_hashes=2, num_buckets=(2, 4), chunk_len=4, n_chunks_before=1, causal=True,
                              hash_seed=3, max_position_embeddings=64).to(device)
    x = torch.randn(2, 24, 16, device=device)
    mask = torch.ones(2, 24, dtype=torch.bool, device=device)
    mask[1, :3] = False  # a left-padded row
    caches = {name: DecodingCache(merge_every=3) for name in ("triton", "reference")}
    step = functional.lsh_decode_step
    with torch.no_grad(), use_backend("reference"):
        for cache in caches.values():
            module.fill_cache(x[:, :8], cache, attention_mask=mask[:, :8])
        for t in range(8, 24):
            outputs = {}
            for name, cache in caches.items():
                monkeypatch.setattr(functional, "lsh_decode_step", functools.partial(step, backend=name))
                outputs[name] = module.decode_step(x[:, t : t + 1], cache, mask[:, : t + 1])
            orders = [(cache.order.merged, cache.order.recent[..., : cache.order.n_recent]) for cache in caches.values()]
            assert all(torch.equal(a, b) for a, b in zip(*orders)), t
            assert (outputs["triton"] - outputs["reference"]).abs().max().item() < 1e-5, t
