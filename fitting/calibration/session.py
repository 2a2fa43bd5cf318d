"""A session's calibration: which shared result it uses, and making that result.

Calibrating a 13-camera rig costs tens of seconds, and a studio captures many
sessions on one rig between recalibrations. So sessions whose calibration folders
hold the same board captures (``calibration_input_hash``) and list the cameras in
the same order (the first camera is the world frame) share one result under
``derived_layout.calibration_dir(key)``, and each session gets a small pointer file
(``derived_layout.calibration_pointer``) naming it. Later steps find a session's
cameras only through that pointer, so the rule is written once, here, for the
``camera_calibration`` asset and ``o2a calibrate --session`` alike.

A session whose ``calibration`` names a ``.json`` file (a calibration made elsewhere,
``o2a import-calibration``) is not calibrated: its cameras are published the same way
under a key of the file's content and the camera order (``fitting.calibration.imported``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from capture_schema import derived_layout as layout
from capture_schema.atomic import canonical_json
from capture_schema.calibration_file import Calibration
from capture_schema.calibration_import import is_calibration_file
from capture_schema.reuse import MissingUpstreamError, require_not_quarantined, stored_digest
from capture_schema.session import read_session
from capture_schema.storage import Storage
from fitting.calibration.calibrate import calibrate_folder, calibration_input_hash, write_calibration_outputs
from fitting.calibration.errors import CalibrationError
from fitting.calibration.imported import load_imported_calibration, write_imported_outputs

Progress = Callable[[str, int, int], None]


class SessionCalibrationError(ValueError):
    """A session whose rig cannot be calibrated; ``folder`` is its calibration folder when the
    board captures themselves are at fault (the message names the camera or field)."""

    def __init__(self, message: str, folder: Path | None = None) -> None:
        super().__init__(message)
        self.folder = folder


@dataclass(frozen=True)
class SessionCalibration:
    """The calibration a session uses, and whether an earlier session's result was reused."""

    session_id: str
    key: str
    calibration: Calibration
    reused: bool

    @property
    def folder(self) -> str:
        """The shared result's folder, relative to the storage root."""
        return layout.calibration_dir(self.key)


def calibration_key(input_hash: str, cameras: Sequence[str]) -> str:
    """Board captures plus camera order: the first camera defines the world frame."""
    return hashlib.sha256(f"{input_hash}\n{','.join(cameras)}".encode()).hexdigest()[:16]


def session_calibration_file(store: Storage, session_id: str) -> str:
    """The ``calibration.json`` a session uses (via its pointer file), relative to the storage root."""
    pointer = layout.calibration_pointer(session_id)
    if not store.exists(pointer):
        raise MissingUpstreamError(f"session {session_id} has no calibration yet: materialise camera_calibration "
                                   "first", ("camera_calibration",))
    return layout.calibration_file(json.loads(store.read_bytes(pointer))["calibration_key"])


def read_session_calibration(store: Storage, session_id: str) -> Calibration:
    """The ``Calibration`` that ``calibrate_session`` chose for a session."""
    return Calibration.from_dict(json.loads(store.read_bytes(session_calibration_file(store, session_id))))


def session_calibration_digest(store: Storage, session_id: str) -> str:
    """sha256 of the calibration.json a session uses: its cameras' identity as an input of later steps."""
    return stored_digest(store, session_calibration_file(store, session_id))


def _quiet(_: str) -> None:
    pass


def calibrate_session(store: Storage, session_dir: str | os.PathLike[str], session_id: str,
                      progress: Progress | None = None, log: Callable[[str], None] = _quiet) -> SessionCalibration:
    """Calibrate the session's rig in its camera order, or reuse the result of the same board captures.

    A session naming a calibration ``.json`` file uses that file's cameras instead (same
    outputs, pointer and reuse; keyed by the file's content and the camera order).

    Writes the result (``write_calibration_outputs``, built in a temporary folder and
    published whole) unless it exists, then the session's pointer file (only when it
    changes). Raises ``MissingUpstreamError`` for a quarantined session and
    ``SessionCalibrationError`` when the session or its board captures cannot give a rig.
    """
    require_not_quarantined(store, session_id)
    session_dir = Path(session_dir)
    info, problems = read_session(session_dir)
    if info is None:
        raise SessionCalibrationError(f"session {session_id}: {problems[0].message}")
    calib_dir = (session_dir / info.calibration).resolve()
    if is_calibration_file(info.calibration):
        try:
            key, imported = load_imported_calibration(calib_dir, info.cameras)
        except ValueError as exc:
            raise SessionCalibrationError(f"session {session_id}: calibration file unusable: {exc}",
                                          folder=calib_dir) from None
        return _publish(store, session_id, key, lambda out: write_imported_outputs(imported, out),
                        f"using the calibration imported in {calib_dir} ({imported.source})",
                        "same calibration file content and camera order", log)
    if not calib_dir.is_dir():
        raise SessionCalibrationError(f"session {session_id}: calibration folder {calib_dir} not found")
    try:
        key = calibration_key(calibration_input_hash(calib_dir), info.cameras)
    except CalibrationError as exc:
        raise SessionCalibrationError(f"session {session_id}: {exc}") from None

    def calibrate(out: Path) -> None:
        try:
            result = calibrate_folder(calib_dir, cameras=info.cameras, progress=progress)
        except CalibrationError as exc:
            raise SessionCalibrationError(f"session {session_id}: calibration impossible: {exc}",
                                          folder=calib_dir) from None
        log(f"calibrated: rmse {result.rmse_px:.3f} px, timings {result.report()['timings_s']}")
        write_calibration_outputs(result, out)

    return _publish(store, session_id, key, calibrate, f"calibrating {calib_dir}", "same board captures", log)


def _publish(store: Storage, session_id: str, key: str, write: Callable[[Path], object], doing: str,
             same: str, log: Callable[[str], None]) -> SessionCalibration:
    """Reuse the result under ``key`` or ``write`` it (into a folder published whole), then point the session at it."""
    target = layout.calibration_dir(key)
    reused = store.exists(layout.calibration_file(key))
    if reused:
        log(f"reusing calibration {target} ({same} as an earlier session)")
    else:
        log(doing)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "calibration"
            write(out)
            store.put_directory(out, target)
    calibration = Calibration.from_dict(json.loads(store.read_bytes(layout.calibration_file(key))))
    store.write_if_changed(layout.calibration_pointer(session_id), canonical_json(
        {"session_id": session_id, "calibration_key": key, "calibration": target}).encode())
    return SessionCalibration(session_id, key, calibration, reused)
