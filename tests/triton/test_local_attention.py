"""Triton local attention (forward and gradients) against the float64 reference."""
import pytest
import torch

from reformer_kernels import functional

from .helpers import assert_matches_reference, skip_if_interpreter_lacks
from .test_lsh_attention import padding_mask

pytestmark = pytest.mark.triton_interpret

# dtype, batch, heads, seq_len, head_dim, chunk_len, before, after, causal, padding, dropout_p
CASES = [
    # 40 = 2.5 chunks: the kernels pad to 48 with masked keys without copying
    (torch.float32, 1, 2, 40, 16, 16, 1, 0, False, "tail", 0.0),
    (torch.float32, 2, 1, 64, 64, 32, 1, 1, True, "full_row", 0.0),
    (torch.float16, 1, 1, 50, 16, 16, 1, 0, True, "none", 0.0),
    # one chunk (24 <= 32): full attention over a length that is not a power of two
    (torch.float16, 2, 1, 24, 100, 32, 1, 0, False, "tail", 0.0),
    (torch.bfloat16, 1, 2, 40, 64, 16, 1, 0, True, "tail", 0.0),
    # attention dropout: a padded tail chunk, chunks of 8 in blocks of 16, full attention, fp16
    (torch.float32, 1, 2, 40, 16, 16, 1, 1, True, "tail", 0.3),
    (torch.float32, 2, 1, 32, 16, 8, 2, 0, False, "full_row", 0.3),
    (torch.float32, 1, 1, 24, 16, 32, 1, 0, True, "none", 0.3),
    (torch.float16, 1, 1, 50, 16, 16, 1, 0, True, "tail", 0.2),
    (torch.bfloat16, 1, 1, 40, 64, 16, 1, 0, True, "tail", 0.2),
]


@pytest.mark.parametrize("dtype,batch,heads,seq_len,head_dim,chunk_len,before,after,causal,padding,dropout_p", CASES)
def test_local_attention_matches_reference(device, dtype, batch, heads, seq_len, head_dim, chunk_len, before, after,
                                           causal, padding, dropout_p):
    skip_if_interpreter_lacks(dtype)
    # (B, L, H, d) seen as (B, H, L, d), as the projections of a layer hand them over
    q, k, v = (torch.randn(batch, seq_len, heads, head_dim, dtype=torch.float64, device=device).transpose(1, 2) for _ in range(3))
    mask = padding_mask(padding, batch, seq_len, device)

    def run(backend, q, k, v):
        torch.manual_seed(11)  # every run draws the same dropout mask (functional draws it in float32)
        out = functional.local_attention(
            q, k, v, chunk_len=chunk_len, n_chunks_before=before, n_chunks_after=after, causal=causal,
            attention_mask=mask, dropout_p=dropout_p, backend=backend,
        )
        return (out,)

    assert_matches_reference(run, (q, k, v), dtype, "local_attention")
