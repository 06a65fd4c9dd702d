"""ratebudget's benchmark suite: ratebudget and its peers, side by side.

Run ``python -m benchmarks`` (the full run, a few minutes; it rewrites
``docs/benchmarks.md`` and its charts) or ``python -m benchmarks --quick``
(a smoke run under a minute, written to a temporary directory).
"""
