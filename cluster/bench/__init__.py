"""Benchmark and experiment harnesses behind the thin CLIs in `jobs/`."""
