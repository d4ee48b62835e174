"""lsh_hash: every backend's bucket ids against the float64 reference hash of the same values.

float64 must agree exactly. In float32 and float16 the kernel and the float64 reference may
round a near-tie of the two best rotated coordinates either way (both answers are right), so
there they must agree everywhere except at near-ties, which are measured in float64 on the very
values the kernel sees. Fuzzed, then fixed cases per kernel; the ops' opcheck and schema, strided
inputs, the CUDA kernel on a GPU, and the errors of functional and of the ops. lsh_hash_packed:
its keys are the reference's ids packed with their row on both sides of the 32-bit key width, and
the layer's GPU path hands them to the sort with no packing op between."""
import pytest
import torch
from hypothesis import strategies as st

from reformer_kernels import backends, functional, reference
from reformer_kernels.ops.bucket_sort import packed_key_dtype
from reformer_kernels.nn.attention import LSHSelfAttention
from reformer_kernels.ops.lsh_hash import triton_kernels as triton_hashing
from tests.marks import requires_extension
from tests.test_no_host_sync import fake_gpu
from tests.triton_launches import recorded_launches

from .fuzz import (DTYPES, HEAD_DIMS, MASK_KINDS, NEAR_TIE, TRITON_HEAD_DIMS, fuzz_tests, head_split, n_buckets_strategy, near_ties,
                   padding_mask)
from .inputs import (COPIES, TorchOps, assert_impl_takes_schema_names, assert_same_schema, fixed_padding_mask, on_backends,
                     requires_cuda_kernels, schema_mask, skip_if_interpreter_lacks, small_lsh_inputs, triton_only)


@st.composite
def cases(draw, backend):
    tiny = backend == "triton"
    return dict(
        seed=draw(st.integers(0, 2**31 - 1)),
        dtype=draw(st.sampled_from(DTYPES[backend])),
        batch=draw(st.sampled_from([1, 2, 3])),
        heads=draw(st.integers(1, 4)),
        seq_len=draw(st.integers(1, 24 if tiny else 70)),
        head_dim=draw(st.sampled_from(TRITON_HEAD_DIMS if tiny else HEAD_DIMS)),
        n_hashes=draw(st.integers(1, 4 if tiny else 8)),
        n_buckets=draw(n_buckets_strategy(small=tiny)),
        mask=draw(st.sampled_from(MASK_KINDS)),
        head_split=draw(st.booleans()),  # vectors as (B, L, H, d) memory viewed as (B, H, L, d)
    )


def check(backend, device, case):
    torch.manual_seed(case["seed"])
    dtype, n_buckets = case["dtype"], case["n_buckets"]
    batch, heads, seq_len, head_dim, n_hashes = (case[k] for k in ("batch", "heads", "seq_len", "head_dim", "n_hashes"))
    factors = reference.bucket_factors(n_buckets)
    # rounded to dtype first, so that the float64 reference hashes exactly the values the kernel sees
    vectors = torch.randn(batch, heads, seq_len, head_dim).to(dtype).double()
    rotations = torch.randn(heads, head_dim, n_hashes, sum(factors) // 2).to(dtype).double()
    mask = padding_mask(case["mask"], batch, seq_len)

    expected, expected_keys = expected_hash(vectors, rotations, n_buckets, mask, device)
    kernel_vectors = vectors.to(device, dtype)
    buckets, num_keys = functional.lsh_hash(
        head_split(kernel_vectors) if case["head_split"] else kernel_vectors, rotations.to(device, dtype), n_buckets,
        attention_mask=None if mask is None else mask.to(device), backend=backend,
    )
    assert num_keys == expected_keys
    assert buckets.dtype == torch.int64 and buckets.shape == expected.shape
    buckets = buckets.cpu()
    if dtype == torch.float64:
        assert torch.equal(buckets, expected), f"{int((buckets != expected).sum())} bucket ids differ in float64"
        return
    ties = near_ties(vectors, rotations, factors, NEAR_TIE[dtype])
    if mask is not None:
        ties &= mask.repeat(1, n_hashes)[:, None, :]  # padding takes the padding bucket whatever its rotations
    differ = buckets != expected
    assert not (differ & ~ties).any(), f"{int((differ & ~ties).sum())} bucket ids differ away from near-ties"


def expected_hash(vectors, rotations, n_buckets, mask, device):
    """The reference's (buckets, num_keys), under the GPU's rule that any mask counts as padding
    (reading whether it pads would sync): there a mask that pads nothing still adds the padding
    bucket, so round r's ids shift by r."""
    if mask is None or device.type == "cpu" or not mask.all():
        return reference.hash_vectors(vectors, rotations, n_buckets, mask)
    buckets, num_keys = reference.hash_vectors(vectors, rotations, n_buckets)
    n_hashes = rotations.shape[2]
    rounds = torch.arange(n_hashes).repeat_interleave(vectors.shape[2])
    return buckets + rounds, num_keys + n_hashes


test_fuzz, test_fuzz_slow = fuzz_tests(check, cases)


def test_gpu_expectation_is_the_reference_that_counts_any_mask(monkeypatch):
    """``expected_hash``'s GPU ids are the reference's where it cannot read the mask either
    (inside torch.compile, where any mask counts too)."""
    vectors, rotations = torch.randn(2, 2, 12, 8, dtype=torch.float64), random_rotations(2, 8, 3, (4, 2))
    mask = torch.ones(2, 12, dtype=torch.bool)
    expected = expected_hash(vectors, rotations, (4, 2), mask, torch.device("cuda"))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    buckets, num_keys = reference.hash_vectors(vectors, rotations, (4, 2), mask)
    assert num_keys == expected[1] == 3 * 9
    assert torch.equal(buckets, expected[0])


def lsh_hash_cpu(*args, **kwargs):
    """The "cpu" backend impl of lsh_hash: (buckets, num_keys)."""
    return backends.select("lsh_hash", torch.device("cpu"), "cpu")[1](*args, **kwargs)


def random_rotations(heads, head_dim, n_hashes, n_buckets, dtype=torch.float64):
    size = n_buckets if isinstance(n_buckets, int) else sum(n_buckets)
    return torch.randn(heads, head_dim, n_hashes, size // 2, dtype=dtype)


# relative gap between the two best [xR, -xR] entries below which the dtype may pick either
FIXED_NEAR_TIE = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


@on_backends("cpu", "triton")
@pytest.mark.parametrize(
    "dtype,n_buckets,n_hashes,padding",
    [
        (torch.float32, 8, 1, "none"),
        (torch.float32, (4, 6), 2, "tail"),
        (torch.float16, 16, 4, "full_row"),
        (torch.bfloat16, (2, 4), 2, "tail"),
        # more rotations than one tile of the Triton kernel's argmax holds
        (torch.float16, 2048, 1, "tail"),
        (torch.float32, (64, 256), 1, "none"),
    ],
)
def test_matches_reference_except_near_ties(backend, device, dtype, n_buckets, n_hashes, padding):
    skip_if_interpreter_lacks(backend, dtype)
    batch, heads, seq_len, head_dim = 2, 2, 40, 16
    factors = reference.bucket_factors(n_buckets)
    # the reference hashes exactly the values the kernel sees
    vectors = torch.randn(batch, heads, seq_len, head_dim, device=device).to(dtype).double()
    rotations = torch.randn(heads, head_dim, n_hashes, sum(factors) // 2, device=device).to(dtype).double()
    mask = fixed_padding_mask(padding, batch, seq_len, device)

    buckets, num_keys = functional.lsh_hash(vectors.to(dtype), rotations.to(dtype), n_buckets, attention_mask=mask,
                                            backend=backend)
    expected, expected_num_keys = reference.hash_vectors(vectors, rotations, n_buckets, mask)

    assert num_keys == expected_num_keys
    assert buckets.dtype == torch.int64 and buckets.shape == expected.shape
    ties = near_ties(vectors, rotations, factors, FIXED_NEAR_TIE[dtype])
    if mask is not None:
        ties &= mask.repeat(1, n_hashes)[:, None, :]
    assert ties.float().mean() < 0.05, "too many near-ties for the comparison to mean anything"
    differ = buckets != expected
    assert not (differ & ~ties).any(), f"{int((differ & ~ties).sum())} bucket ids differ away from near-ties"


@on_backends("cpu", "triton")
@pytest.mark.parametrize("n_buckets", [2048, (64, 128), (2, 1024, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_exact_ties_pick_the_first_maximum(backend, device, n_buckets, dtype):
    """Small integer vectors and rotations make every rotated value exact in every dtype and tie
    often, within a tile of the Triton kernel's argmax, across its tiles and between xR and -xR: the
    bucket must be the first maximum of [xR, -xR], as the reference's torch.argmax picks it, for
    any number of buckets."""
    skip_if_interpreter_lacks(backend, dtype)
    batch, heads, seq_len, head_dim, n_hashes = 2, 1, 24, 16, 2
    factors = reference.bucket_factors(n_buckets)
    vectors = torch.randint(-1, 2, (batch, heads, seq_len, head_dim), dtype=torch.float64)
    rotations = torch.randint(-1, 2, (heads, head_dim, n_hashes, sum(factors) // 2), dtype=torch.float64)
    mask = fixed_padding_mask("tail", batch, seq_len, torch.device("cpu"))
    expected, expected_num_keys = reference.hash_vectors(vectors, rotations, n_buckets, mask)
    assert near_ties(vectors, rotations, factors, 0.0).float().mean() > 0.25, "too few exact ties to test the tie-break"

    buckets, num_keys = functional.lsh_hash(vectors.to(device, dtype), rotations.to(device, dtype), n_buckets,
                                            attention_mask=mask.to(device), backend=backend)
    assert num_keys == expected_num_keys
    assert torch.equal(buckets.cpu(), expected), f"{int((buckets.cpu() != expected).sum())} bucket ids differ"


@requires_extension
@pytest.mark.parametrize(
    "batch, heads, seq_len, head_dim, n_hashes, n_buckets, mask_kind",
    [
        (1, 1, 7, 1, 1, 2, None),
        (3, 8, 100, 16, 2, 8, "padded"),
        (2, 2, 64, 64, 8, (4, 8), "fully_padded"),
        (1, 3, 130, 128, 4, (2, 2, 4), None),
    ],
)
def test_cpu_matches_reference_float64(batch, heads, seq_len, head_dim, n_hashes, n_buckets, mask_kind):
    vectors = torch.randn(batch, heads, seq_len, head_dim, dtype=torch.float64)
    rotations = random_rotations(heads, head_dim, n_hashes, n_buckets)
    attention_mask = padding_mask(mask_kind, batch, seq_len)
    expected, expected_keys = reference.hash_vectors(vectors, rotations, n_buckets, attention_mask)
    actual, num_keys = lsh_hash_cpu(vectors, rotations, n_buckets, attention_mask)
    assert num_keys == expected_keys
    assert torch.equal(actual, expected)


@requires_extension
def test_cpu_all_ones_mask_adds_no_padding_bucket():
    vectors = torch.randn(2, 2, 16, 8, dtype=torch.float64)
    rotations = random_rotations(2, 8, 2, 4)
    unmasked = lsh_hash_cpu(vectors, rotations, 4)
    masked = lsh_hash_cpu(vectors, rotations, 4, torch.ones(2, 16, dtype=torch.bool))
    assert unmasked[1] == masked[1] == 8
    assert torch.equal(unmasked[0], masked[0])


@requires_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cpu_low_precision_agrees_except_near_ties(dtype):
    """Rounding may flip an argmax only where the two best rotated values nearly tie."""
    vectors = torch.randn(2, 4, 64, 32).to(dtype)
    rotations = random_rotations(4, 32, 2, 8, dtype=torch.float32).to(dtype)
    actual, _ = lsh_hash_cpu(vectors, rotations, 8)
    expected, _ = reference.hash_vectors(vectors.double(), rotations.double(), 8)
    clear = ~near_ties(vectors, rotations, (8,), 1e-3)
    assert clear.float().mean() > 0.9
    assert torch.equal(actual[clear], expected[clear])


@requires_extension
def test_cpu_functional_backend_and_opcheck():
    vectors = torch.randn(2, 2, 16, 8)
    rotations = random_rotations(2, 8, 2, (2, 4), dtype=torch.float32)
    attention_mask = padding_mask("padded", 2, 16)
    expected = reference.hash_vectors(vectors, rotations, (2, 4), attention_mask)
    actual = functional.lsh_hash(vectors, rotations, (2, 4), attention_mask=attention_mask, backend="cpu")
    assert actual[1] == expected[1]
    assert torch.equal(actual[0], expected[0])
    torch.library.opcheck(torch.ops.reformer_kernels.lsh_hash.default, (vectors, rotations, [2, 4], attention_mask))


@requires_extension
def test_cpu_head_split_views_are_read_in_place():
    """Vectors as (B, L, H, d).transpose(1, 2) views, as a layer's projection gives them: same buckets."""
    torch.manual_seed(5)
    vectors = torch.randn(2, 3, 40, 8)
    rotations = torch.randn(3, 8, 2, 4)
    view = head_split(vectors)
    assert not view.is_contiguous()
    assert torch.equal(lsh_hash_cpu(view, rotations, 8)[0], lsh_hash_cpu(vectors, rotations, 8)[0])


@requires_extension
@pytest.mark.parametrize("op", ["lsh_hash", "lsh_hash_packed"])
def test_direct_op_calls_reject_bad_inputs(op):
    vectors = torch.randn(1, 2, 8, 4)
    rotations = random_rotations(2, 4, 1, 4, dtype=torch.float32)

    def call(vectors=vectors, rotations=rotations, n_buckets=(4,), mask=None):
        return getattr(torch.ops.reformer_kernels, op)(vectors, rotations, list(n_buckets), mask)

    with pytest.raises(TypeError, match="floating"):
        call(vectors=vectors.long())
    with pytest.raises(TypeError, match="dtype of vectors"):
        call(rotations=rotations.double())
    with pytest.raises(ValueError, match="even"):
        call(n_buckets=(3,))
    with pytest.raises(ValueError, match="sum\\(n_buckets\\) / 2"):
        call(n_buckets=(8,))
    with pytest.raises(ValueError, match="heads, head_dim"):
        call(rotations=rotations[:1])
    with pytest.raises(ValueError, match="attention_mask"):
        call(mask=torch.ones(1, 9, dtype=torch.bool))


@requires_extension
@pytest.mark.parametrize("op", ["lsh_hash", "lsh_hash_packed"])
def test_more_buckets_than_32_bit_ids_hold_is_an_error(op):
    vectors = torch.randn(1, 1, 4, 4)
    rotations = torch.randn(1, 4, 1, 31)
    with pytest.raises(ValueError, match=r"make more than 2\^30 buckets"):
        getattr(torch.ops.reformer_kernels, op)(vectors, rotations, [2] * 31, None)


def packed_hash(backend):
    """The lsh_hash_packed op of ``backend``: the Triton one, or the compiled one (CPU or CUDA by the tensors)."""
    return triton_hashing.lsh_hash_packed if backend == "triton" else torch.ops.reformer_kernels.lsh_hash_packed


@on_backends("cpu", "triton")
@pytest.mark.parametrize(
    "n_buckets, n_hashes, padding, key_dtype",
    [
        ((4, 6), 3, "tail", torch.uint32),
        # 4 rows * 2^30 ids = 2^32: the largest key, 2^32 - 1, is the last 32-bit one
        ((1024, 1024, 1024), 1, "none", torch.uint32),
        # the padding bucket makes 4 * (2^30 + 1) > 2^32: 64-bit keys
        ((1024, 1024, 1024), 1, "full_row", torch.uint64),
    ],
)
def test_packed_keys_are_the_reference_ids_packed_with_their_row(backend, device, n_buckets, n_hashes, padding, key_dtype):
    """lsh_hash_packed's keys are csrc/sort_keys.h's packing row * num_keys + id of the float64
    reference's ids (ties included: small integers make every rotated value exact and tie often,
    in fp32 as in float64), its positions each entry's index in its row: bucket_sort_packed's input."""
    batch, heads, seq_len, head_dim = 2, 2, 20, 16
    factors = reference.bucket_factors(n_buckets)
    vectors = torch.randint(-1, 2, (batch, heads, seq_len, head_dim), dtype=torch.float64)
    rotations = torch.randint(-1, 2, (heads, head_dim, n_hashes, sum(factors) // 2), dtype=torch.float64)
    mask = fixed_padding_mask(padding, batch, seq_len, torch.device("cpu"))
    ids, num_keys = reference.hash_vectors(vectors, rotations, n_buckets, mask)
    assert near_ties(vectors, rotations, factors, 0.0).float().mean() > 0.1, "too few exact ties to test the tie-break"

    keys, positions = packed_hash(backend)(vectors.to(device, torch.float32), rotations.to(device, torch.float32),
                                           list(factors), None if mask is None else mask.to(device))
    assert keys.dtype == key_dtype and positions.dtype == torch.int32
    rows = torch.arange(batch * heads).view(batch, heads, 1)
    assert torch.equal(keys.cpu().long(), rows * num_keys + ids)
    assert torch.equal(positions.cpu(), torch.arange(n_hashes * seq_len, dtype=torch.int32).expand(batch, heads, -1))


def test_packed_key_width_follows_rows_times_num_keys():
    assert packed_key_dtype("op", 4, 2**30) == torch.uint32
    assert packed_key_dtype("op", 4, 2**30 + 1) == torch.uint64
    assert packed_key_dtype("op", 0, 2**32) == torch.uint32  # no rows: the widest key one row would take
    assert packed_key_dtype("op", 2**34, 2**30) == torch.uint64
    with pytest.raises(ValueError, match=r"op: 16 rows \* num_keys=1152921504606846977 do not fit a 64-bit sort key"):
        packed_key_dtype("op", 16, 2**60 + 1)


@requires_extension
@pytest.mark.parametrize("n_buckets, mask_kind", [((2, 4), "padded"), ((1024, 1024, 1024), "padded"), (8, None)])
def test_cpu_packed_opcheck(n_buckets, mask_kind):
    """Both key widths (the second is 64-bit), so that the fake impl's dtype is checked against each."""
    factors = list(reference.bucket_factors(n_buckets))
    vectors = torch.randn(2, 2, 16, 8)
    rotations = random_rotations(2, 8, 2, n_buckets, dtype=torch.float32)
    mask = padding_mask(mask_kind, 2, 16)
    torch.library.opcheck(torch.ops.reformer_kernels.lsh_hash_packed.default, (vectors, rotations, factors, mask))


@requires_extension
def test_cpu_hash_sort_is_the_reference_sort_of_the_reference_hash():
    """functional.lsh_hash_sort on the CPU (int64 ids, counting sort) and the reference."""
    vectors = torch.randn(2, 3, 40, 8, dtype=torch.float64)
    rotations = random_rotations(3, 8, 2, (2, 4))
    mask = padding_mask("padded", 2, 40)
    expected = reference.argsort_buckets(*reference.hash_vectors(vectors, rotations, (2, 4), mask))
    for backend in ("reference", "cpu"):
        assert torch.equal(functional.lsh_hash_sort(vectors, rotations, (2, 4), attention_mask=mask, backend=backend), expected)


@triton_only
def test_triton_hash_sort_sorts_the_packed_keys(backend, device):
    """The triton backend's hash -> sort (lsh_hash_packed -> bucket_sort_packed) gives the
    reference's sorted_idx (exact inputs, so no near-tie can flip)."""
    vectors = torch.randint(-1, 2, (2, 2, 24, 16), dtype=torch.float64)
    rotations = torch.randint(-1, 2, (2, 16, 2, 5), dtype=torch.float64)
    mask = fixed_padding_mask("tail", 2, 24, torch.device("cpu"))
    expected = reference.argsort_buckets(*reference.hash_vectors(vectors, rotations, (4, 6), mask))
    _, hash_sort = backends.select("lsh_hash_sort", device, backend)
    sorted_idx = hash_sort(vectors.to(device, torch.float32), rotations.to(device, torch.float32), (4, 6),
                           attention_mask=mask.to(device))
    assert torch.equal(sorted_idx.cpu(), expected)


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=requires_extension)])
def test_backend_impls_take_the_schema_arguments_by_name(backend):
    qk, _, rotations = (t.double() for t in small_lsh_inputs())
    assert_impl_takes_schema_names("lsh_hash", backend, vectors=qk, rotations=rotations, n_buckets=4, attention_mask=schema_mask())


@triton_only
@pytest.mark.parametrize("op", [triton_hashing.lsh_hash, triton_hashing.lsh_hash_packed])
def test_triton_opcheck(backend, device, op):
    vectors = torch.randn(2, 2, 24, 16, device=device)
    rotations = torch.randn(2, 16, 2, 5, device=device)
    mask = fixed_padding_mask("tail", 2, 24, device)
    torch.library.opcheck(op, (vectors, rotations, [4, 6], mask))


@pytest.mark.parametrize("op", [triton_hashing.lsh_hash, triton_hashing.lsh_hash_packed])
def test_triton_hash_reads_head_split_views_in_place(op):
    """The launcher copies nothing: head-split vectors (a layer's projection) reach the hash kernel
    as they are, read through their strides. The launch is recorded, not run; the op's own function
    runs (a dispatch mode sees a custom op's call, not the torch ops inside it)."""
    vectors = head_split(torch.randn(2, 3, 64, 32, dtype=torch.float16))
    rotations = torch.randn(3, 32, 2, 4, dtype=torch.float16)
    with recorded_launches() as launches, TorchOps() as called:
        op._init_fn(vectors, rotations, [8], None)
    names = [name for name, _ in called.ops]
    assert not COPIES & set(names), names
    (_, args, _), = launches
    assert args[0] is vectors and args[1] is rotations


@pytest.mark.parametrize("compiled, op", [("lsh_hash", triton_hashing.lsh_hash),
                                          ("lsh_hash_packed", triton_hashing.lsh_hash_packed)])
def test_triton_op_takes_the_schema_of_the_compiled_op(compiled, op):
    assert_same_schema(compiled, op)


@triton_only
def test_triton_bad_n_buckets_gets_the_shared_error(backend, device):
    qk = torch.randn(1, 1, 32, 16, device=device)
    with pytest.raises(ValueError, match="n_buckets"):
        functional.lsh_hash(qk, torch.randn(1, 16, 1, 3, device=device), 5, backend=backend)


@requires_cuda_kernels
@pytest.mark.parametrize("n_buckets", [2, 32, (4, 8), (2, 4, 6)])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_equals_reference(n_buckets, padded, dtype):
    batch, heads, seq_len, head_dim, n_hashes = 2, 3, 300, 64, 4
    vectors = torch.randn(batch, heads, seq_len, head_dim, dtype=dtype)
    rotations = random_rotations(heads, head_dim, n_hashes, n_buckets, dtype=dtype)
    mask = None
    if padded:
        mask = torch.ones(batch, seq_len, dtype=torch.bool)
        mask[1, 250:] = False
    ref, ref_keys = reference.hash_vectors(vectors.double(), rotations.double(), n_buckets, mask)
    ours, keys = functional.lsh_hash(
        vectors.cuda(), rotations.cuda(), n_buckets, attention_mask=None if mask is None else mask.cuda(), backend="cuda"
    )
    assert keys == ref_keys
    # The kernel sums the rotation in a different order than the float64 oracle: near-ties may
    # flip in float32, never in float64.
    agreement = (ours.cpu() == ref).double().mean().item()
    assert agreement == 1.0 if dtype == torch.float64 else agreement > 0.999


@requires_cuda_kernels
@pytest.mark.parametrize("op", ["lsh_hash", "lsh_hash_packed"])
def test_cuda_opcheck(op):
    vectors = torch.randn(1, 2, 64, 16, device="cuda")
    rotations = torch.randn(2, 16, 2, 4, device="cuda")
    torch.library.opcheck(getattr(torch.ops.reformer_kernels, op).default, (vectors, rotations, [8], None))


@requires_cuda_kernels
@pytest.mark.parametrize("n_buckets, padding, key_dtype", [((4, 6), "tail", torch.uint32),
                                                           ((1024, 1024, 1024), "none", torch.uint32),
                                                           ((1024, 1024, 1024), "full_row", torch.uint64)])
def test_cuda_packed_keys_and_sort_equal_the_cpu_ones(n_buckets, padding, key_dtype):
    """The CUDA lsh_hash_packed writes the CPU kernel's keys and positions (exact inputs) on both
    sides of the 32-bit width, and its hash -> sort gives the reference's sorted_idx."""
    factors = list(reference.bucket_factors(n_buckets))
    vectors = torch.randint(-1, 2, (2, 2, 300, 16)).float()
    rotations = torch.randint(-1, 2, (2, 16, 1, sum(factors) // 2)).float()
    mask = fixed_padding_mask(padding, 2, 300, torch.device("cpu"))
    cuda_mask = None if mask is None else mask.cuda()
    expected = torch.ops.reformer_kernels.lsh_hash_packed(vectors, rotations, factors, mask)
    keys, positions = torch.ops.reformer_kernels.lsh_hash_packed(vectors.cuda(), rotations.cuda(), factors, cuda_mask)
    assert keys.dtype == key_dtype
    assert torch.equal(keys.cpu(), expected[0]) and torch.equal(positions.cpu(), expected[1])
    _, hash_sort = backends.select("lsh_hash_sort", keys.device, "cuda")
    sorted_idx = hash_sort(vectors.cuda(), rotations.cuda(), tuple(factors), attention_mask=cuda_mask)
    expected = reference.argsort_buckets(*reference.hash_vectors(vectors, rotations, tuple(factors), mask))
    assert torch.equal(sorted_idx.cpu(), expected)


@pytest.mark.parametrize(
    "n_buckets,error",
    [(3, ValueError), (0, ValueError), ((2, 3), ValueError), ((), ValueError), (4.0, TypeError), (True, TypeError)],
)
def test_rejects_bad_n_buckets(n_buckets, error):
    qk, v, rotations = small_lsh_inputs()
    with pytest.raises(error, match="n_buckets"):
        functional.lsh_hash(qk, rotations, n_buckets, backend="reference")
    with pytest.raises(error, match="^lsh_hash_sort: n_buckets"):
        functional.lsh_hash_sort(qk, rotations, n_buckets, backend="reference")
    with pytest.raises(error, match="n_buckets"):
        functional.lsh_self_attention(qk, v, rotations, n_buckets, chunk_len=4, backend="reference")


def test_rejects_bad_rotations():
    qk, v, rotations = small_lsh_inputs()
    with pytest.raises(ValueError, match=r"rotations must be \(heads, head_dim, n_hashes, R / 2\) = \(2, 4, n_hashes, 2\)"):
        functional.lsh_hash(qk, rotations[..., :1], 4, backend="reference")
    with pytest.raises(ValueError, match="rotations must be"):
        functional.lsh_hash(qk, rotations, (4, 2), backend="reference")  # R / 2 = 3 for factors (4, 2)
    with pytest.raises(ValueError, match="rotations must be"):
        functional.lsh_self_attention(qk, v, rotations[:1], 4, chunk_len=4, backend="reference")
    with pytest.raises(TypeError, match="rotations are torch.float64"):
        functional.lsh_hash(qk, rotations.double(), 4, backend="reference")
    with pytest.raises(ValueError, match="^lsh_hash_sort: rotations must be"):
        functional.lsh_hash_sort(qk, rotations[..., :1], 4, backend="reference")
    with pytest.raises(ValueError, match="^lsh_hash_sort: attention_mask must be"):
        functional.lsh_hash_sort(qk, rotations, 4, attention_mask=torch.ones(1, 3), backend="reference")


@pytest.mark.parametrize("probabilities", [False, True], ids=["forward", "output_attentions"])
def test_gpu_layer_path_sorts_the_hash_keys_with_no_packing_op(probabilities):
    """On (fake) GPU tensors the LSH layer's forward, and its forward that also returns the attention
    probabilities (output_attentions), hash into packed keys and positions that go to
    bucket_sort_packed as they are: no int64 ids (B, H, n_hashes * L), no bucket_sort (whose CUDA
    kernel packs them first, a pass of its own), no op between the hash and the sort."""
    batch, seq_len, n_hashes = 2, 64, 2
    with torch.device("meta"):
        layer = LSHSelfAttention(32, 2, 16, num_hashes=n_hashes, num_buckets=4, chunk_len=16, hash_seed=3,
                                 max_position_embeddings=64)
    with fake_gpu():
        layer = layer.to_empty(device="cuda").train()
        hidden = torch.empty(batch, seq_len, 32, device="cuda")
        mask = torch.ones(batch, seq_len, dtype=torch.long, device="cuda")
        with TorchOps() as recorded:
            layer(hidden, attention_mask=mask, attentions=[] if probabilities else None)
    names = [name for name, _, _ in recorded.calls]
    assert "reformer_kernels.bucket_sort" not in names and "reformer_kernels.triton_lsh_hash" not in names
    hashed = names.index("reformer_kernels.triton_lsh_hash_packed")
    assert names[hashed + 1] == "reformer_kernels.bucket_sort_packed", names[hashed:]
    (_, _, (keys, positions)), (_, (sort_keys, sort_positions, num_keys), _) = recorded.calls[hashed : hashed + 2]
    assert sort_keys is keys and sort_positions is positions and num_keys == n_hashes * 5
    assert keys.dtype == torch.uint32 and positions.dtype == torch.int32
    ids_shape = (batch, 2, n_hashes * seq_len)
    assert not any(isinstance(t, torch.Tensor) and t.dtype == torch.int64 and t.shape == ids_shape
                   for _, _, out in recorded.calls for t in (out if isinstance(out, (tuple, list)) else [out]))
