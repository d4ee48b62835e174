"""Backend selection: argument > use_backend > REFORMER_KERNELS_BACKEND > auto; clear errors."""
import importlib.util
import os
import subprocess
import sys
import warnings

import pytest
import torch

import reformer_kernels
from reformer_kernels import backends

from .marks import requires_extension


def test_precedence_argument_context_env(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "reference")
    assert backends.current_backend() == "reference"
    with reformer_kernels.use_backend("auto"):
        assert backends.current_backend() == "auto"
        name, _ = backends.select("bucket_sort", torch.device("cpu"), "reference")
        assert name == "reference"
    assert backends.current_backend() == "reference"


def test_env_var_with_unknown_backend_is_rejected(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match="REFORMER_KERNELS_BACKEND"):
        backends.current_backend()


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match="auto, triton, cuda, cpu, reference"):
        with reformer_kernels.use_backend("gpu"):
            pass
    with pytest.raises(ValueError, match="not a backend"):
        reformer_kernels.functional.bucket_sort(torch.zeros(3, dtype=torch.long), 1, backend="cudnn")


def test_unknown_op():
    with pytest.raises(ValueError, match="unknown op"):
        backends.select("no_such_op", torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when no GPU is visible")
def test_unavailable_backend_says_why():
    with pytest.raises(ValueError, match="no CUDA device|built without CUDA|did not load"):
        reformer_kernels.functional.bucket_sort(torch.zeros(3, dtype=torch.long), 1, backend="cuda")


@requires_extension
@pytest.mark.parametrize("op", backends.implemented_ops()["cpu"])
def test_auto_picks_the_cpu_kernel_for_cpu_tensors(op):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        name, _ = backends.select(op, torch.device("cpu"))
    assert name == "cpu"


def test_auto_warns_once_when_falling_back(monkeypatch):
    monkeypatch.setattr(backends, "_registry", {"toy": {"reference": lambda: None}})
    monkeypatch.setattr(backends, "_warned", set())
    with pytest.warns(RuntimeWarning, match="toy on cpu runs on the slow reference"):
        assert backends.select("toy", torch.device("cpu"))[0] == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.select("toy", torch.device("cpu"))[0] == "reference"


def test_explicit_backend_without_kernel_for_op_raises(monkeypatch):
    monkeypatch.setattr(backends, "_registry", {"toy": {"reference": lambda: None}})
    with pytest.raises(ValueError, match="has no kernel for toy|unavailable"):
        backends.select("toy", torch.device("cpu"), "cpu")


def test_info_lists_backends_and_ops():
    text = reformer_kernels.info()
    for name in ("reference", "cpu", "cuda", "triton", "bucket_sort", "linear_cross_entropy", "torch"):
        assert name in text


def test_cli_info_runs():
    result = subprocess.run([sys.executable, "-m", "reformer_kernels.cli", "info"], capture_output=True, text=True, check=True)
    assert "backends:" in result.stdout


def test_import_without_extension_warns_and_falls_back():
    """With _C unloadable the package still imports, warns once, and runs the reference."""
    code = (
        "import sys, warnings\n"
        "sys.modules['reformer_kernels._C'] = None\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import torch, reformer_kernels\n"
        "    out = reformer_kernels.functional.bucket_sort(torch.tensor([[2, 0, 1]]), 3)\n"
        "assert not reformer_kernels._extension.loaded()\n"
        "assert out[0].tolist() == [[1, 2, 0]], out\n"
        "messages = [str(w.message) for w in caught]\n"
        "assert any('_C could not be loaded' in m for m in messages), messages\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@requires_extension
def test_cpu_ops_do_not_import_triton():
    """A process that runs only CPU tensors never maps triton's compiler library (~90 MB of its
    first step's memory); an explicit backend="triton" still registers the Triton kernels."""
    code = (
        "import sys, torch, reformer_kernels\n"
        "from reformer_kernels import backends\n"
        "layer = reformer_kernels.nn.LSHSelfAttention(16, 2, 8, num_hashes=2, chunk_len=4, causal=True)\n"
        "layer(torch.randn(1, 32, 16, requires_grad=True)).sum().backward()\n"
        "print('triton' in sys.modules)\n"
        "try:\n"
        "    backends.select('lsh_attention', torch.device('cpu'), 'triton')\n"
        "except ValueError:\n"
        "    pass\n"
        "print('triton' in backends._registry['lsh_attention'])\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    imported, registered = result.stdout.split()
    assert imported == "False"
    assert registered == str(importlib.util.find_spec("triton") is not None)


def test_triton_has_no_bucket_sort_on_a_gpu_machine_whose_extension_lacks_cuda(monkeypatch):
    """There the compiled sort cannot take CUDA tensors: "auto" must fall back loudly to the
    reference sort rather than pick a triton entry that fails inside torch's dispatcher."""
    from reformer_kernels import _extension
    from reformer_kernels.ops.bucket_sort import triton_can_sort

    backends.implemented_ops()  # registers the Triton kernels, the layer's hash -> sort among them
    assert ("triton" in backends._registry["bucket_sort"]) == triton_can_sort()
    assert ("triton" in backends._registry["lsh_hash_sort"]) == triton_can_sort()
    monkeypatch.setattr(_extension, "with_cuda", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert not triton_can_sort()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert triton_can_sort() == _extension.loaded()
