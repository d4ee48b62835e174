"""Skip marks shared by the test folders."""
import pytest

from reformer_kernels import _extension

requires_extension = pytest.mark.skipif(
    not _extension.loaded(), reason=f"reformer_kernels._C not loaded: {_extension.LOAD_ERROR}"
)
