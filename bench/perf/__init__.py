"""Speed benchmarks runnable as scripts (python -m bench.perf.<name>)."""
