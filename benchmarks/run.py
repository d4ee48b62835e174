"""The one entry point: ``python -m benchmarks`` (``reformer-kernels bench`` runs it in the checkout).

    python -m benchmarks [--suite NAME ...] [--size tiny|small|full] [--device cpu|cuda] [--out DIR]
                         [--threads N] [--no-progress]
    python -m benchmarks --suite NAME [that suite's own options]
    python -m benchmarks --list

Without --suite: the default suites of benchmarks/suites.py (ops, model, scaling, quality), on the
GPU at "full" size when there is one, else on the CPU at "small" size (a few minutes on 2 cores).
Results land in ``bench-results/<device-name>/`` (ignored by git; ``--out DIR`` elsewhere, e.g.
``benchmarks/results/<device-name>`` to replace the committed ones): <suite>.csv, <suite>.json, PNG
plots and summary.md. Ctrl-C stops the run and keeps the rows finished so far (files, plots and
summary are written either way). A script suite (``--list`` says which) gets every argument besides
--suite: ``python -m benchmarks --suite cpu_attention --size full --repeats 5``.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import torch

from . import report, suites
from .harness import Settings, add_speedups, run_cases
from .plots import plot_suite
from .sizes import SIZES

SETTINGS = {"tiny": dict(warmup=1, repeats=5, max_call_s=2.0),
            "small": dict(warmup=1, repeats=5, min_total_s=0.2, max_call_s=5.0),
            "full": dict(warmup=3, repeats=10, min_total_s=1.0, max_call_s=30.0)}


def _selection() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--suite", action="append", choices=suites.SUITES, metavar="NAME",
                   help=f"a suite to run, repeatable (default: {' '.join(suites.DEFAULT)}); --list names them all")
    p.add_argument("--list", action="store_true", help="print the registered suites, one line each, and exit")
    return p


def parser() -> argparse.ArgumentParser:
    """The options of the cases suites, which run together; a script suite parses its own."""
    p = argparse.ArgumentParser(prog="python -m benchmarks", parents=[_selection()], allow_abbrev=False,
                                description="Benchmark the Reformer ops and models against their peers.")
    p.add_argument("--size", choices=SIZES, default=None, help="problem sizes (default: full on a GPU, small on a CPU; tiny checks the harness)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    p.add_argument("--out", default=None, help="output folder (default: bench-results/<device-name>/, untracked)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice); 1 gives steadier numbers on a busy machine")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen, rest = _selection().parse_known_args(argv)
    if chosen.list:
        for suite in suites.SUITES.values():
            print(f"{suite.name:<14} {suite.kind:<7} {suite.description}{' (default)' if suite.default else ''}")
        return 0
    names = list(dict.fromkeys(chosen.suite or suites.DEFAULT))
    together = [name for name in names if suites.SUITES[name].kind == suites.CASES]
    code = run_cases_suites(together, parser().parse_args(rest)) if together else 0
    for name in names:
        if code == 0 and suites.SUITES[name].kind == suites.SCRIPT:
            code = suites.SUITES[name].load().main(rest) or 0
    return code


def run_cases_suites(names: list[str], args: argparse.Namespace) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench: --device cuda but torch.cuda.is_available() is False; use --device cpu", file=sys.stderr)
        return 2
    if args.threads is not None:
        if args.threads < 1:
            print(f"bench: --threads {args.threads} must be >= 1", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    size = args.size or ("full" if device.type == "cuda" else "small")
    out_dir = args.out or report.default_out_dir(device)
    settings = Settings(device=device, **SETTINGS[size])
    env = report.environment(device)
    print(f"reformer_kernels bench: size {size} on {env['gpu'] if device.type == 'cuda' else env['cpu']}; "
          f"torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, commit {env['reformer_kernels_commit']}")
    print(f"results -> {out_dir}")
    with warnings.catch_warnings():
        # Peers warn on every call (deprecations, fallbacks): noise around a table whose rows say
        # which backend ran.
        warnings.simplefilter("ignore")
        interrupted = _run_suites(names, size, device, settings, out_dir, env, progress=not args.no_progress)
    if os.path.isdir(out_dir):
        summary = report.write_summary(out_dir)
        with open(summary) as f:
            print(f.read())
        print(f"summary -> {summary}")
    return 130 if interrupted else 0


def _run_suites(names: list[str], size: str, device: torch.device, settings: Settings, out_dir: str, env: dict, progress: bool) -> bool:
    """Run the suites, writing each row as it finishes; True when Ctrl-C stopped the run."""
    for suite in names:
        rows: list[dict] = []

        def keep(row: dict, rows=rows, suite=suite) -> None:
            rows.append(row)
            add_speedups(rows)
            report.write_suite(out_dir, suite, rows, env)

        try:
            run_cases(suites.SUITES[suite].load().cases(size, device), settings, keep, progress=progress)
        except KeyboardInterrupt:
            print(f"\ninterrupted: keeping the {len(rows)} finished rows of {suite}", file=sys.stderr)
            plot_suite(rows, suite, out_dir)
            return True
        plot_suite(rows, suite, out_dir)
    return False
