"""Benchmarks: the selector benchmark (``bench build`` / ``bench select``) and image benchmarks."""
