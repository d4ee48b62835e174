"""Where results go: the environment header, CSV + JSON per suite, and summary.md with the tables."""
from __future__ import annotations

import csv
import datetime
import importlib.metadata
import json
import os
import platform
import re
import subprocess

import torch

from .harness import COLUMNS, CONFIG_COLUMNS, OK
from .suites import DEFAULT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where a run writes unless told otherwise: a folder git ignores, so that running the suite never
# modifies committed files.
OUT = os.path.join(ROOT, "bench-results")
# The committed reference results; written only by a run given this folder (or one under it) as --out.
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def version(package: str) -> str:
    """The installed version of ``package``, or "not installed"."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + ("+uncommitted changes" if dirty else "")


def environment(device: torch.device) -> dict:
    """What the numbers were measured on and with."""
    from reformer_kernels import backends
    from reformer_kernels._info import _cpu_name

    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "device": str(device),
        "cpu": _cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        # the widest vector ISA torch found ("AVX2", "AVX512", ...): one CPU name covers several generations
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "none",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "triton": version("triton"),
        "transformers": version("transformers"),
        "reformer_pytorch": version("reformer-pytorch"),
        "reformer_kernels_commit": _commit(),
        "backends": {name: ("yes: " if ok else "no: ") + reason for name, (ok, reason) in backends.status().items()},
        "kernels": backends.implemented_ops(),
    }


def device_dir_name(device: torch.device) -> str:
    """<results folder>/<this name>/: the GPU model on CUDA, else the CPU model."""
    from reformer_kernels._info import _cpu_name

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu {_cpu_name()}"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:80]


def default_out_dir(device: torch.device) -> str:
    """bench-results/<device name>/, the folder every script writes to without --out."""
    return os.path.join(OUT, device_dir_name(device))


def write_table(out_dir: str, name: str, columns: tuple[str, ...], rows: list[dict], shown: tuple[str, ...],
                header: list[str]) -> str:
    """<name>.csv of ``rows`` (all ``columns``) in ``out_dir``, and the ``shown`` columns printed as an
    aligned table under the ``header`` lines; returns the CSV's path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.csv")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in shown]
    print("\n" + "\n".join(header))
    print("  ".join(c.ljust(w) for c, w in zip(shown, widths)))
    for r in rows:
        print("  ".join(str(r[c]).ljust(w) for c, w in zip(shown, widths)))
    print(f"\nwrote {path}")
    return path


def write_suite(out_dir: str, suite: str, rows: list[dict], env: dict, columns: tuple[str, ...] = COLUMNS,
                rows_key: str = "rows") -> None:
    """<suite>.csv (the COLUMNS schema, or ``columns``) and <suite>.json (environment + rows under
    ``rows_key``: a table of other columns goes under another key, so that the summary, which reads
    "rows", leaves it out); rewritten whole, so a file always holds every row finished so far."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{suite}.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(out_dir, f"{suite}.json"), "w") as f:
        json.dump({"environment": env, rows_key: rows}, f, indent=1)


def load_suites(out_dir: str) -> dict[str, dict]:
    """Every <suite>.json in ``out_dir`` (earlier runs of other suites included)."""
    found = {}
    for name in sorted(os.listdir(out_dir)):
        if name.endswith(".json"):
            with open(os.path.join(out_dir, name)) as f:
                data = json.load(f)
            if isinstance(data, dict) and "rows" in data and "environment" in data:
                found[name[: -len(".json")]] = data
    # The default suites (the four questions of DESIGN.md) first, in their order; other suites after them.
    return dict(sorted(found.items(), key=lambda item: (DEFAULT.index(item[0]) if item[0] in DEFAULT else len(DEFAULT), item[0])))


def _cell(value) -> str:
    if value == "" or value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value).replace("|", "/")


METRIC_COLUMNS = ("fwd_ms", "fwd_bwd_ms", "peak_mem_mb", "tokens_per_s", "tflops", "speedup_vs_transformers", "accuracy", "status")


def _table(rows: list[dict]) -> list[str]:
    """Markdown table: the configuration columns that vary between rows, then the metrics measured."""
    varying = [c for c in CONFIG_COLUMNS if len({str(row[c]) for row in rows}) > 1]
    columns = ["op", "competitor", "backend", *varying, *(c for c in METRIC_COLUMNS if any(row[c] != "" for row in rows))]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[c]) for c in columns) + " |")
    return lines


def _constants(rows: list[dict]) -> str:
    same = [f"{c} {rows[0][c]}" for c in CONFIG_COLUMNS if rows[0][c] != "" and len({str(row[c]) for row in rows}) == 1]
    return ", ".join(same)


def headline(rows: list[dict]) -> list[dict]:
    """The successful rows at the largest length each op reached: the table to read first."""
    ok = [row for row in rows if row["status"] == OK]
    largest = {}
    for row in ok:
        largest[row["op"]] = max(largest.get(row["op"], 0), int(row["seq_len"]))
    return [row for row in ok if int(row["seq_len"]) == largest[row["op"]]]


def write_summary(out_dir: str) -> str:
    """summary.md: per suite, its environment line, a table of the successful rows, the rows that
    did not run (and why), and the plots."""
    suites = load_suites(out_dir)
    lines = ["# Reformer kernels benchmark results", ""]
    for suite, data in suites.items():
        env, rows = data["environment"], data["rows"]
        lines += [
            f"## {suite}",
            "",
            f"{env['date_utc']} UTC on {env['gpu'] if env['gpu'] != 'none' else env['cpu']} ({env['device']}, {env['cpu_threads']} CPU threads); "
            f"torch {env['torch']} (CUDA {env['cuda']}), triton {env['triton']}, transformers {env['transformers']}, "
            f"reformer-pytorch {env['reformer_pytorch']}; reformer_kernels {env['reformer_kernels_commit']}.",
            "",
            "Times: median ms over at least 5 calls after warm-up (min/max in the CSV); fwd_bwd is forward + "
            "backward (a training step with the optimizer for models). Memory: peak MiB allocated above the "
            "inputs. TFLOP/s: benchmarks/flops.py. Speed-up: transformers' time over the row's.",
            "",
        ]
        ok = [row for row in rows if row["status"] == OK]
        if ok:
            top = headline(ok)
            lines += [f"Largest length per op ({_constants(top)}):", ""] + _table(top) + [""]
            if len(top) < len(ok):
                lines += [f"All rows ({_constants(ok)}):", ""] + _table(ok) + [""]
        others = [row for row in rows if row["status"] != OK]
        if others:
            lines += ["Rows that did not run:", ""]
            seen = set()
            for row in others:
                key = (row["op"], row["competitor"], row["backend"], row["status"], row["error"])
                if key not in seen:
                    seen.add(key)
                    lines.append(f"- {row['op']} {row['competitor']}:{row['backend']}: {row['status']}: {row['error']}")
            lines.append("")
        for name in sorted(os.listdir(out_dir)):
            if name.startswith(f"{suite}_") and name.endswith(".png"):
                lines += [f"![{name}]({name})", ""]
    path = os.path.join(out_dir, "summary.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path
