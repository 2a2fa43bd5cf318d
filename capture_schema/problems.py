"""Validation problems: stable codes, one per kind of defect, with where and how to fix.

Codes are part of the contract (scripts match on them); never rename one, only add.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum


class ProblemCode(str, Enum):
    """Every defect ``validate_session`` can report, each with its own code."""

    SESSION_FILE_MISSING = "session_file_missing"
    SESSION_FILE_INVALID = "session_file_invalid"
    SESSION_FIELD_MISSING = "session_field_missing"
    SESSION_FIELD_INVALID = "session_field_invalid"
    IMAGE_MISSING = "image_missing"
    IMAGE_AMBIGUOUS = "image_ambiguous"
    UNEXPECTED_FILE = "unexpected_file"
    IMAGE_CORRUPT = "image_corrupt"
    IMAGE_SIZE_MISMATCH = "image_size_mismatch"
    DUPLICATE_IMAGE = "duplicate_image"
    PATH_OUTSIDE_SESSION = "path_outside_session"
    CALIBRATION_MISSING = "calibration_missing"
    CALIBRATION_CAMERA_EMPTY = "calibration_camera_empty"
    CALIBRATION_BOARD_INVALID = "calibration_board_invalid"
    CALIBRATION_IMAGE_INVALID = "calibration_image_invalid"
    CALIBRATION_FILE_INVALID = "calibration_file_invalid"
    CALIBRATION_CAMERA_MISSING = "calibration_camera_missing"
    CALIBRATION_SIZE_MISMATCH = "calibration_size_mismatch"


#: What each code means, for docs, ``o2a validate`` and the Dagster UI.
PROBLEM_DESCRIPTIONS: dict[ProblemCode, str] = {
    ProblemCode.SESSION_FILE_MISSING: "session.json is absent",
    ProblemCode.SESSION_FILE_INVALID: "session.json is not a readable JSON object",
    ProblemCode.SESSION_FIELD_MISSING: "a required session.json field is absent",
    ProblemCode.SESSION_FIELD_INVALID: "a session.json field has the wrong type or value",
    ProblemCode.IMAGE_MISSING: "no image for an (expression, camera) cell",
    ProblemCode.IMAGE_AMBIGUOUS: "more than one image (e.g. .jpg and .png) for one cell",
    ProblemCode.UNEXPECTED_FILE: "a file or folder the capture layout does not define",
    ProblemCode.IMAGE_CORRUPT: "an image that is unreadable, truncated or not a valid JPEG/PNG",
    ProblemCode.IMAGE_SIZE_MISMATCH: "an image whose size differs from the camera's other images",
    ProblemCode.DUPLICATE_IMAGE: "the same image bytes stored in two cells",
    ProblemCode.PATH_OUTSIDE_SESSION: "a path or symlink that leads outside the session folder",
    ProblemCode.CALIBRATION_MISSING: "the calibration folder (or calibration .json file) is absent",
    ProblemCode.CALIBRATION_CAMERA_EMPTY: "the calibration folder has no board images for a camera",
    ProblemCode.CALIBRATION_BOARD_INVALID: "calibration board.json is absent or invalid",
    ProblemCode.CALIBRATION_IMAGE_INVALID: "a board image that is corrupt, refused, or one of two for the same moment",
    ProblemCode.CALIBRATION_FILE_INVALID: "the calibration .json file session.json names cannot be read or is not a calibration",
    ProblemCode.CALIBRATION_CAMERA_MISSING: "the calibration .json file lacks a camera the session lists",
    ProblemCode.CALIBRATION_SIZE_MISMATCH: "the calibration .json file's image size for a camera differs from its images",
}

# Which check reports which codes (the Dagster asset checks of ``session_manifest``).
SESSION_FILE_CODES = frozenset(
    {
        ProblemCode.SESSION_FILE_MISSING,
        ProblemCode.SESSION_FILE_INVALID,
        ProblemCode.SESSION_FIELD_MISSING,
        ProblemCode.SESSION_FIELD_INVALID,
    }
)
GRID_CODES = frozenset(
    {
        ProblemCode.IMAGE_MISSING,
        ProblemCode.IMAGE_AMBIGUOUS,
        ProblemCode.UNEXPECTED_FILE,
        ProblemCode.IMAGE_SIZE_MISMATCH,
        ProblemCode.PATH_OUTSIDE_SESSION,
    }
)
IMAGE_INTEGRITY_CODES = frozenset({ProblemCode.IMAGE_CORRUPT, ProblemCode.DUPLICATE_IMAGE})
CALIBRATION_CODES = frozenset(
    {ProblemCode.CALIBRATION_MISSING, ProblemCode.CALIBRATION_CAMERA_EMPTY, ProblemCode.CALIBRATION_BOARD_INVALID,
     ProblemCode.CALIBRATION_IMAGE_INVALID, ProblemCode.CALIBRATION_FILE_INVALID, ProblemCode.CALIBRATION_CAMERA_MISSING,
     ProblemCode.CALIBRATION_SIZE_MISMATCH}
)


@dataclass(frozen=True, order=True)
class Problem:
    """One defect: its code, the path relative to the session folder, and a message saying how to fix it."""

    path: str
    code: ProblemCode
    message: str

    def to_dict(self) -> dict[str, str]:
        data = asdict(self)
        data["code"] = self.code.value
        return {"code": data["code"], "path": data["path"], "message": data["message"]}
