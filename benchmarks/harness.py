"""The measuring half of the suite: cases, timing, peak memory, and the rows they become.

A case is one competitor on one input configuration. Building it may fail (a peer not installed,
a backend without a kernel for the op, an error inside the peer); every failure becomes a row that
says what happened, and the suite goes on with the next case. Timings are medians of at least
five calls after warm-up; memory is measured first, in the second of two extra calls.
"""
from __future__ import annotations

import gc
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

# The CSV schema: one row per (suite, op, competitor, backend, configuration).
COLUMNS = (
    "suite", "op", "competitor", "backend", "dtype", "batch", "heads", "head_dim", "seq_len",
    "n_hashes", "chunk_len", "causal", "layers",
    "fwd_ms", "fwd_ms_min", "fwd_ms_max", "fwd_bwd_ms", "fwd_bwd_ms_min", "fwd_bwd_ms_max",
    "peak_mem_mb", "tokens_per_s", "tflops", "speedup_vs_transformers", "accuracy", "status", "error",
)
CONFIG_COLUMNS = ("dtype", "batch", "heads", "head_dim", "seq_len", "n_hashes", "chunk_len", "causal", "layers")

# Row status values.
OK, ERROR, OOM, NOT_AVAILABLE, MISSING, SKIPPED = "ok", "error", "oom", "not available", "missing", "skipped"

# The peer every speed-up is measured against.
BASELINE = "transformers"


class NotAvailable(Exception):
    """Ours cannot run this case yet (no kernel for the op on this backend, module not written yet)."""


class MissingPeer(Exception):
    """A competitor from another package is not installed (the bench extras)."""


@dataclass
class Prepared:
    """What a built case runs: ``forward`` (timed under no_grad) and, when the case trains,
    ``train_step`` (forward + backward, plus the optimizer step for models)."""

    forward: Callable[[], object] | None = None
    train_step: Callable[[], object] | None = None
    # Useful work per call, from the formulas in benchmarks/flops.py; None where not counted.
    fwd_flops: float | None = None
    train_flops: float | None = None
    # Quality cases report a metric instead of (or besides) timings.
    accuracy: float | None = None


@dataclass
class Case:
    suite: str
    op: str
    competitor: str
    backend: str
    config: dict
    build: Callable[[], Prepared]
    tokens: int = 0  # tokens processed per call, for tokens/s
    timed: bool = True


@dataclass
class Settings:
    device: torch.device
    warmup: int = 1
    repeats: int = 5
    # Fast calls are repeated until their times add up to this much (see time_ms).
    min_total_s: float = 0.0
    # A series (same case, growing seq_len) stops once one call takes longer than this.
    max_call_s: float = 5.0


@dataclass
class Series:
    """Why the rest of a series (same case, growing seq_len) is skipped, once it is."""

    reason: str | None = None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int, min_total_s: float = 0.0) -> list[float]:
    """Wall-clock milliseconds of calls of ``fn`` after ``warmup`` untimed ones: at least
    ``repeats`` calls, more (up to 20x) while they add up to less than ``min_total_s``, so that
    the median of a fast op is not one scheduler hiccup."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    while len(times) < repeats or (sum(times) < min_total_s * 1e3 and len(times) < 20 * repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return times


_SECOND_CALL = "peak_memory_bytes: measured call"


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated by torch during the second of two calls of ``fn`` (the first one pays
    one-time costs: an optimizer's state, caches), above what was allocated when it started.

    CUDA: the caching allocator's max_memory_allocated. CPU: torch's CPU allocator has no peak
    counter, so both calls run under the profiler with memory events on and the peak is the
    largest running sum of the second call's allocations and frees (scratch memory a C++ kernel
    takes from malloc instead of torch is not seen). The profiler starts before the first call,
    with the garbage collected, so that everything the second call frees was allocated under it:
    freeing an older block would make the profiler warn ("Memory block of unknown size") and
    leave that free out of the sum.
    """
    if device.type == "cuda":
        fn()
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    # Kineto logs its collection stages ("USDT ... profiler_start"/"profiler_stop") and, in a CUDA
    # build on a machine without a driver, "gpuGetDeviceCount failed" while it reads the GPUs'
    # properties for a trace we do not write; level 6 is above its highest (USDT = 5). Read once,
    # when the first profiler starts.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    gc.collect()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
        with torch.profiler.record_function(_SECOND_CALL):
            fn()
    events = prof.profiler.kineto_results.events()
    second_call_ns = next(event.start_ns() for event in events if event.name() == _SECOND_CALL)
    memory = sorted(
        (event.start_ns(), event.nbytes())
        for event in events
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
        and event.start_ns() >= second_call_ns
    )
    current = peak = 0
    for _, nbytes in memory:
        current += nbytes
        peak = max(peak, current)
    return peak


def _is_oom(error: Exception) -> bool:
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(error).lower()


def _describe(error: Exception) -> str:
    text = f"{type(error).__name__}: {error}".replace("\n", " ")
    return text if len(text) <= 300 else text[:297] + "..."


def blank_row(case: Case) -> dict:
    row = {column: "" for column in COLUMNS}
    row.update(suite=case.suite, op=case.op, competitor=case.competitor, backend=case.backend)
    for column in CONFIG_COLUMNS:
        value = case.config.get(column, "")
        row[column] = str(value).replace("torch.", "") if isinstance(value, torch.dtype) else value
    return row


def record_failure(row: dict, error: Exception) -> None:
    """What a failed case's row says: "not available" (ours has no kernel for it yet), "missing" (a
    peer not installed), "oom", else "error", and the error's message."""
    if isinstance(error, NotAvailable):
        row.update(status=NOT_AVAILABLE, error=str(error))
    elif isinstance(error, MissingPeer):
        row.update(status=MISSING, error=str(error))
    else:
        row.update(status=OOM if _is_oom(error) else ERROR, error=_describe(error))


def record_times(row: dict, prefix: str, times: list[float]) -> None:
    """The median, min and max of ``times`` (ms) into the row's ``<prefix>_ms`` columns."""
    row[f"{prefix}_ms"] = round(statistics.median(times), 4)
    row[f"{prefix}_ms_min"] = round(min(times), 4)
    row[f"{prefix}_ms_max"] = round(max(times), 4)


def measure(case: Case, settings: Settings) -> dict:
    """Run one case and return its row; a failure becomes the row's status and error (Ctrl-C still stops)."""
    row = blank_row(case)
    try:
        prepared = case.build()
        if case.timed:
            def forward():
                with torch.no_grad():
                    return prepared.forward()

            # First, while nothing but the case's own tensors exists (see peak_memory_bytes).
            row["peak_mem_mb"] = round(peak_memory_bytes(prepared.train_step or forward, settings.device) / 2**20, 3)
            record_times(row, "fwd", time_ms(forward, settings.device, settings.warmup, settings.repeats, settings.min_total_s))
            seconds = row["fwd_ms"] / 1e3
            flops = prepared.fwd_flops
            if prepared.train_step is not None:
                record_times(row, "fwd_bwd", time_ms(prepared.train_step, settings.device, settings.warmup, settings.repeats, settings.min_total_s))
                seconds = row["fwd_bwd_ms"] / 1e3
                flops = prepared.train_flops
            if case.tokens and seconds > 0:
                row["tokens_per_s"] = round(case.tokens / seconds, 1)
            if flops and seconds > 0:
                row["tflops"] = round(flops / seconds / 1e12, 6)
        if prepared.accuracy is not None:
            row["accuracy"] = round(prepared.accuracy, 4)
        row["status"] = OK
    except Exception as error:  # a competitor's failure is a result, not a crash
        record_failure(row, error)
    finally:
        if settings.device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def series_key(case: Case) -> tuple:
    config = tuple(sorted((k, str(v)) for k, v in case.config.items() if k != "seq_len"))
    return case.suite, case.op, case.competitor, case.backend, config


def run_cases(
    cases: Iterable[Case],
    settings: Settings,
    on_row: Callable[[dict], None],
    progress: bool = True,
) -> list[dict]:
    """Measure ``cases`` in order, handing each finished row to ``on_row``.

    Within a series (same case at growing seq_len), lengths after an out-of-memory or after a call
    slower than ``settings.max_call_s`` are recorded as skipped. Ctrl-C stops the run; the rows
    finished so far have been handed over already and are returned.
    """
    from tqdm.auto import tqdm

    cases = list(cases)
    rows: list[dict] = []
    series: dict[tuple, Series] = {}
    bar = tqdm(cases, desc="bench", unit="case", disable=not progress, dynamic_ncols=True)
    for case in bar:
        bar.set_postfix_str(f"{case.op} {case.competitor}:{case.backend} L={case.config.get('seq_len', '')}", refresh=False)
        state = series.setdefault(series_key(case), Series())
        if state.reason is not None:
            row = blank_row(case)
            row.update(status=SKIPPED, error=state.reason)
        else:
            row = measure(case, settings)
            length = case.config.get("seq_len", "")
            if row["status"] == OOM:
                state.reason = f"out of memory at seq_len {length}"
            else:
                slowest = max((row[c] for c in ("fwd_ms", "fwd_bwd_ms") if row[c] != ""), default=0.0)
                if slowest / 1e3 > settings.max_call_s:
                    state.reason = f"{slowest / 1e3:.1f} s per call at seq_len {length} (budget {settings.max_call_s:g} s)"
        rows.append(row)
        on_row(row)
    bar.close()
    return rows


def add_speedups(rows: list[dict]) -> None:
    """Fill speedup_vs_transformers: the transformers row's time over this row's time, for rows of
    the same suite, op and configuration (fwd+bwd time where both have it, else forward)."""
    def key(row):
        return (row["suite"], row["op"]) + tuple(str(row[c]) for c in CONFIG_COLUMNS)

    baselines = {key(row): row for row in rows if row["competitor"] == BASELINE and row["status"] == OK}
    for row in rows:
        base = baselines.get(key(row))
        if base is None or row["status"] != OK:
            continue
        for column in ("fwd_bwd_ms", "fwd_ms"):
            if row[column] != "" and base[column] != "" and row[column] > 0:
                row["speedup_vs_transformers"] = round(base[column] / row[column], 3)
                break
