"""Fixtures of the Triton kernel tests. They run under TRITON_INTERPRET=1 on CPU tensors (in their
own pytest process: the interpreter is chosen when triton compiles, at import) or on a GPU."""
import pytest
import torch

from reformer_kernels import backends


@pytest.fixture
def device() -> torch.device:
    """Where the Triton kernels can run here; skips the test where they cannot."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if backends.triton_interpreted():
        return torch.device("cpu")
    pytest.skip("the Triton kernels need a CUDA device or TRITON_INTERPRET=1")
