"""Benchmarks and harnesses (never timed assertions in tests)."""
