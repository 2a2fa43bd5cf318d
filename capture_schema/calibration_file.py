"""Read and write ``calibration.json``: the rig's cameras plus honest error figures.

Format (shared by the simulator's ground truth and the calibration step)::

    {"rmse_px": float,
     "source": str,            (optional: only an imported calibration has it)
     "cameras": {camera_id: {"width", "height", "fx", "fy", "cx", "cy",
                             "dist": [k1, k2, p1, p2, k3], "R": 3x3 world-to-camera,
                             "t": [3] metres, "rmse_px": float, "n_observations": int}}}

``source`` says where cameras not computed from board captures came from
(``"imported:colmap_text"``, see ``capture_schema.calibration_import``). It is written
only when set, so a board calibration's file is byte-identical with or without the field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from capture_schema.atomic import atomic_write_json
from capture_schema.cameras import Camera, _real, _whole
from capture_schema.json_file import JsonFileError, read_json_file

#: More observations than this is a corrupt count: 13 cameras x a few hundred board
#: views x ~100 corners is ~10^6; 10^12 also keeps the count exact as a float64.
MAX_OBSERVATIONS = 10**12
#: ``source`` is a short label such as ``imported:colmap_binary``.
MAX_SOURCE_CHARS = 200


@dataclass(frozen=True)
class Calibration:
    """A calibrated rig: cameras in capture order plus per-camera residual statistics."""

    cameras: dict[str, Camera]
    rmse_px: float = 0.0
    camera_rmse_px: dict[str, float] = field(default_factory=dict)
    n_observations: dict[str, int] = field(default_factory=dict)
    source: str | None = None

    def to_dict(self) -> dict:
        cams = {}
        for cam_id, cam in self.cameras.items():
            block = cam.to_dict()
            block["rmse_px"] = float(self.camera_rmse_px.get(cam_id, 0.0))
            block["n_observations"] = int(self.n_observations.get(cam_id, 0))
            cams[cam_id] = block
        out: dict = {"rmse_px": float(self.rmse_px)}
        if self.source is not None:
            out["source"] = self.source
        out["cameras"] = cams
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> "Calibration":
        """Validate a decoded ``calibration.json``; any bad value is a ``ValueError`` naming the field."""
        if not isinstance(data, Mapping) or not isinstance(data.get("cameras"), Mapping):
            raise ValueError("calibration must be an object with a 'cameras' object")
        if not data["cameras"]:
            raise ValueError("calibration's 'cameras' object is empty; it needs at least one camera")
        cameras: dict[str, Camera] = {}
        rmse: dict[str, float] = {}
        nobs: dict[str, int] = {}
        for cam_id, block in data["cameras"].items():
            try:
                cameras[cam_id] = Camera.from_dict(block)
                rmse[cam_id] = _rmse("rmse_px", block.get("rmse_px", 0.0))
                nobs[cam_id] = _count("n_observations", block.get("n_observations", 0))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"camera {str(cam_id)[:80]!r}: {exc}") from None
        return cls(cameras, _rmse("rmse_px", data.get("rmse_px", 0.0)), rmse, nobs, _source(data.get("source")))


def _rmse(name: str, value: object) -> float:
    """A residual in pixels: finite (``_real``) and never negative."""
    out = _real(name, value)
    if out < 0:
        raise ValueError(f"{name} must be at least 0 px, got {out!r}")
    return out


def _source(value: object) -> str | None:
    """Where the cameras came from: absent, or a short printable string."""
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_SOURCE_CHARS or not value.isprintable():
        raise ValueError(f"source must be a printable string of 1-{MAX_SOURCE_CHARS} characters, "
                         f"got {str(value)[:40]!r}")
    return value


def _count(name: str, value: object) -> int:
    """A count: a whole number (``_whole``: no bool, no string), 0 <= n <= MAX_OBSERVATIONS."""
    out = _whole(name, value)
    if not 0 <= out <= MAX_OBSERVATIONS:
        raise ValueError(f"{name} must be a whole number in [0, {MAX_OBSERVATIONS}], got {str(out)[:40]}")
    return out


def write_calibration(path: str | os.PathLike[str], calibration: Calibration) -> Path:
    return atomic_write_json(path, calibration.to_dict())


def read_calibration(path: str | os.PathLike[str]) -> Calibration:
    """Read and validate ``calibration.json``.

    Every failure (missing or unreadable file, not strict JSON, a bad value) is a
    ``JsonFileError`` -- a ``ValueError`` -- whose message names the file; a missing
    file is no longer an ``OSError`` (callers catch ``ValueError``).
    """
    data = read_json_file(path)
    try:
        return Calibration.from_dict(data)
    except ValueError as exc:
        raise JsonFileError(path, str(exc), "content") from None
