"""A session's landmarks as a zarr v3 store: written atomically, byte-identical on rewrite.

Layout (one group)::

    landmarks   (E, C, 478, 2) float32, NaN where no face   one chunk per expression
    detected    (E, C) bool                                 one chunk
    confidence  (E, C) float32                              one chunk
    mirror_nme  (E, C) float32, NaN where not computed      one chunk
    image_size  (E, C, 2) int32 (width, height)             one chunk

The group attributes name the session, the grid order, the pixel convention and
the detector. The store is built in a temporary sibling folder and renamed into
place, so a reader never sees a half-written store. No timestamps are stored and
the chunking and (zstd) compressor are fixed, so rewriting unchanged landmarks
gives the same bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from capture_schema.atomic import atomic_directory
from fitting.landmarks import N_LANDMARKS, SessionLandmarks

FORMAT = "o2a.landmarks/1"
PIXEL_CONVENTION = "opencv: x right, y down, pixel centre at integer coordinates"
_ARRAYS = ("landmarks", "detected", "confidence", "mirror_nme", "image_size")


class LandmarkStoreError(ValueError):
    """A path that is not a readable landmark store written by ``write_landmarks_zarr``."""


def write_landmarks_zarr(landmarks: SessionLandmarks, path: str | os.PathLike[str]) -> None:
    """Write (or atomically replace) the store at ``path``."""
    import zarr

    n_expr, n_cam = len(landmarks.expressions), len(landmarks.cameras)
    attributes = {
        "format": FORMAT,
        "session_id": landmarks.session_id,
        "expressions": list(landmarks.expressions),
        "cameras": list(landmarks.cameras),
        "n_landmarks": N_LANDMARKS,
        "pixel_convention": PIXEL_CONVENTION,
        "detector": landmarks.detector,
        "mirror": bool(landmarks.mirror),
    }
    chunks = {"landmarks": (1, n_cam, N_LANDMARKS, 2), "detected": (n_expr, n_cam), "confidence": (n_expr, n_cam),
              "mirror_nme": (n_expr, n_cam), "image_size": (n_expr, n_cam, 2)}
    fill = {"landmarks": np.nan, "detected": False, "confidence": 0.0, "mirror_nme": np.nan, "image_size": 0}
    with atomic_directory(path) as tmp:
        group = zarr.create_group(store=str(tmp), zarr_format=3, attributes=attributes, overwrite=True)
        for name in _ARRAYS:
            data = getattr(landmarks, name)
            array = group.create_array(name, shape=data.shape, chunks=chunks[name], dtype=data.dtype,
                                       fill_value=fill[name], write_data=True)
            array[...] = data


def read_landmarks_zarr(path: str | os.PathLike[str]) -> SessionLandmarks:
    """Read a store written by ``write_landmarks_zarr``."""
    import zarr

    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise LandmarkStoreError(f"{path}: no landmark store here (zarr.json missing); run landmark detection first")
    try:
        group = zarr.open_group(store=str(path), mode="r", zarr_format=3)
        attrs = dict(group.attrs)
        if attrs.get("format") != FORMAT:
            raise LandmarkStoreError(f"{path}: not a landmark store (format {attrs.get('format')!r}, expected {FORMAT!r})")
        arrays = {name: group[name][...] for name in _ARRAYS}
        return SessionLandmarks(attrs["session_id"], tuple(attrs["expressions"]), tuple(attrs["cameras"]),
                                mirror=bool(attrs["mirror"]), detector=str(attrs["detector"]), **arrays)
    except LandmarkStoreError:
        raise
    except (KeyError, ValueError, TypeError, OSError) as exc:
        raise LandmarkStoreError(f"{path}: landmark store is incomplete or damaged ({exc}); delete it and rerun "
                                 "landmark detection") from exc
