"""mmprune's benchmark suite (``make bench``, :mod:`benchmarks.run`).

A package only so the suite's modules can import each other
(``benchmarks.quality``, ``benchmarks.report``, ...); nothing in
``mmprune`` imports it.
"""
