"""The camera maths above the contract layer: torch projection, Rodrigues, undistortion.

One OpenCV camera model everywhere (pinhole plus ``k1 k2 p1 p2 k3``):

- the distortion polynomial is written once, ``capture_schema.cameras.distort``, and
  shared by the numpy ``Camera.project`` and the batched, differentiable
  ``CameraBatch.project`` here (the contract layer never imports torch or OpenCV);
- axis-angle -> rotation matrix for torch is ``axis_angle_to_matrix`` (fitting, FLAME
  joints, few-shot camera and head refinement); numpy code uses ``cv2.Rodrigues``;
- undistortion is ``undistort_normalized``: OpenCV's iterative inverse with an explicit
  termination criterion (its default of 5 iterations is not enough for strong barrel
  distortion near the image corners).

``tests/test_camera_model.py`` holds all of them against ``cv2.projectPoints`` and
``scipy.spatial.transform.Rotation``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from capture_schema.cameras import Camera, distort

#: Termination of the iterative undistortion: up to 50 iterations or a 1e-10 step.
UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-10)


@dataclass(frozen=True)
class CameraBatch:
    """``C`` cameras as tensors: ``R`` (C,3,3), ``t`` (C,3), ``focal`` (C,2), ``principal`` (C,2), ``dist`` (C,5)."""

    R: torch.Tensor
    t: torch.Tensor
    focal: torch.Tensor
    principal: torch.Tensor
    dist: torch.Tensor

    @classmethod
    def from_cameras(
        cls, cameras: Sequence[Camera], dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu"
    ) -> "CameraBatch":
        def tensor(values) -> torch.Tensor:
            return torch.as_tensor(np.asarray(values, dtype=np.float64), dtype=dtype, device=device)

        return cls(
            R=tensor([c.R for c in cameras]),
            t=tensor([c.t for c in cameras]),
            focal=tensor([[c.fx, c.fy] for c in cameras]),
            principal=tensor([[c.cx, c.cy] for c in cameras]),
            dist=tensor([c.dist for c in cameras]),
        )

    def __len__(self) -> int:
        return self.R.shape[0]

    def world_to_camera(self, points: torch.Tensor) -> torch.Tensor:
        """``points`` (..., C, N, 3) in world -> the same in each camera's frame."""
        return torch.einsum("cij,...cnj->...cni", self.R, points) + self.t[:, None, :]

    def project(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Distorted pixels (..., C, N, 2) and depths (..., C, N) of world points (..., C, N, 3).

        Pass ``points[..., None, :, :]`` to project the same points into every camera.
        """
        cam = self.world_to_camera(points)
        z = cam[..., 2]
        xy = cam[..., :2] / z.clamp(min=1e-6)[..., None]
        xd, yd = distort(xy[..., 0], xy[..., 1], [self.dist[:, i, None] for i in range(5)])
        pix = torch.stack([xd, yd], dim=-1) * self.focal[:, None, :] + self.principal[:, None, :]
        return pix, z


def axis_angle_to_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula: axis-angle vectors (..., 3) -> rotation matrices (..., 3, 3).

    Series expansions below ~1e-4 rad keep values and gradients finite at zero (where
    fitting starts); ``1 - cos`` is written as ``2 sin^2(t/2)`` so float32 keeps precision.
    """
    theta2 = (rotvec * rotvec).sum(-1, keepdim=True)[..., None]  # (..., 1, 1)
    small = theta2 < 1e-8
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)
    theta = safe2.sqrt()
    a = torch.where(small, 1 - theta2 / 6 + theta2**2 / 120, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24 + theta2**2 / 720, 2 * torch.sin(theta / 2) ** 2 / safe2)
    x, y, z = rotvec.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*rotvec.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device)
    return eye + a * k + b * (k @ k)


def undistort_normalized(pixels: np.ndarray, K: np.ndarray, dist: Any) -> np.ndarray:
    """Distorted pixels ``(N, 2)`` -> undistorted normalised coordinates ``(N, 2)``; NaN rows stay NaN.

    The criterion goes by keyword: OpenCV 5's positional order is
    ``(src, K, dist, dst, R, P, criteria)``, and it dropped ``undistortPointsIter``.
    """
    uv = np.asarray(pixels, dtype=np.float64)
    if uv.ndim != 2 or uv.shape[1] != 2:
        raise ValueError(f"pixels must be an (N, 2) array, got shape {uv.shape}")
    out = np.full(uv.shape, np.nan)
    ok = np.all(np.isfinite(uv), axis=1)
    if ok.any():
        und = cv2.undistortPoints(uv[ok].reshape(-1, 1, 2), np.asarray(K, np.float64),
                                  np.asarray(dist, np.float64), R=None, P=None, criteria=UNDISTORT_CRITERIA)
        out[ok] = und.reshape(-1, 2)
    return out
