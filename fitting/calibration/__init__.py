"""Rig calibration from calibration-board captures.

``boards`` (the OpenCV side of a board spec: object points, board objects,
textures, shared with the simulator's board renderer) -> ``detect`` (OpenCV board
detection) -> ``initialize`` (per-camera OpenCV calibration, robust relative
poses) -> ``refine`` (one joint pycolmap bundle adjustment of the rig and its
board poses) -> ``calibrate`` (the folder-level API and atomic outputs).
pycolmap is imported lazily inside ``refine`` (heavy, not fork-friendly).
"""

from fitting.calibration.calibrate import (
    CalibrationResult,
    calibrate_folder,
    calibration_input_hash,
    write_calibration_outputs,
)
from fitting.calibration.errors import CalibrationError

__all__ = [
    "CalibrationError",
    "CalibrationResult",
    "calibrate_folder",
    "calibration_input_hash",
    "write_calibration_outputs",
]
