"""Dagster definitions (assets, checks, sensors, resources) and the o2a CLI."""
