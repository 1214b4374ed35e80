"""Benchmarks: scripts that print tables; run them as modules (``python -m benchmarks.<name>``)."""
