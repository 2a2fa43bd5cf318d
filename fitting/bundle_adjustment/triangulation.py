"""Multi-view linear triangulation and reprojection errors for a static camera rig.

Observations are one dense array ``pixels`` of shape ``(C, N, 2)``: camera ``c``
saw point ``n`` at pixel ``pixels[c, n]`` (OpenCV pixel convention, distorted
image coordinates), or did not see it (the row is NaN). Cameras are the project's
:class:`capture_schema.cameras.Camera` (OpenCV distortion ``k1 k2 p1 p2 k3``,
world-to-camera ``R, t``).

Triangulation is the plain linear DLT on undistorted normalised coordinates over
every camera that saw a point (no outlier rejection, no weighting): for each view
two rows ``x * P[2] - P[0]`` and ``y * P[2] - P[1]`` with ``P = [R | t]``, and the
point is the right singular vector of the stacked system. It is vectorised over
points (a batched SVD of ``(N, 2C, 4)``; unseen views contribute zero rows), so
~180k points over 12 cameras triangulate in about 1.5 s. It is the initial
guess for :mod:`fitting.bundle_adjustment.points`, not an estimate to trust on
noisy keypoints: near-parallel two-view rays give points far off, which is why
medians and percentiles, not means, summarise its errors.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from capture_schema.cameras import Camera
from fitting.camera_model import undistort_normalized

#: Points per batched SVD (bounds the temporary (batch, 2C, 4) arrays).
_BATCH = 65536


def undistort_points(camera: Camera, pixels: np.ndarray) -> np.ndarray:
    """Distorted pixels ``(N, 2)`` -> undistorted normalised coordinates ``(N, 2)``; NaN rows stay NaN."""
    return undistort_normalized(pixels, camera.K, camera.dist)


def check_observations(cameras: Sequence[Camera], pixels: np.ndarray, what: str = "triangulation") -> np.ndarray:
    """``pixels`` as a float (C, N, 2) array, or a ValueError saying what shape was expected."""
    cameras = list(cameras)
    if len(cameras) < 2:
        raise ValueError(f"{what} needs at least 2 cameras, got {len(cameras)}")
    for i, cam in enumerate(cameras):
        if not isinstance(cam, Camera):
            raise ValueError(f"cameras[{i}] must be a capture_schema.cameras.Camera, got {type(cam).__name__}")
    uv = np.asarray(pixels, dtype=np.float64)
    if uv.ndim != 3 or uv.shape[2] != 2 or uv.shape[0] != len(cameras):
        raise ValueError(
            f"pixels must have shape (n_cameras={len(cameras)}, n_points, 2) with NaN where a camera did not "
            f"see a point, got shape {uv.shape}"
        )
    return uv


def observed_mask(pixels: np.ndarray) -> np.ndarray:
    """``(C, N)`` bool: camera ``c`` saw point ``n`` (both coordinates finite)."""
    return np.all(np.isfinite(np.asarray(pixels, dtype=np.float64)), axis=-1)


def triangulate_points(cameras: Sequence[Camera], pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear (DLT) triangulation of every point seen by at least two cameras.

    ``pixels`` is ``(C, N, 2)`` with NaN where camera ``c`` did not see point ``n``.
    Returns ``points (N, 3)`` (NaN for points seen by fewer than two cameras) and
    ``n_views (N,)``, the number of cameras that saw each point.
    """
    uv = check_observations(cameras, pixels)
    n_cams, n_points = uv.shape[:2]
    seen = observed_mask(uv)
    n_views = seen.sum(axis=0)

    # Undistorted normalised coordinates; zero where unseen so their rows vanish.
    xy = np.zeros((n_cams, n_points, 2))
    for c, cam in enumerate(cameras):
        xy[c] = np.nan_to_num(undistort_points(cam, uv[c]), nan=0.0)
    P = np.stack([np.hstack([cam.R, cam.t[:, None]]) for cam in cameras])  # (C, 3, 4)

    points = np.full((n_points, 3), np.nan)
    todo = np.flatnonzero(n_views >= 2)
    for start in range(0, len(todo), _BATCH):
        idx = todo[start : start + _BATCH]
        x = xy[:, idx, 0][..., None]  # (C, B, 1)
        y = xy[:, idx, 1][..., None]
        w = seen[:, idx][..., None].astype(np.float64)
        rows_x = w * (x * P[:, None, 2, :] - P[:, None, 0, :])  # (C, B, 4)
        rows_y = w * (y * P[:, None, 2, :] - P[:, None, 1, :])
        A = np.concatenate([rows_x, rows_y], axis=0).transpose(1, 0, 2)  # (B, 2C, 4)
        _, _, vt = np.linalg.svd(A, full_matrices=False)
        X = vt[:, -1, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            points[idx] = X[:, :3] / X[:, 3:4]
    points[~np.all(np.isfinite(points), axis=1)] = np.nan
    return points, n_views


def project_points(camera: Camera, points: np.ndarray) -> np.ndarray:
    """``camera.project`` that leaves NaN rows NaN (and silences their warnings)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return camera.project(np.asarray(points, dtype=np.float64))


def reprojection_errors(cameras: Sequence[Camera], points: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Pixel distance between each observation and its point's projection, ``(C, N)``.

    NaN where the camera did not see the point or the point is NaN. Points behind
    a camera are projected anyway (OpenCV's model is defined there), so their
    error is large rather than missing.
    """
    uv = check_observations(cameras, pixels)
    pts = np.asarray(points, dtype=np.float64)
    if pts.shape != (uv.shape[1], 3):
        raise ValueError(f"points must have shape (n_points={uv.shape[1]}, 3) to match pixels, got {pts.shape}")
    err = np.full(uv.shape[:2], np.nan)
    for c, cam in enumerate(cameras):
        proj = project_points(cam, pts)
        with np.errstate(invalid="ignore", over="ignore"):
            err[c] = np.linalg.norm(proj - uv[c], axis=1)
    return err


def error_summary(errors: np.ndarray) -> dict[str, float | int]:
    """Median, p90, mean and count of the finite entries of a reprojection-error array."""
    e = np.asarray(errors, dtype=np.float64)
    e = e[np.isfinite(e)]
    if e.size == 0:
        return {"n_observations": 0, "median_px": float("nan"), "p90_px": float("nan"), "mean_px": float("nan")}
    return {
        "n_observations": int(e.size),
        "median_px": float(np.median(e)),
        "p90_px": float(np.percentile(e, 90)),
        "mean_px": float(np.mean(e)),
    }
