"""A session's landmarks as a zarr v3 store: written atomically, byte-identical on rewrite.

Layout (one group)::

    landmarks   (E, C, 478, 2) float32, NaN where no face
    detected    (E, C) bool
    confidence  (E, C) float32
    mirror_nme  (E, C) float32, NaN where not computed
    image_size  (E, C, 2) int32 (width, height)

(one chunk per expression, written by ``capture_schema.array_store``).

The group attributes name the session, the grid order, the pixel convention and
the detector. The store is built in a temporary sibling folder and renamed into
place, so a reader never sees a half-written store. No timestamps are stored and
the chunking and (zstd) compressor are fixed, so rewriting unchanged landmarks
gives the same bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

from capture_schema.array_store import read_array_group, write_array_group
from capture_schema.derived_layout import ZARR_METADATA_FILE
from fitting.landmarks.detect import N_LANDMARKS, SessionLandmarks

FORMAT = "o2a.landmarks/1"
PIXEL_CONVENTION = "opencv: x right, y down, pixel centre at integer coordinates"
_ARRAYS = ("landmarks", "detected", "confidence", "mirror_nme", "image_size")


class LandmarkStoreError(ValueError):
    """A path that is not a readable landmark store written by ``write_landmarks_zarr``."""


def write_landmarks_zarr(landmarks: SessionLandmarks, path: str | os.PathLike[str]) -> None:
    """Write (or atomically replace) the store at ``path``."""
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
    write_array_group(path, {name: getattr(landmarks, name) for name in _ARRAYS}, attributes)


def read_landmarks_zarr(path: str | os.PathLike[str]) -> SessionLandmarks:
    """Read a store written by ``write_landmarks_zarr``."""
    path = Path(path)
    if not (path / ZARR_METADATA_FILE).is_file():
        raise LandmarkStoreError(f"{path}: no landmark store here ({ZARR_METADATA_FILE} missing); "
                                 "run landmark detection first")
    try:
        arrays, attrs = read_array_group(path)
        if attrs.get("format") != FORMAT:
            raise LandmarkStoreError(f"{path}: not a landmark store (format {attrs.get('format')!r}, expected {FORMAT!r})")
        return SessionLandmarks(attrs["session_id"], tuple(attrs["expressions"]), tuple(attrs["cameras"]),
                                mirror=bool(attrs["mirror"]), detector=str(attrs["detector"]),
                                **{name: arrays[name] for name in _ARRAYS})
    except LandmarkStoreError:
        raise
    except (KeyError, ValueError, TypeError, OSError) as exc:
        raise LandmarkStoreError(f"{path}: landmark store is incomplete or damaged ({exc}); delete it and rerun "
                                 "landmark detection") from exc
