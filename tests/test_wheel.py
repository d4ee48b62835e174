"""The wheel: `pip wheel --no-build-isolation .`, installed (not editable) into a clean venv, imports
with the compiled CPU kernels loaded and says clearly that `bench` needs a source checkout.

Slow (a few minutes: the wheel compiles the extension, the venv installs torch from the package
index pip is configured with). The CPU part only (REFORMER_KERNELS_CUDA=0), for speed: the CUDA part's
build is tested by tests/test_build.py and tests/ops/test_triton_compile.py.
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(command, cwd, env=None):
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_wheel_installs_into_a_clean_venv(tmp_path):
    env = dict(os.environ, REFORMER_KERNELS_CUDA="0")
    build = run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w", str(tmp_path), ROOT], ROOT, env)
    assert "license" not in build.stderr.lower(), build.stderr  # setuptools warned about the TOML-table license
    (wheel,) = [name for name in os.listdir(tmp_path) if name.endswith(".whl")]

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    python = str(venv / "bin" / "python")
    run([python, "-m", "pip", "install", "--quiet", str(tmp_path / wheel)], tmp_path)

    # from tmp_path, so neither the checkout nor an editable install can be what is imported
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = run([python, "-c", "import reformer_kernels, reformer_kernels._C as c; print(reformer_kernels.__file__); print(c.__file__)"],
                tmp_path, clean).stdout.split()
    assert all(path.startswith(str(venv)) for path in where), where
    info = run([str(venv / "bin" / "reformer-kernels"), "info"], tmp_path, clean).stdout
    assert "extension _C: loaded" in info, info
    assert "cpu       yes" in info, info

    bench = subprocess.run([str(venv / "bin" / "reformer-kernels"), "bench"], cwd=tmp_path, env=clean, capture_output=True, text=True)
    assert bench.returncode != 0 and "source checkout" in bench.stderr, bench.stderr
