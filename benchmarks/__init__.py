"""The Reformer benchmark suite: one script per question (DESIGN.md "Benchmarks"), one entry point
(``benchmarks.run``, reached as ``reformer-kernels bench`` or ``python -m benchmarks``)."""
