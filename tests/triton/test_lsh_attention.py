"""Triton LSH attention (forward, gradients through out and lse) against the float64 reference."""
import pytest
import torch

from reformer_kernels import functional, reference

from .helpers import assert_matches_reference, skip_if_interpreter_lacks

pytestmark = pytest.mark.triton_interpret


def padding_mask(kind: str, batch: int, seq_len: int, device: torch.device) -> torch.Tensor | None:
    """None, a padded tail in the last sequence, or a last sequence that is all padding."""
    if kind == "none":
        return None
    mask = torch.ones(batch, seq_len, dtype=torch.bool, device=device)
    mask[-1, seq_len * 3 // 4 :] = False
    if kind == "full_row":
        mask[-1] = False
    return mask


def hashed_order(qk: torch.Tensor, n_hashes: int, mask: torch.Tensor | None) -> torch.Tensor:
    """sorted_idx of real hashing (4 buckets per round, so buckets span several chunks)."""
    rotations = torch.randn(qk.shape[1], qk.shape[3], n_hashes, 2, dtype=qk.dtype, device=qk.device)
    buckets, num_keys = reference.hash_vectors(qk, rotations, 4, mask)
    return reference.sort_buckets(buckets, num_keys)[0]


# dtype, batch, heads, seq_len, head_dim, n_hashes, chunk_len, before, after, causal, padding, dropout_p
CASES = [
    (torch.float32, 1, 2, 32, 16, 1, 16, 1, 0, False, "none", 0.0),
    (torch.float32, 2, 1, 32, 64, 2, 16, 1, 0, True, "full_row", 0.0),
    (torch.float32, 1, 1, 32, 16, 4, 32, 1, 1, False, "tail", 0.0),
    # one chunk seen three times by its own window (fewer chunks than the window)
    (torch.float32, 1, 1, 16, 16, 1, 16, 1, 1, True, "none", 0.0),
    (torch.float16, 2, 1, 32, 16, 2, 16, 1, 0, True, "tail", 0.0),
    # full attention over 64 positions, head_dim padded to 128 inside
    (torch.float16, 1, 1, 64, 100, 1, 64, 0, 0, False, "full_row", 0.0),
    (torch.bfloat16, 1, 2, 32, 64, 2, 16, 1, 0, True, "tail", 0.0),
    # attention dropout: chunks of 8 in blocks of 16 (the interpreter's), windows before and after,
    # a window wider than the chunk count, fp16
    (torch.float32, 2, 1, 32, 16, 2, 8, 1, 1, True, "tail", 0.3),
    (torch.float32, 1, 2, 32, 16, 1, 16, 2, 1, False, "none", 0.3),
    (torch.float16, 1, 1, 32, 16, 4, 16, 1, 0, True, "full_row", 0.2),
    (torch.bfloat16, 1, 1, 32, 64, 2, 16, 1, 0, True, "tail", 0.2),
]


@pytest.mark.parametrize(
    "dtype,batch,heads,seq_len,head_dim,n_hashes,chunk_len,before,after,causal,padding,dropout_p", CASES
)
def test_lsh_attention_matches_reference(device, dtype, batch, heads, seq_len, head_dim, n_hashes, chunk_len, before,
                                         after, causal, padding, dropout_p):
    skip_if_interpreter_lacks(dtype)
    # (B, L, H, d) seen as (B, H, L, d), as the projections of a layer hand them over
    qk, v = (torch.randn(batch, seq_len, heads, head_dim, dtype=torch.float64, device=device).transpose(1, 2) for _ in range(2))
    mask = padding_mask(padding, batch, seq_len, device)
    sorted_idx = hashed_order(qk, n_hashes, mask)

    def run(backend, qk, v):
        torch.manual_seed(11)  # every run draws the same dropout mask (functional draws it in float32)
        return functional.lsh_attention(
            qk, v, sorted_idx, n_hashes=n_hashes, chunk_len=chunk_len, n_chunks_before=before, n_chunks_after=after,
            causal=causal, attention_mask=mask, dropout_p=dropout_p, return_lse=True, backend=backend,
        )

    assert_matches_reference(run, (qk, v), dtype, "lsh_attention")


@pytest.mark.parametrize("seq_len,chunk_len,n_hashes,causal", [(40, 16, 2, True), (20, 32, 1, False)])
def test_lsh_self_attention_pads_and_shortcuts(device, seq_len, chunk_len, n_hashes, causal):
    """Hash (Triton) -> sort -> attend (Triton): 40 is padded to 48 inside; 20 <= chunk_len gets
    full attention over a chunk that is not a power of two."""
    qk, v = (torch.randn(2, 2, seq_len, 16, dtype=torch.float64, device=device) for _ in range(2))
    rotations = torch.randn(2, 16, n_hashes, 2, dtype=torch.float64, device=device)
    mask = padding_mask("tail", 2, seq_len, device)

    def run(backend, qk, v):
        out = functional.lsh_self_attention(
            qk, v, rotations.to(qk.dtype), 4, chunk_len=chunk_len, causal=causal, attention_mask=mask, backend=backend
        )
        return (out,)

    assert_matches_reference(run, (qk, v), torch.float32, "lsh_self_attention")
