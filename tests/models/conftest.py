import pytest

from reformer_kernels import use_backend


@pytest.fixture
def reference_backend():
    """Run on the reference backend: the link of the oracle chain that must equal transformers
    (kernels are held to the float64 reference op by op)."""
    with use_backend("reference"):
        yield
