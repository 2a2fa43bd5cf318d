"""Dense per-session arrays (landmarks, 3DMM fits) as zarr v3 groups, written atomically.

One helper so every store in the project is written the same way: the group is
built in a temporary directory and renamed into place (a reader never sees half
a store), the leading axis (frames/expressions) is the chunk axis, compression
is fixed, and nothing time-dependent goes into the metadata, so the same arrays
give byte-identical stores. String arrays are stored as attributes (lists), not
as zarr arrays, because zarr's variable-length strings are not yet stable in v3.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from capture_schema.atomic import atomic_directory
from capture_schema.derived_layout import ZARR_METADATA_FILE


def write_array_group(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray],
                      attrs: Mapping[str, Any]) -> Path:
    """Write ``arrays`` (numeric or bool) and JSON-able ``attrs`` as a zarr v3 group at ``path``."""
    import zarr

    path = Path(path)
    with atomic_directory(path) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        group.attrs.update(dict(attrs))
        for name in sorted(arrays):
            data = np.ascontiguousarray(arrays[name])
            if data.dtype.kind not in "biuf":
                raise TypeError(f"array {name!r} has dtype {data.dtype}: store strings as attributes")
            chunks = (1,) + data.shape[1:] if data.ndim > 1 else data.shape or (1,)
            arr = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks,
                                     fill_value=np.nan if data.dtype.kind == "f" else 0)
            arr[...] = data
    return path


def read_array_group(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """All arrays and the attributes of a group written by ``write_array_group``."""
    import zarr

    path = Path(path)
    if not (path / ZARR_METADATA_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a zarr v3 group (no {ZARR_METADATA_FILE})")
    group = zarr.open_group(str(path), mode="r", zarr_format=3)
    arrays = {name: np.asarray(arr[...]) for name, arr in group.arrays()}
    return arrays, dict(group.attrs)
