"""The Philox stream that every backend's dropout draws (reference/dropout.py): the core against
Random123's published Philox4x32-10 known answers, the element numbering, the keep rule and its
rate."""
import pytest
import torch

from reformer_kernels import reference

# Random123's kat_vectors for philox4x32_10: (counter, key) -> the four output words
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter, key, words", KNOWN_ANSWERS)
def test_philox_core_gives_the_published_answers(counter, key, words):
    assert reference.philox4x32_10(torch.tensor(counter), key).tolist() == list(words)


def test_element_e_is_word_e_mod_4_of_counter_offset_and_e_div_4():
    seed, offset = -(2**62) - 5, 4 * (2**33 + 3)  # a negative seed is its two's complement key
    key = seed & 0xFFFFFFFFFFFFFFFF
    elements = torch.tensor([0, 1, 2, 3, 4, 7, 4 * 2**32 + 2, 4 * (2**40 + 9) + 3])
    base = offset // 4
    for e, word in zip(elements.tolist(), reference.philox_words(seed, offset, elements).tolist()):
        counter = torch.tensor([base & 0xFFFFFFFF, base >> 32, (e // 4) & 0xFFFFFFFF, (e // 4) >> 32])
        assert word == reference.philox4x32_10(counter, (key & 0xFFFFFFFF, key >> 32))[e % 4].item()


def test_keep_threshold_and_its_ends():
    assert reference.keep_threshold(0.0) == 0 and reference.keep_threshold(0.5) == 2**30
    assert reference.keep_threshold(1.0) == 2**31  # above every word >> 1: nothing kept
    assert reference.dropout_keep((5, 7), 0.0, 3, 0).all()
    assert not reference.dropout_keep((5, 7), 1.0, 3, 0).any()


@pytest.mark.parametrize("p", [0.05, 0.3, 0.9])
def test_kept_fraction_is_one_minus_p_for_fixed_keys(p):
    """2^16 decisions per key, fixed keys (no flakes): within 5 binomial standard deviations; keys
    differing in the seed or the offset give independent masks (agreement (1-p)^2 + p^2)."""
    n = 2**16
    masks = [reference.dropout_keep((n,), p, seed, offset) for seed, offset in ((1, 0), (2, 0), (1, 4))]
    sd = (p * (1 - p) / n) ** 0.5
    for mask in masks:
        assert abs(mask.double().mean().item() - (1 - p)) < 5 * sd
    agree = (1 - p) ** 2 + p**2
    for other in masks[1:]:
        assert abs((masks[0] == other).double().mean().item() - agree) < 5 * (agree * (1 - agree) / n) ** 0.5
