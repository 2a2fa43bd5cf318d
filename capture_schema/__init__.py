"""The data contract: capture layout, ids, camera conventions, table schemas, validation codes.

This package depends on nothing above it (no fitting, training or Dagster imports).
"""
