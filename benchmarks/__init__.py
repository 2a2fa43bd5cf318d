"""Benchmarks, run as modules from the project root: ``python -m benchmarks.<name>``.

Each prints ratios against a baseline measured in the same run (never absolute
wall time alone); ``benchmarks.common`` holds the helpers they share.
"""
