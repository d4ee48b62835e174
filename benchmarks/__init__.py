"""The Reformer benchmark suite: one module per question (DESIGN.md "Benchmarks"), registered in
``benchmarks.suites`` and run through one entry point, ``python -m benchmarks`` (``benchmarks.run``)."""
