"""``session.json``: who was captured, when, on which rig, and the expected grid.

Parsing never raises for bad content: it returns every problem found, each naming
the field, so ``o2a validate`` can list them all at once.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from capture_schema.atomic import atomic_write_json
from capture_schema.layout import (
    DEFAULT_CALIBRATION_DIR,
    DEFAULT_CAMERAS,
    DEFAULT_EXPRESSIONS,
    SESSION_FILE,
    is_valid_id,
)
from capture_schema.json_file import JsonFileError, read_json_file
from capture_schema.problems import Problem, ProblemCode

#: A 13 x 13 session.json is ~1 KB; even thousands of ids stay far below this bound on what a hostile file costs.
MAX_SESSION_FILE_BYTES = 64 * 1024
REQUIRED_FIELDS = ("subject_id", "session_id", "rig_id", "captured_at", "expressions", "cameras")


@dataclass(frozen=True)
class SessionInfo:
    """The validated content of ``session.json``."""

    subject_id: str
    session_id: str
    rig_id: str
    captured_at: str
    expressions: tuple[str, ...] = DEFAULT_EXPRESSIONS
    cameras: tuple[str, ...] = DEFAULT_CAMERAS
    #: Relative path: a folder of board captures, or a ``.json`` calibration file (``calibration_import``).
    calibration: str = DEFAULT_CALIBRATION_DIR
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.extra)
        data.update(
            subject_id=self.subject_id,
            session_id=self.session_id,
            rig_id=self.rig_id,
            captured_at=self.captured_at,
            expressions=list(self.expressions),
            cameras=list(self.cameras),
            calibration=self.calibration,
        )
        return data


def _invalid(field_name: str, message: str) -> Problem:
    return Problem(SESSION_FILE, ProblemCode.SESSION_FIELD_INVALID, f"field '{field_name}': {message}")


def _check_id_list(data: dict, name: str, problems: list[Problem]) -> tuple[str, ...] | None:
    value = data[name]
    if not isinstance(value, list) or not value:
        problems.append(_invalid(name, "must be a non-empty list of ids"))
        return None
    bad = [v for v in value if not is_valid_id(v)]
    if bad:
        problems.append(_invalid(name, f"ids must match [A-Za-z0-9_-]+, got {bad[:3]!r}"))
        return None
    if len(set(value)) != len(value):
        dupes = sorted(v for v, n in Counter(value).items() if n > 1)
        problems.append(_invalid(name, f"ids must be unique, repeated: {dupes}"))
        return None
    return tuple(value)


@dataclass(frozen=True)
class ParsedSession:
    """Everything ``session.json`` yields, even when some fields are bad.

    ``info`` is set only when the whole document is valid; ``expressions``,
    ``cameras`` and ``calibration`` are each set when that field alone is usable,
    so a validator can still check the grid and the calibration folder and report
    every problem in one pass.
    """

    info: SessionInfo | None
    problems: list[Problem]
    expressions: tuple[str, ...] | None = None
    cameras: tuple[str, ...] | None = None
    calibration: str | None = DEFAULT_CALIBRATION_DIR


def parse_session_fields(data: Any, folder_name: str | None = None) -> ParsedSession:
    """Check a decoded ``session.json`` field by field; keep what is usable beside every problem."""
    if not isinstance(data, dict):
        return ParsedSession(None, [Problem(SESSION_FILE, ProblemCode.SESSION_FILE_INVALID,
                                            "session.json must hold a JSON object")])
    problems = [
        Problem(SESSION_FILE, ProblemCode.SESSION_FIELD_MISSING, f"required field '{name}' is missing")
        for name in REQUIRED_FIELDS
        if name not in data
    ]
    for name in ("subject_id", "session_id", "rig_id"):
        if name in data and not is_valid_id(data[name]):
            problems.append(_invalid(name, f"must be a string of [A-Za-z0-9_-] (1-128 chars), got {data[name]!r}"))
    if "session_id" in data and folder_name is not None and is_valid_id(data["session_id"]):
        if data["session_id"] != folder_name:
            problems.append(_invalid("session_id", f"is {data['session_id']!r} but the folder is named {folder_name!r}"))
    if "captured_at" in data:
        value = data["captured_at"]
        try:
            if not isinstance(value, str):
                raise TypeError
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        except (TypeError, ValueError):
            problems.append(_invalid("captured_at", f"must be an ISO 8601 date-time string, got {value!r}"))
    expressions = _check_id_list(data, "expressions", problems) if "expressions" in data else None
    cameras = _check_id_list(data, "cameras", problems) if "cameras" in data else None
    calibration = data.get("calibration", DEFAULT_CALIBRATION_DIR)
    if not isinstance(calibration, str) or not calibration or Path(calibration).is_absolute():
        problems.append(_invalid("calibration", "must be a relative path to a calibration folder or to a "
                                                f"calibration .json file (o2a import-calibration), got {calibration!r}"))
        calibration = None
    if problems:
        return ParsedSession(None, problems, expressions, cameras, calibration)
    extra = {k: v for k, v in data.items() if k not in REQUIRED_FIELDS and k != "calibration"}
    info = SessionInfo(
        subject_id=data["subject_id"],
        session_id=data["session_id"],
        rig_id=data["rig_id"],
        captured_at=data["captured_at"],
        expressions=expressions or (),
        cameras=cameras or (),
        calibration=calibration,
        extra=extra,
    )
    return ParsedSession(info, [], expressions, cameras, calibration)


def parse_session(data: Any, folder_name: str | None = None) -> tuple[SessionInfo | None, list[Problem]]:
    """Check a decoded ``session.json``; return the session (or None) and every problem."""
    parsed = parse_session_fields(data, folder_name)
    return parsed.info, parsed.problems


def read_session_fields(session_dir: Path) -> ParsedSession:
    """Read ``<session_dir>/session.json`` and keep every usable field beside its problems."""
    path = Path(session_dir) / SESSION_FILE
    if not path.exists() and not path.is_symlink():  # a dangling symlink is invalid, not missing
        return ParsedSession(None, [Problem(SESSION_FILE, ProblemCode.SESSION_FILE_MISSING,
                                            "session.json not found; every session folder needs one")])
    try:
        # Refuses a FIFO/device/folder, NaN/Infinity, deep nesting and files over 64 KiB:
        # a session.json is ~1 KB, and the cap bounds the id-list checks' cost.
        data = read_json_file(path, max_bytes=MAX_SESSION_FILE_BYTES)
    except JsonFileError as exc:
        return ParsedSession(None, [Problem(SESSION_FILE, ProblemCode.SESSION_FILE_INVALID,
                                            f"cannot read session.json as JSON: {exc.reason}")])
    return parse_session_fields(data, Path(session_dir).name)


def read_session(session_dir: Path) -> tuple[SessionInfo | None, list[Problem]]:
    """Read and check ``<session_dir>/session.json``: the session (or None) and every problem."""
    parsed = read_session_fields(session_dir)
    return parsed.info, parsed.problems


def write_session(session_dir: Path, info: SessionInfo) -> Path:
    return atomic_write_json(Path(session_dir) / SESSION_FILE, info.to_dict())

