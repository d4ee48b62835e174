"""Dropout keep decisions from a counter-based generator, as every backend's kernels draw them.

The generator is Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
SC 2011), the variant of Random123 and of Triton's ``tl.philox``: a 128-bit counter (c0, c1, c2,
c3) and a 64-bit key (k0, k1) give four 32-bit words. A dropout call is keyed by ``seed`` (k0 its
low, k1 its high 32 bits) and numbers the elements of its logical tensor 0, 1, 2, ...: element e
gets word e mod 4 of the counter (offset / 4 low, offset / 4 high, e / 4 low, e / 4 high), the
numbering of torch's CUDA generator (curand_init(seed, subsequence e / 4, offset)). Being a pure
function of (seed, offset, e), the decision is the same on every backend and is regenerated in
the backward instead of being stored. An element is kept when its word, shifted right by one, is
at least ``keep_threshold(p)`` = floor(p * 2^31): integers only, so no backend can round it
differently. Which tensor an op numbers is the op's choice: dropout_add its input's row-major
elements, attention dropout the chunked scores of ``dropout_mask_shape``.

Here the arithmetic is int64 torch ops masked to 32 bits: slow, readable, and on every device.
"""
import torch

_MASK32 = 0xFFFFFFFF
# Philox4x32's round multipliers and key increments (the golden ratio and sqrt(3) - 1 in 32 bits)
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
PHILOX_ROUNDS = 10


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit halves of the 64-bit product a * b, a a 32-bit constant and b int64 in
    [0, 2^32). a is split into 16-bit halves so that no product leaves int64."""
    high_part = (a >> 16) * b  # < 2^48
    low_part = (a & 0xFFFF) * b
    low = (((high_part & 0xFFFF) << 16) + low_part) & _MASK32
    high = ((high_part + (low_part >> 16)) >> 16) & _MASK32
    return high, low


def philox4x32_10(counter: torch.Tensor, key: tuple[int, int]) -> torch.Tensor:
    """Philox4x32-10 of ``counter`` (..., 4) int64 in [0, 2^32) under ``key`` (k0, k1): the four
    output words (..., 4), int64 in [0, 2^32)."""
    c0, c1, c2, c3 = counter.unbind(-1)
    k0, k1 = key
    for _ in range(PHILOX_ROUNDS):
        high0, low0 = _mulhilo(PHILOX_M0, c0)
        high1, low1 = _mulhilo(PHILOX_M1, c2)
        c0, c1, c2, c3 = high1 ^ c1 ^ k0, low1, high0 ^ c3 ^ k1, low0
        k0, k1 = (k0 + PHILOX_W0) & _MASK32, (k1 + PHILOX_W1) & _MASK32
    return torch.stack([c0, c1, c2, c3], dim=-1)


def philox_words(seed: int, offset: int, elements: torch.Tensor) -> torch.Tensor:
    """The 32-bit word of each element index in ``elements`` (int64 >= 0), as int64, for a call
    keyed by ``seed`` (int64, its two's complement bits are the key) at generator ``offset``."""
    key = seed & 0xFFFFFFFFFFFFFFFF
    group = elements >> 2
    base = (offset >> 2) & 0xFFFFFFFFFFFFFFFF
    counter = torch.stack([torch.full_like(group, base & _MASK32), torch.full_like(group, base >> 32),
                           group & _MASK32, group >> 32], dim=-1)
    words = philox4x32_10(counter, (key & _MASK32, key >> 32))
    return words.gather(-1, (elements & 3)[..., None]).squeeze(-1)


def keep_threshold(p: float) -> int:
    """An element is kept when its word >> 1 is at least this: floor(p * 2^31), so that it is
    kept with probability 1 - p to within 2^-31 (p = 1: never)."""
    return int(p * 2**31)


def keep_scale(p: float) -> float:
    """The factor of a kept element: 1 / (1 - p); p = 1 keeps nothing, and has none to take (0)."""
    return 1.0 / (1.0 - p) if p < 1.0 else 0.0


def dropout_keep(shape: tuple[int, ...], p: float, seed: int, offset: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Bool keep-mask of ``shape`` (True: kept), element e of its row-major order decided by the
    word of e under (seed, offset)."""
    numel = 1
    for size in shape:
        numel *= size
    elements = torch.arange(numel, dtype=torch.int64, device=device)
    return ((philox_words(seed, offset, elements) >> 1) >= keep_threshold(p)).reshape(shape)
