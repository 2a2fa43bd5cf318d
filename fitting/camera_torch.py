"""Differentiable projection through a set of calibrated cameras (torch).

The same OpenCV model as ``capture_schema.cameras.Camera.project`` (pinhole plus
``k1 k2 p1 p2 k3``), batched over cameras so a fitter or a renderer can push all
views of a frame through one call. Kept apart from the numpy ``Camera`` so the
contract layer never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from capture_schema.cameras import Camera


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
        k1, k2, p1, p2, k3 = (self.dist[:, i, None] for i in range(5))
        x, y = xy[..., 0], xy[..., 1]
        r2 = x * x + y * y
        radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
        xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        pix = torch.stack([xd, yd], dim=-1) * self.focal[:, None, :] + self.principal[:, None, :]
        return pix, z


def axis_angle_to_matrix(rvec: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula for (..., 3) axis-angle vectors, smooth at zero."""
    theta2 = (rvec * rvec).sum(-1, keepdim=True)
    theta = torch.sqrt(theta2 + 1e-24)
    small = theta2 < 1e-8
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / (theta2 + 1e-24))
    x, y, z = rvec.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*rvec.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=rvec.dtype, device=rvec.device).expand_as(K)
    return eye + a[..., None] * K + b[..., None] * (K @ K)
