"""Philox4x32-10, the generator of every backend's dropout: the C++ op reformer_kernels::philox4x32_10
and Triton's tl.philox (under the interpreter, or on a GPU) against Random123's published known
answers and against the torch reference on random counters, and the Triton kernels' element
numbering (``philox_group``) against the reference's ``philox_words``. That dropout_add and the
attention ops draw the same bits on every backend is tested with those ops."""
import pytest
import torch
import triton
import triton.language as tl

from reformer_kernels import reference
from reformer_kernels.ops.dropout_add.triton_kernels import philox_group
from tests.marks import requires_extension
from tests.reference.test_dropout import KNOWN_ANSWERS

from .inputs import triton_only


def as_int64(key: tuple[int, int]) -> int:
    """The 64-bit key (k0 low, k1 high) as the int64 seed the ops take."""
    seed = key[0] | key[1] << 32
    return seed - 2**64 if seed >= 2**63 else seed


def random_counters(n: int) -> torch.Tensor:
    """n counters, words anywhere in [0, 2^32), the ends included."""
    counters = torch.randint(0, 2**32, (n, 4), generator=torch.Generator().manual_seed(0))
    counters[:4] = torch.tensor([[0] * 4, [2**32 - 1] * 4, [2**32 - 1, 0, 2**32 - 1, 0], [1, 2, 3, 4]])
    return counters


@requires_extension
@pytest.mark.parametrize("counter, key, words", KNOWN_ANSWERS)
def test_cpu_op_gives_the_published_answers(counter, key, words):
    out = torch.ops.reformer_kernels.philox4x32_10(torch.tensor([counter]), as_int64(key))
    assert out.tolist() == [list(words)]


@requires_extension
def test_cpu_op_is_the_reference_on_random_counters():
    counters = random_counters(1000)  # not a multiple of the kernel's 16 lanes
    for key in ((0, 0), (0xDEADBEEF, 0x12345678), (0xFFFFFFFF, 0xFFFFFFFF)):
        assert torch.equal(torch.ops.reformer_kernels.philox4x32_10(counters, as_int64(key)),
                           reference.philox4x32_10(counters, key))


@requires_extension
def test_cpu_op_rejects_bad_counters():
    with pytest.raises(ValueError, match=r"counter words must lie in \[0, 2\^32\), got 4294967296"):
        torch.ops.reformer_kernels.philox4x32_10(torch.tensor([[0, 0, 2**32, 0]]), 0)
    with pytest.raises(ValueError, match=r"counters must have shape \(..., 4\)"):
        torch.ops.reformer_kernels.philox4x32_10(torch.zeros(2, 3, dtype=torch.long), 0)
    with pytest.raises(TypeError, match="counters must be int64"):
        torch.ops.reformer_kernels.philox4x32_10(torch.zeros(2, 4, dtype=torch.int32), 0)


@triton.jit
def _store_words(Words, i, r0, r1, r2, r3, ok):
    tl.store(Words + 4 * i, r0.to(tl.int64) & 0xFFFFFFFF, mask=ok)
    tl.store(Words + 4 * i + 1, r1.to(tl.int64) & 0xFFFFFFFF, mask=ok)
    tl.store(Words + 4 * i + 2, r2.to(tl.int64) & 0xFFFFFFFF, mask=ok)
    tl.store(Words + 4 * i + 3, r3.to(tl.int64) & 0xFFFFFFFF, mask=ok)


@triton.jit
def _philox_kernel(Counters, Words, seed, n, BLOCK: tl.constexpr):
    """tl.philox of n counters (n, 4) int64 into Words (n, 4)."""
    i = tl.arange(0, BLOCK)
    ok = i < n
    c0 = tl.load(Counters + 4 * i, mask=ok, other=0).to(tl.uint32)
    c1 = tl.load(Counters + 4 * i + 1, mask=ok, other=0).to(tl.uint32)
    c2 = tl.load(Counters + 4 * i + 2, mask=ok, other=0).to(tl.uint32)
    c3 = tl.load(Counters + 4 * i + 3, mask=ok, other=0).to(tl.uint32)
    r0, r1, r2, r3 = tl.philox(seed, c0, c1, c2, c3)
    _store_words(Words, i, r0, r1, r2, r3, ok)


@triton.jit
def _group_kernel(Words, seed, philox_offset, first_group, BLOCK: tl.constexpr):
    """philox_group of groups first_group .. + BLOCK into Words (BLOCK, 4)."""
    i = tl.arange(0, BLOCK)
    r0, r1, r2, r3 = philox_group(seed, philox_offset, first_group + i.to(tl.int64))
    _store_words(Words, i, r0, r1, r2, r3, i < BLOCK)


@triton_only
def test_triton_philox_gives_the_published_answers_and_the_reference(backend, device):
    counters = torch.cat([torch.tensor([c for c, _, _ in KNOWN_ANSWERS]), random_counters(13)])
    for row, (counter, key, words) in enumerate(KNOWN_ANSWERS):
        out = torch.zeros(len(counters), 4, dtype=torch.int64, device=device)
        _philox_kernel[(1,)](counters.to(device), out, as_int64(key), len(counters), BLOCK=32)
        assert out[row].tolist() == list(words)
        assert torch.equal(out.cpu(), reference.philox4x32_10(counters, key))


@triton_only
def test_triton_element_numbering_is_the_references(backend, device):
    """Group g holds elements 4g .. 4g + 3 of the stream, offsets and groups past 2^32 included."""
    for seed, offset, first_group in ((5, 0, 0), (-(2**62), 4 * (2**33 + 1), 2**32 - 8)):
        out = torch.zeros(16, 4, dtype=torch.int64, device=device)
        _group_kernel[(1,)](out, seed, offset, first_group, BLOCK=16)
        elements = torch.arange(4 * first_group, 4 * (first_group + 16))
        assert torch.equal(out.cpu().flatten(), reference.philox_words(seed, offset, elements))
