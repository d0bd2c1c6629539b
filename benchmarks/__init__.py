"""Benchmarks: scripts that print figures, not pass/fail (docs/benchmarks.md)."""
