"""Rig calibration from calibration-board captures.

``detect`` (OpenCV board detection) -> ``initialize`` (per-camera OpenCV
calibration, robust relative poses) -> ``refine`` (one joint pycolmap bundle
adjustment) -> ``calibrate`` (the folder-level API and atomic outputs).
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
