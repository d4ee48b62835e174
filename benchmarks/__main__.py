"""``python -m benchmarks``: the same as ``reformer-kernels bench``."""
import sys

from .run import main

sys.exit(main())
