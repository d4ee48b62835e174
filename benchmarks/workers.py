"""Cases measured one per fresh process, so that a case's peak memory is its own: the parent runs
``python -m <suite module> --worker ...`` for each case and reads back the row that the worker
printed as its last JSON line; the worker measures a training step in its process.

On the CPU the peak is the peak resident set size that one step adds (Linux VmHWM, reset right
before the measured step), which sees every allocation, the C++ kernels' scratch and the optimizer's
state included, where torch's profiler would miss them; on the GPU it is the caching allocator's peak.
"""
from __future__ import annotations

import ctypes
import gc
import json
import os
import resource
import subprocess
import sys
from typing import Callable

import torch

from . import report
from .harness import ERROR, OK, Case, Prepared, blank_row, peak_memory_bytes, record_failure, record_times, time_ms

CPU = torch.device("cpu")
# The environment of a worker whose peak resident memory should follow the bytes alive at once:
# glibc's malloc keeps freed blocks resident; with this every block of 128 KiB or more is its own
# mapping, unmapped when freed.
LIVE_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def _resident_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_rss_bytes(fn) -> int:
    """Peak resident memory that one call of ``fn`` adds to this process, measured on a second
    call: the first one pays one-time costs (thread pools, BLAS buffers), and handing the freed
    heap and the CPU memory pool's cached blocks back to the system afterwards (malloc_trim,
    empty_cpu_memory_pool) keeps the second from reusing them unseen."""
    from reformer_kernels import _extension

    fn()
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    _extension.empty_cpu_memory_pool()
    before = _resident_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    fn()
    return (_resident_kib("VmHWM") - before) * 1024


def measure_step(case: Case, prepare: Callable[[], Prepared], device: torch.device, repeats: int, timed: bool = True) -> dict:
    """The row of ``case``, measured in this (fresh) process: the peak memory of the prepared
    training step after a first one (which builds the optimizer state) and, when ``timed``, the
    median of ``repeats`` further steps; a failure becomes the row's status."""
    row = blank_row(case)
    try:
        prepared = prepare()
        step = prepared.train_step
        peak = peak_memory_bytes(step, device) if device.type == "cuda" else peak_rss_bytes(step)
        row["peak_mem_mb"] = round(peak / 2**20, 1)
        if timed:
            # The two memory steps were the warm-up.
            record_times(row, "fwd_bwd", time_ms(step, device, warmup=0, repeats=repeats))
            row["tokens_per_s"] = round(case.tokens / (row["fwd_bwd_ms"] / 1e3), 1)
            if prepared.train_flops:
                row["tflops"] = round(prepared.train_flops / (row["fwd_bwd_ms"] / 1e3) / 1e12, 6)
        row["status"] = OK
    except Exception as error:  # a competitor's failure is a result, not a crash
        record_failure(row, error)
    return row


def run_in_fresh_process(module: str, worker_args: list[str], case: Case, env: dict[str, str] | None = None) -> dict:
    """The row that ``python -m <module> --worker <worker_args>`` prints as its last JSON line, run in
    a fresh process (with ``env`` added to the environment) so that its peak RSS is its own; a crash
    becomes an error row for ``case``."""
    done = subprocess.run([sys.executable, "-m", module, "--worker", *worker_args], capture_output=True, text=True,
                          cwd=report.ROOT, env={**os.environ, **(env or {})})
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        row = blank_row(case)
        row.update(status=ERROR, error=(done.stderr.strip().splitlines() or ["no output"])[-1][:300])
        return row
    return json.loads(lines[-1])


def per_case_environment(script: str) -> dict | None:
    """The environment header of a suite whose cases each run in a fresh process, or None (after
    saying why on stderr) where the peak RSS of a case cannot be measured."""
    if not os.path.exists("/proc/self/clear_refs"):
        print(f"{script}: needs Linux (/proc/self/clear_refs) to measure peak memory per case", file=sys.stderr)
        return None
    return dict(report.environment(CPU), threads=torch.get_num_threads(),
                parent_max_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
