"""Fit a session (13 frames x 13 views) and store the result.

``fit_session`` joins the session's landmarks with its calibration and runs the
batched fitter; ``write_session_fit`` stores identity, per-frame expression and
pose and the posed vertices as a zarr v3 group, with a Parquet table of the
per-view reprojection error beside it. ``fit_single_image`` is the same fitter
for one photograph with a nominal camera (unknown intrinsics).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from capture_schema.array_store import read_array_group, write_array_group
from capture_schema.calibration_file import Calibration
from capture_schema.cameras import Camera
from capture_schema.manifest import table_from_columns
from capture_schema.tables import FACE_FIT_VIEWS_SCHEMA
from fitting.face_fit.fitter import FRAME_FEW_VIEWS, FRAME_NOT_FITTED, FitConfig, FrameFit, fit_frames
from fitting.face_models.base import FaceModel

if TYPE_CHECKING:
    from fitting.landmarks.detect import SessionLandmarks

#: A nominal lens for photographs without calibration: focal length = the longer image side (~53 deg).
NOMINAL_FOCAL_PER_SIDE = 1.0
FIT_FORMAT = "o2a.face_fit/1"


@dataclass
class SessionFit:
    """A fitted session: the frame fit plus the ids that name its axes."""

    session_id: str
    expressions: tuple[str, ...]
    cameras: tuple[str, ...]
    fit: FrameFit

    @property
    def flagged_frames(self) -> list[str]:
        """Expressions whose frame was fitted from too few views or not at all."""
        bad = np.isin(self.fit.frame_status, [FRAME_FEW_VIEWS, FRAME_NOT_FITTED])
        return [e for e, b in zip(self.expressions, bad) if b]


class FitInputError(ValueError):
    """Landmarks and calibration do not describe the same cameras."""


def fit_session(model: FaceModel, landmarks: SessionLandmarks, calibration: Calibration,
                config: FitConfig = FitConfig()) -> SessionFit:
    """One identity, per-frame expression and pose for a session, cameras from ``calibration``."""
    missing = [c for c in landmarks.cameras if c not in calibration.cameras]
    if missing:
        raise FitInputError(f"calibration has no camera(s) {', '.join(missing)} that session "
                            f"{landmarks.session_id} was captured with; re-run the calibration for this rig")
    cams = [calibration.cameras[c] for c in landmarks.cameras]
    sizes = np.array([[c.width, c.height] for c in cams])
    seen = landmarks.detected
    bad = seen & (np.abs(landmarks.image_size - sizes[None]) > 0).any(axis=-1)
    if bad.any():
        e, c = np.argwhere(bad)[0]
        raise FitInputError(f"image {landmarks.expressions[e]}/{landmarks.cameras[c]} is "
                            f"{tuple(landmarks.image_size[e, c])} px but its calibrated camera is "
                            f"{tuple(sizes[c])} px")
    obs = np.where(seen[..., None, None], landmarks.landmarks, np.nan)
    fit = fit_frames(model, cams, obs, np.where(seen, landmarks.confidence, 0.0), config)
    return SessionFit(landmarks.session_id, tuple(landmarks.expressions), tuple(landmarks.cameras), fit)


def nominal_camera(width: int, height: int) -> Camera:
    """A distortion-free camera at the origin for an uncalibrated photograph."""
    f = NOMINAL_FOCAL_PER_SIDE * max(width, height)
    return Camera(width=width, height=height, fx=f, fy=f, cx=(width - 1) / 2, cy=(height - 1) / 2)


def fit_single_image(model: FaceModel, landmarks: np.ndarray, image_size: tuple[int, int],
                     camera: Camera | None = None, config: FitConfig = FitConfig()) -> FrameFit:
    """Fit one view's 478 landmarks (pixels); the camera defaults to ``nominal_camera``."""
    cam = camera or nominal_camera(*image_size)
    return fit_frames(model, [cam], np.asarray(landmarks, dtype=np.float64)[None, None],
                      config=FitConfig(**{**config.__dict__, "min_views": 1}))


def fit_views_table(session_fit: SessionFit) -> pa.Table:
    """One row per (expression, camera): status and reprojection error."""
    fit = session_fit.fit
    E, C = fit.view_status.shape
    n_lm = np.isfinite(fit.projected).all(-1).sum(-1) * (fit.view_status != "not_detected")
    cols = {
        "session_id": [session_fit.session_id] * (E * C),
        "expression": [e for e in session_fit.expressions for _ in range(C)],
        "camera_id": list(session_fit.cameras) * E,
        "view_status": [str(s) for s in fit.view_status.reshape(-1)],
        "frame_status": [str(fit.frame_status[e]) for e in range(E) for _ in range(C)],
        "rmse_px": fit.view_rmse_px.reshape(-1).astype(np.float32),
        "median_px": fit.view_median_px.reshape(-1).astype(np.float32),
        "n_landmarks": n_lm.reshape(-1).astype(np.int16),
    }
    return table_from_columns(cols, FACE_FIT_VIEWS_SCHEMA)


def write_session_fit(session_fit: SessionFit, path: str | os.PathLike[str]) -> Path:
    """The fit as a zarr v3 group: identity, expression, rotation, translation, vertices, errors."""
    fit = session_fit.fit
    arrays = {
        "identity": fit.identity.astype(np.float64),
        "expression": fit.expression.astype(np.float64),
        "rotation": fit.rotation.astype(np.float64),
        "translation": fit.translation.astype(np.float64),
        "vertices": fit.vertices.astype(np.float32),
        "view_rmse_px": fit.view_rmse_px.astype(np.float32),
        "view_median_px": fit.view_median_px.astype(np.float32),
        "landmark_ids": fit.landmark_ids.astype(np.int32),
        "projected_landmarks": fit.projected.astype(np.float32),
        "n_views": fit.n_views.astype(np.int16),
    }
    attrs = {
        "format": FIT_FORMAT,
        "session_id": session_fit.session_id,
        "expressions": list(session_fit.expressions),
        "cameras": list(session_fit.cameras),
        "model": fit.model_name,
        "view_status": [[str(s) for s in row] for row in fit.view_status],
        "frame_status": [str(s) for s in fit.frame_status],
        "units": "metres; rotation/translation map model to world (x_world = R x_model + t); pixels OpenCV",
    }
    return write_array_group(path, arrays, attrs)


def read_session_fit(path: str | os.PathLike[str]) -> SessionFit:
    """Inverse of ``write_session_fit``."""
    arrays, attrs = read_array_group(path)
    if attrs.get("format") != FIT_FORMAT:
        raise ValueError(f"{path} is not a face-fit store (format {attrs.get('format')!r}, expected {FIT_FORMAT!r})")
    fit = FrameFit(
        model_name=attrs["model"],
        identity=arrays["identity"],
        expression=arrays["expression"],
        rotation=arrays["rotation"],
        translation=arrays["translation"],
        vertices=arrays["vertices"],
        view_rmse_px=arrays["view_rmse_px"].astype(np.float64),
        view_median_px=arrays["view_median_px"].astype(np.float64),
        view_status=np.array(attrs["view_status"], dtype=object),
        frame_status=np.array(attrs["frame_status"], dtype=object),
        n_views=arrays["n_views"].astype(np.int64),
        landmark_ids=arrays["landmark_ids"].astype(np.int64),
        projected=arrays["projected_landmarks"].astype(np.float64),
    )
    return SessionFit(attrs["session_id"], tuple(attrs["expressions"]), tuple(attrs["cameras"]), fit)



def overlay_view(session_fit: SessionFit, cameras: dict[str, Camera]) -> tuple[int, int]:
    """The (frame, view) worth showing: the first fitted frame, seen by the used camera that
    faces the fitted face most directly (models look towards -z in their own frame)."""
    fit = session_fit.fit
    used = fit.view_status == "used"
    frames = np.flatnonzero(used.any(axis=1))
    if len(frames) == 0:
        return 0, 0
    e = int(frames[0])
    facing = fit.rotation[e] @ np.array([0.0, 0.0, -1.0])
    centre = fit.vertices[e].mean(axis=0)
    score = np.full(len(session_fit.cameras), -np.inf)
    for c, cam_id in enumerate(session_fit.cameras):
        if used[e, c]:
            to_cam = cameras[cam_id].center - centre
            score[c] = facing @ to_cam / np.linalg.norm(to_cam)
    return e, int(np.argmax(score))
