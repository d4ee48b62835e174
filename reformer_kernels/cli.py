"""The `reformer-kernels` command."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="reformer-kernels", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions, devices, backends and the ops each implements")
    args = parser.parse_args(argv)
    if args.command == "info":
        from . import info

        print(info())
    return 0


if __name__ == "__main__":
    sys.exit(main())
