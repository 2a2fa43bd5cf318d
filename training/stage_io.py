"""What every training-side stage shares: one error type and reading what an upstream stage wrote.

Stage functions (``training.prior.stage``, ``training.fewshot.stage``, ``training.ablation.run``)
run from Dagster assets, the ``o2a`` CLI or plain Python. They raise ``StageError`` with a
message that says what to do (which step to run first, which setting is wrong); an asset
turns it into a ``dg.Failure`` with the same text, the CLI into exit code 1.
"""

from __future__ import annotations

import io
import math
from typing import Any

import pyarrow as pa

from capture_schema import derived_layout as layout
from capture_schema.storage import Storage


class StageError(ValueError):
    """A stage cannot run on what the store holds, or with the settings given."""


def require(store: Storage, relpath: str, what: str, step: str) -> None:
    """Fail naming the upstream ``step`` to run when its output ``relpath`` is not in the store."""
    if not store.exists(relpath):
        raise StageError(f"no {what} at {store.uri(relpath)}: materialise {step} first")


def read_index(store: Storage) -> pa.Table:
    """The dataset index; fails naming ``dataset_index`` when it is not there."""
    import pyarrow.parquet as pq

    require(store, layout.INDEX, "dataset index", "dataset_index")
    return pq.read_table(io.BytesIO(store.read_bytes(layout.INDEX)))


def finite(value: Any) -> Any:
    """JSON-safe: NaN/inf become null (``canonical_json`` refuses them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value
