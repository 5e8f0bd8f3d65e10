"""The benchmark suite of asyncjobs: ``python -m benchmarks --help``."""
