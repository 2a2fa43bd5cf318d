"""Read and write ``calibration.json``: the rig's cameras plus honest error figures.

Format (shared by the simulator's ground truth and the calibration step)::

    {"rmse_px": float,
     "cameras": {camera_id: {"width", "height", "fx", "fy", "cx", "cy",
                             "dist": [k1, k2, p1, p2, k3], "R": 3x3 world-to-camera,
                             "t": [3] metres, "rmse_px": float, "n_observations": int}}}
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from capture_schema.atomic import atomic_write_json
from capture_schema.cameras import Camera


@dataclass(frozen=True)
class Calibration:
    """A calibrated rig: cameras in capture order plus per-camera residual statistics."""

    cameras: dict[str, Camera]
    rmse_px: float = 0.0
    camera_rmse_px: dict[str, float] = field(default_factory=dict)
    n_observations: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        cams = {}
        for cam_id, cam in self.cameras.items():
            block = cam.to_dict()
            block["rmse_px"] = float(self.camera_rmse_px.get(cam_id, 0.0))
            block["n_observations"] = int(self.n_observations.get(cam_id, 0))
            cams[cam_id] = block
        return {"rmse_px": float(self.rmse_px), "cameras": cams}

    @classmethod
    def from_dict(cls, data: Mapping) -> "Calibration":
        if not isinstance(data, Mapping) or not isinstance(data.get("cameras"), Mapping):
            raise ValueError("calibration must be an object with a 'cameras' object")
        cameras: dict[str, Camera] = {}
        rmse: dict[str, float] = {}
        nobs: dict[str, int] = {}
        for cam_id, block in data["cameras"].items():
            try:
                cameras[cam_id] = Camera.from_dict(block)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"camera {cam_id!r}: {exc}") from None
            rmse[cam_id] = float(block.get("rmse_px", 0.0))
            nobs[cam_id] = int(block.get("n_observations", 0))
        return cls(cameras, float(data.get("rmse_px", 0.0)), rmse, nobs)


def write_calibration(path: str | os.PathLike[str], calibration: Calibration) -> Path:
    return atomic_write_json(path, calibration.to_dict())


def read_calibration(path: str | os.PathLike[str]) -> Calibration:
    with open(path, encoding="utf-8") as fh:
        return Calibration.from_dict(json.load(fh))
