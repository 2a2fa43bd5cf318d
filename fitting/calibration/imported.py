"""A session whose ``calibration`` is a calibration .json file made elsewhere (``o2a import-calibration``).

Such a session has no board captures to calibrate: its cameras are read from the file,
restricted to and ordered as the session lists them, and published under the storage
root exactly like a board calibration (``calibration.json``, ``colmap/``,
``transforms.json``, ``calibration_report.json``), so every later step is unchanged.
The key hashes the file's parsed content (not its formatting or where it lives) and the
camera order: sessions naming the same file, or copies of it, share one result.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

from capture_schema import derived_layout as layout
from capture_schema.atomic import atomic_directory, atomic_write_bytes, atomic_write_json, canonical_json
from capture_schema.calibration_file import Calibration, read_calibration, write_calibration
from capture_schema.calibration_import import SOURCE_PREFIX, select_cameras
from capture_schema.converters import write_colmap_model, write_transforms
from fitting.calibration.calibrate import check_colmap_written
from fitting.rig_picture import stand_in_picture

#: ``source`` given to a calibration.json that says nothing about its origin (e.g. ``o2a calibrate --out``).
CALIBRATION_JSON_SOURCE = f"{SOURCE_PREFIX}calibration_json"
_KEY_SALT = "o2a-imported-calibration-v1"


def imported_calibration_key(calibration: Calibration, cameras: Sequence[str]) -> str:
    """The shared result's key: the file's content plus the camera order (the same length as a board key)."""
    content = hashlib.sha256(canonical_json(calibration.to_dict()).encode()).hexdigest()
    return hashlib.sha256(f"{_KEY_SALT}\n{content}\n{','.join(cameras)}".encode()).hexdigest()[:16]


def load_imported_calibration(path: str | os.PathLike[str], cameras: Sequence[str]) -> tuple[str, Calibration]:
    """``(key, calibration)``: the file's cameras in the session's order, marked with where they came from.

    Raises ``ValueError`` (``JsonFileError`` for an unreadable file,
    ``CameraNotInCalibrationError`` naming a camera the file lacks).
    """
    whole = read_calibration(path)
    key = imported_calibration_key(whole, cameras)
    chosen = select_cameras(whole, cameras, where=f"calibration file {os.fspath(path)!r}")
    if chosen.source is None:
        chosen = Calibration(chosen.cameras, chosen.rmse_px, chosen.camera_rmse_px, chosen.n_observations,
                             CALIBRATION_JSON_SOURCE)
    return key, chosen


def imported_report(calibration: Calibration) -> dict:
    """``calibration_report.json`` of an imported calibration: where it came from, and that nothing was detected."""
    return {
        "source": calibration.source,
        "rmse_px": calibration.rmse_px,
        "note": "imported: cameras read from a calibration made elsewhere; no board detections, residuals are "
                "the imported file's (0 when it has none)",
        "cameras": {cam_id: {"width": cam.width, "height": cam.height,
                             "rmse_px": calibration.camera_rmse_px.get(cam_id, 0.0),
                             "n_observations": calibration.n_observations.get(cam_id, 0)}
                    for cam_id, cam in calibration.cameras.items()},
    }


def write_imported_outputs(calibration: Calibration, out_dir: str | os.PathLike[str]) -> Path:
    """The files of a calibration result folder, built in a temporary sibling and renamed into place."""
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        write_calibration(tmp / layout.CALIBRATION_FILE, calibration)
        write_colmap_model(calibration.cameras, tmp / layout.COLMAP_DIR)
        check_colmap_written(tmp / layout.COLMAP_DIR, len(calibration.cameras), 0)
        write_transforms(tmp / layout.TRANSFORMS_FILE, calibration.cameras)
        atomic_write_json(tmp / layout.CALIBRATION_REPORT_FILE, imported_report(calibration))
        atomic_write_bytes(tmp / layout.CALIBRATION_PICTURE_FILE, stand_in_picture(calibration.cameras))
    return out_dir
