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
    for op in ("bucket_sort", "bucket_sort_packed", "lsh_hash", "lsh_hash_packed"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"reformer_kernels::{op}", "CUDA"), op


def test_gpu_check_refuses_a_machine_without_a_gpu(tmp_path):
    """.ci/gpu-check (the one command for a GPU machine) stops at once, with exit status 2 and the
    reason, where torch sees no CUDA device, before building or running anything. The GPUs are
    hidden from the script, so this runs on GPU machines too."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(["bash", os.path.join(root, ".ci", "gpu-check")], capture_output=True, text=True,
                            env=dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path / "out"), CUDA_VISIBLE_DEVICES=""),
                            timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no CUDA device" in result.stderr
    assert os.listdir(tmp_path / "out") == []
