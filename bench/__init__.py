"""Benchmarks: `make bench` runs bench.run (model section, then serving when present)."""
