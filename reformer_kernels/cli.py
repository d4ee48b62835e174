"""The `reformer-kernels` command."""
from __future__ import annotations

import argparse
import importlib
import os
import sys


def _benchmarks_run():
    """benchmarks.run from the source checkout: the suite lives next to the package, not inside it
    (an editable install or a run from the repository root finds it)."""
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isfile(os.path.join(checkout, "benchmarks", "run.py")) and checkout not in sys.path:
        sys.path.insert(0, checkout)
    try:
        return importlib.import_module("benchmarks.run")
    except ImportError as error:
        raise SystemExit(
            f"reformer-kernels bench: the benchmarks/ folder was not found ({error}); "
            "run it from a source checkout (pip install -e '.[bench]')"
        ) from error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="reformer-kernels", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions, devices, backends and the ops each implements")
    bench = commands.add_parser("bench", help="benchmark ops and models against transformers, reformer-pytorch and SDPA")
    argv = sys.argv[1:] if argv is None else argv
    # The suite's options come from benchmarks/, which only a source checkout has: load it only
    # when asked for, so that `info` works everywhere.
    if argv[:1] == ["bench"]:
        _benchmarks_run().add_arguments(bench)
    args = parser.parse_args(argv)
    if args.command == "info":
        from . import info

        print(info())
    elif args.command == "bench":
        return _benchmarks_run().run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
