"""Helpers shared by the benchmarks: timing, percentiles, a cache folder."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


def best_of(repeat: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """The fastest of ``repeat`` runs of ``fn`` in seconds, and the last run's result."""
    best, out = float("inf"), None
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def pct(values, q: float) -> float:
    """The ``q``-th percentile of the finite values (NaN when there are none)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(np.percentile(values, q)) if values.size else float("nan")


def summary(values) -> str:
    """One line: count, median, p95, p99, max and min of the finite values."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not values.size:
        return "n=0"
    return (f"n={values.size:4d} median {np.median(values):5.2f}  p95 {pct(values, 95):5.2f}  "
            f"p99 {pct(values, 99):5.2f}  max {values.max():5.2f}  min {values.min():5.2f}")


def work_directory(work_dir: Path | None) -> tuple[Path, "tempfile.TemporaryDirectory | None"]:
    """The folder simulated sessions are cached in: ``work_dir`` (kept), or a temporary one to clean up."""
    if work_dir is None:
        tmp = tempfile.TemporaryDirectory()
        return Path(tmp.name), tmp
    work_dir.mkdir(parents=True, exist_ok=True)
    return work_dir, None
