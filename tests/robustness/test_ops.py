"""Hostile arguments to the functional ops: every backend gets functional's checks, so each case
runs on "reference" and "cpu" (the C++ kernels' own bounds are tests/test_kernel_bounds.py)."""
import pytest
import torch

from reformer_kernels import functional as RF

from ..marks import requires_extension

BACKENDS = ["reference", pytest.param("cpu", marks=requires_extension)]


def _attention_calls(mask):
    qk = torch.randn(2, 1, 16, 8)
    rotations = torch.randn(1, 8, 1, 2)
    idx = torch.arange(16).expand(2, 1, 16)
    return {
        "lsh_hash": lambda b: RF.lsh_hash(qk, rotations, 4, attention_mask=mask, backend=b),
        "lsh_attention": lambda b: RF.lsh_attention(qk, qk, idx, n_hashes=1, chunk_len=4, attention_mask=mask, backend=b),
        "local_attention": lambda b: RF.local_attention(qk, qk, qk, chunk_len=4, attention_mask=mask, backend=b),
        "lsh_self_attention": lambda b: RF.lsh_self_attention(qk, qk, rotations, 4, chunk_len=4, attention_mask=mask,
                                                              backend=b),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["lsh_hash", "lsh_attention", "local_attention", "lsh_self_attention"])
@pytest.mark.parametrize("kind", ["additive", "soft"])
def test_masks_that_are_not_zero_one_are_refused(backend, op, kind):
    """transformers' additive mask (0 for tokens, -10000 for padding) would be read inverted by
    .bool(), a soft one (0.5) as all ones: both are refused, naming the argument and the fix."""
    tokens = torch.ones(2, 16)
    tokens[1, -5:] = 0
    mask = (tokens - 1) * 10000.0 if kind == "additive" else tokens * 0.5
    with pytest.raises(ValueError, match=rf"{op}: attention_mask must hold only 1 \(token\) and 0 \(padding\).*\(mask == 0\)"):
        _attention_calls(mask)[op](backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["lsh_hash", "lsh_attention", "local_attention", "lsh_self_attention"])
def test_zero_one_masks_of_any_dtype_give_the_bool_mask_result(backend, op):
    tokens = torch.ones(2, 16, dtype=torch.bool)
    tokens[1, -5:] = False
    torch.manual_seed(0)
    expected = _attention_calls(tokens)[op](backend)
    for dtype in (torch.int64, torch.float32):
        torch.manual_seed(0)
        actual = _attention_calls(tokens.to(dtype))[op](backend)
        for a, e in zip(actual, expected) if isinstance(expected, tuple) else [(actual, expected)]:
            assert torch.equal(torch.as_tensor(a), torch.as_tensor(e)), (op, dtype)
