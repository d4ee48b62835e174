# One entry point for a fresh machine. `make bench` runs the benchmark suite (the main job),
# `make test` runs the tests; both create .venv and build the extension first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_VERSION := 2.14.1

.PHONY: setup build test test-slow bench info gpu-check clean

$(VENV)/.installed: pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	# The CUDA 13.0 build of torch: it runs on CPU too, and lets CI compile the CUDA kernels.
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION) ninja pybind11 numpy
	$(PY) -m pip install --quiet --no-build-isolation -e '.[test,bench]'
	touch $@

setup: $(VENV)/.installed

# Incremental rebuild of reformer_kernels._C (ninja recompiles only what changed).
build: setup
	$(PY) setup.py --quiet build_ext --inplace

test: build
	$(PY) -m pytest -q
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m "triton_interpret and not slow" tests/ops

test-slow: build
	$(PY) -m pytest -q -m slow
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m "slow and triton_interpret" tests/ops

# Results go to bench-results/<device>/ (git-ignored); BENCH_ARGS="--out benchmarks/results/<device>"
# rewrites the committed reference results instead.
bench: build
	$(PY) -m benchmarks $(BENCH_ARGS)

# On a GPU machine that has torch, triton and the test dependencies but no network (no .venv, nothing
# fetched): build in place, run every GPU test and the benchmark suite, logs and results in $(OUT).
gpu-check:
	bash .ci/gpu-check

info: build
	$(VENV)/bin/reformer-kernels info

clean:
	rm -rf build reformer_kernels/_C*.so reformer_kernels/_build_info.py
