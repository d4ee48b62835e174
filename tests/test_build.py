"""The compiled extension: built, loaded, and (on a CUDA build of torch with nvcc) CUDA compiled in."""
import shutil

import pytest
import torch

from reformer_kernels import _extension

cuda_buildable = torch.version.cuda is not None and shutil.which("nvcc") is not None


def test_extension_loads():
    assert _extension.loaded(), f"reformer_kernels._C did not load: {_extension.LOAD_ERROR}"


def test_every_op_runs_on_cpu():
    """Every op of the library, compiled or Triton, has a kernel that CPU tensors reach."""
    ops = [name for name in torch._C._dispatch_get_all_op_names() if name.startswith("reformer_kernels::")]
    assert "reformer_kernels::bucket_sort" in ops
    missing = [op for op in ops if not torch._C._dispatch_has_computed_kernel_for_dispatch_key(op, "CPU")]
    assert not missing, f"ops without a CPU kernel: {missing}"


@pytest.mark.skipif(not cuda_buildable, reason="needs a CUDA build of torch and nvcc to compile the CUDA kernels")
def test_cuda_kernels_are_compiled_and_registered():
    assert _extension.with_cuda(), "torch is a CUDA build and nvcc exists, yet _C was built without CUDA"
    for op in ("bucket_sort", "lsh_hash"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"reformer_kernels::{op}", "CUDA"), op
