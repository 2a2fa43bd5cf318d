"""What the training-side assets share: reading the index, loading the face model, a folder to work in.

Each turns a low-level error into a ``dg.Failure`` that says which asset to
materialise or what could not be read, so every asset fails the same way.
"""

import io
import math
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import dagster as dg

from capture_schema import derived_layout as layout
from capture_schema.storage import Storage
from pipelines.resources import FaceModelResource


def require(store: Storage, relpath: str, what: str, asset: str) -> None:
    """Fail naming the upstream ``asset`` to materialise when its output ``relpath`` is not in the store."""
    if not store.exists(relpath):
        raise dg.Failure(f"no {what} at {store.uri(relpath)}: materialise {asset} first")


def read_index(store: Storage):
    """The dataset index as a pyarrow table; fails naming ``dataset_index`` when it is not there."""
    import pyarrow.parquet as pq

    require(store, layout.INDEX, "dataset index", "dataset_index")
    return pq.read_table(io.BytesIO(store.read_bytes(layout.INDEX)))


def load_face_model(face_model: FaceModelResource):
    """The configured face model; a missing or broken model file fails the asset, naming the kind."""
    try:
        return face_model.load()
    except (OSError, ValueError) as exc:
        raise dg.Failure(f"face model {face_model.kind!r} could not be loaded: {exc}") from None


@contextmanager
def work_directory(store: Storage, relpath: str) -> Iterator[Path]:
    """The folder to work in: the output folder itself when local, else a temporary copy of it."""
    if store.is_local:
        path = store.local_path(relpath)
        path.mkdir(parents=True, exist_ok=True)
        yield path
    elif store.exists(relpath):
        with store.local_directory(relpath) as path:
            yield path
    else:
        with tempfile.TemporaryDirectory() as tmp:
            yield Path(tmp)


def finite(value: Any) -> Any:
    """JSON-safe: NaN/inf become null (``canonical_json`` refuses them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value
