"""lsh_decode_step: one cached decoding step of causal LSH attention, for the position after the
cached ones: insert it into each hash round's bucket order and attend it within its chunk windows
(the public function, with its checks, is ``reformer_kernels.functional.lsh_decode_step``).

One schema, declared in csrc/reformer.cpp:
    lsh_decode_step(qk, v, merged, recent(a!), n_recent, sort_keys, key_valid, position, padded_len,
                    chunk_len, n_chunks_before, n_chunks_after) -> out
qk, v (B, H, capacity, d): the cached shared query/key projections and values, position's
included; merged (B, H, n_hashes, m) and the first n_recent of recent (B, H, n_hashes, R): the
sorted runs of sort keys (bucket * 2**32 + position) of positions [0, position), m + n_recent =
position, n_recent < R; sort_keys (B, H, n_hashes): the new position's keys, which the op inserts
into recent (the caller then counts n_recent + 1, and merges the runs when recent is full: the
host knows the count without reading the device); key_valid (B, position + 1) bool. out (B, H, d)
in qk's dtype. Every backend implements that argument list:
- "cpu": the C++ kernel of csrc/cpu/decoding.cpp, which is that op;
- "triton": ``triton_kernels.py``, reformer_kernels::triton_lsh_decode_step, same arguments;
- "reference": ``reference.lsh_decode_step``, the definition.
The hash stays outside the op: the step hashes with the lsh_hash op that forward uses, so the
cached order and forward's agree on every backend and dtype, near-ties included.
"""
import torch

from ... import _extension, backends
from . import reference


def _fake(qk, v, merged, recent, n_recent, sort_keys, key_valid, position, padded_len, chunk_len, n_chunks_before,
          n_chunks_after):
    batch, heads, _, head_dim = qk.shape
    return qk.new_empty((batch, heads, head_dim))


def register(op) -> None:
    """Give ``op`` (of the lsh_decode_step schema) its fake impl: inference only, no autograd."""
    torch.library.register_fake(op, _fake)


backends.register("lsh_decode_step", "reference", reference.lsh_decode_step)
if _extension.loaded():
    register(torch.ops.reformer_kernels.lsh_decode_step.default)
    backends.register("lsh_decode_step", "cpu", torch.ops.reformer_kernels.lsh_decode_step)
