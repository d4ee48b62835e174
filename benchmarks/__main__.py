"""``python -m benchmarks``: the suite's one entry point (benchmarks/run.py)."""
import sys

from .run import main

sys.exit(main())
