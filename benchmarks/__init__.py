"""Benchmarks of nanobanana_async: run them all with ``python -m benchmarks [--quick]``."""
