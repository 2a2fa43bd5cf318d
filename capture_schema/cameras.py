"""Pinhole cameras with OpenCV distortion, in the project's one convention.

OpenCV axes (x right, y down, z forward), world-to-camera extrinsics ``R, t`` in
metres, intrinsics ``fx fy cx cy`` and distortion ``k1 k2 p1 p2 k3``. Every other
layout (COLMAP, NeRF ``transforms.json``) is reached through ``converters``.
Projection is plain numpy so the contract layer needs no OpenCV import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np


def _as_rotation(R: Any) -> np.ndarray:
    mat = np.asarray(R, dtype=np.float64).reshape(3, 3)
    if not np.allclose(mat @ mat.T, np.eye(3), atol=1e-6) or np.linalg.det(mat) < 0:
        raise ValueError("R must be a proper rotation matrix (orthonormal, det +1)")
    return mat


@dataclass(frozen=True)
class Camera:
    """One calibrated camera: intrinsics, distortion and world-to-camera pose."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    dist: tuple[float, float, float, float, float] = (0.0, 0.0, 0.0, 0.0, 0.0)
    R: np.ndarray = field(default_factory=lambda: np.eye(3))
    t: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def __post_init__(self) -> None:
        dist = tuple(float(d) for d in self.dist)
        if len(dist) == 4:
            dist = dist + (0.0,)
        if len(dist) != 5:
            raise ValueError("dist must hold k1 k2 p1 p2 [k3]")
        object.__setattr__(self, "dist", dist)
        object.__setattr__(self, "R", _as_rotation(self.R))
        object.__setattr__(self, "t", np.asarray(self.t, dtype=np.float64).reshape(3))
        if self.width <= 0 or self.height <= 0:
            raise ValueError("width and height must be positive")
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError("focal lengths must be positive")

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def center(self) -> np.ndarray:
        """Camera centre in world coordinates (``-R^T t``)."""
        return -self.R.T @ self.t

    def world_to_camera(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points, dtype=np.float64) @ self.R.T + self.t

    def distort_normalized(self, xy: np.ndarray) -> np.ndarray:
        """Apply OpenCV's radial-tangential model to normalised image coordinates."""
        k1, k2, p1, p2, k3 = self.dist
        x, y = xy[..., 0], xy[..., 1]
        r2 = x * x + y * y
        radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
        xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        return np.stack([xd, yd], axis=-1)

    def project(self, points: np.ndarray) -> np.ndarray:
        """Project world points (N, 3) to distorted pixel coordinates (N, 2)."""
        cam = self.world_to_camera(points)
        xy = cam[..., :2] / cam[..., 2:3]
        xy = self.distort_normalized(xy)
        return np.stack([self.fx * xy[..., 0] + self.cx, self.fy * xy[..., 1] + self.cy], axis=-1)

    def depth(self, points: np.ndarray) -> np.ndarray:
        """Z of world points in this camera's frame (positive in front)."""
        return self.world_to_camera(points)[..., 2]

    def to_dict(self) -> dict[str, Any]:
        """The per-camera block of ``calibration.json``."""
        return {
            "width": int(self.width),
            "height": int(self.height),
            "fx": float(self.fx),
            "fy": float(self.fy),
            "cx": float(self.cx),
            "cy": float(self.cy),
            "dist": [float(d) for d in self.dist],
            "R": [[float(v) for v in row] for row in self.R],
            "t": [float(v) for v in self.t],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Camera":
        missing = [k for k in ("width", "height", "fx", "fy", "cx", "cy", "R", "t") if k not in data]
        if missing:
            raise ValueError(f"camera is missing field(s): {', '.join(missing)}")
        return cls(
            width=int(data["width"]),
            height=int(data["height"]),
            fx=float(data["fx"]),
            fy=float(data["fy"]),
            cx=float(data["cx"]),
            cy=float(data["cy"]),
            dist=tuple(data.get("dist", (0.0,) * 5)),
            R=np.asarray(data["R"], dtype=np.float64),
            t=np.asarray(data["t"], dtype=np.float64),
        )


def look_at(center: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, -1.0, 0.0])) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera ``R, t`` for a camera at ``center`` looking at ``target``.

    ``up`` is the world direction that should appear upwards in the image; with
    OpenCV's y-down image axis the default world "up" is -y.
    """
    center = np.asarray(center, dtype=np.float64)
    z = np.asarray(target, dtype=np.float64) - center
    z /= np.linalg.norm(z)
    x = np.cross(-np.asarray(up, dtype=np.float64), z)
    if np.linalg.norm(x) < 1e-9:
        raise ValueError("up is parallel to the viewing direction")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    return R, -R @ center
