"""The fixtures of the per-op tests: ``backend``, every backend an op can run on here, and
``device``, where that backend runs. Triton cases carry the ``triton_interpret`` mark, so the
default pytest run deselects them and the Makefile's second pass (TRITON_INTERPRET=1 -m
triton_interpret) runs them, or any run on a machine with a GPU that selects the mark."""
import pytest
import torch

from reformer_kernels import _extension, backends

from .fuzz import backend_device

BACKENDS = [
    "reference",
    "cpu",
    pytest.param("triton", marks=pytest.mark.triton_interpret),
]


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """"reference", "cpu" or "triton"; skips where that backend cannot run here."""
    name = request.param
    if name == "cpu" and not _extension.loaded():
        pytest.skip(f"reformer_kernels._C not loaded: {_extension.LOAD_ERROR}")
    if name == "triton":
        available, reason = backends.status()["triton"]
        if not available:
            pytest.skip(f"the triton backend cannot run here: {reason}")
    return name


@pytest.fixture
def device(backend) -> torch.device:
    """Where ``backend`` runs: a GPU for triton when one is visible, else the CPU (triton under
    TRITON_INTERPRET=1 runs on CPU tensors)."""
    return backend_device(backend)
