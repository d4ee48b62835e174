"""The public functional API beyond any one op: backend selection and the helpers. Each op's
validation, dropout routing, padding and masks are tested in tests/ops/test_<op>.py."""

import pytest

from reformer_kernels import backends, functional, reference

from .ops.inputs import small_lsh_inputs


def test_default_num_buckets_validates_its_arguments():
    # The rule itself is checked against transformers in tests/reference.
    assert functional.default_num_buckets(1 << 16, 64, 1 << 16) == reference.default_num_buckets(1 << 16, 64, 1 << 16)
    with pytest.raises(ValueError, match="seq_len must be >= 8"):
        functional.default_num_buckets(4, 8, 1024)
    with pytest.raises(ValueError, match="chunk_len must be >= 1"):
        functional.default_num_buckets(64, 0, 1024)


def test_unknown_or_unavailable_backend_is_an_error():
    qk, v, rotations = small_lsh_inputs()
    with pytest.raises(ValueError, match="'bogus' is not a backend"):
        functional.lsh_self_attention(qk, v, rotations, 4, chunk_len=4, backend="bogus")
    # CUDA kernels never run on CPU tensors, whatever this machine has.
    with pytest.raises(ValueError, match="backend 'cuda'"):
        functional.local_attention(qk, qk, v, chunk_len=4, backend="cuda")
    with pytest.raises(ValueError, match="backend 'cuda'"):
        functional.lsh_hash(qk, rotations, 4, backend="cuda")


def test_use_backend_context_is_obeyed():
    qk, v, rotations = small_lsh_inputs()
    with backends.use_backend("cuda"), pytest.raises(ValueError, match="backend 'cuda'"):
        functional.lsh_self_attention(qk, v, rotations, 4, chunk_len=4)
