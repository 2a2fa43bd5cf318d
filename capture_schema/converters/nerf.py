"""OpenCV cameras <-> NeRF-style ``transforms.json`` (instant-ngp / nerfstudio).

NeRF tools store camera-to-world matrices in the OpenGL camera convention
(x right, y up, z backward), so the OpenCV camera's y and z axes are flipped:
``c2w = [[R^T diag(1, -1, -1), C], [0, 0, 0, 1]]`` with ``C = -R^T t``. Intrinsics
are written per frame (``fl_x fl_y cx cy w h k1 k2 p1 p2 k3``, ``camera_model:
"OPENCV"``) because every rig camera has its own; ``cx cy`` are in NeRF tools' pixel
convention (centre of the top-left pixel at (0.5, 0.5)), i.e. ours plus ``FILE_PIXEL_CENTRE``. The world frame is ours,
unchanged: no recentring or rescaling, so readers must not apply any either.

Layout::

    {"camera_model": "OPENCV",
     "frames": [{"camera_id", "file_path", "transform_matrix": 4x4,
                 "camera_model", "fl_x", "fl_y", "cx", "cy", "w", "h",
                 "k1", "k2", "p1", "p2", "k3"}, ...]}

Frames follow the mapping's order. Reading also accepts files from other tools:
intrinsics may sit at the top level instead of per frame, and a frame without
``camera_id`` takes its file name's stem.
"""

from __future__ import annotations

import json
import os
import posixpath
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from capture_schema.atomic import atomic_write_json
from capture_schema.cameras import FILE_PIXEL_CENTRE, Camera

CAMERA_MODEL = "OPENCV"
#: Flips OpenCV camera axes (y down, z forward) to OpenGL's (y up, z backward); its own inverse.
OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0])
_REQUIRED = ("transform_matrix", "fl_x", "fl_y", "cx", "cy", "w", "h")
_DIST_KEYS = ("k1", "k2", "p1", "p2", "k3")
_UNSUPPORTED_DIST = ("k4", "k5", "k6")


def camera_to_world_opengl(camera: Camera) -> np.ndarray:
    """The 4x4 NeRF ``transform_matrix`` (camera-to-world, OpenGL axes) of ``camera``."""
    c2w = np.eye(4)
    c2w[:3, :3] = camera.R.T @ OPENCV_TO_OPENGL
    c2w[:3, 3] = camera.center
    return c2w


def pose_from_opengl(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera OpenCV ``R, t`` from a NeRF camera-to-world matrix."""
    m = np.asarray(c2w, dtype=np.float64)
    R = (m[:3, :3] @ OPENCV_TO_OPENGL).T
    return R, -R @ m[:3, 3]


def cameras_to_transforms(
    cameras: Mapping[str, Camera], image_paths: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """A ``transforms.json`` document for ``cameras``.

    ``image_paths`` maps camera id to the frame's ``file_path`` (relative to the
    JSON file, as NeRF tools expect); without it ``file_path`` is
    ``<camera_id>.png``.
    """
    if image_paths is not None:
        missing = [cam_id for cam_id in cameras if cam_id not in image_paths]
        if missing:
            raise ValueError(f"image_paths has no entry for camera(s): {', '.join(missing)}")
    frames = []
    for cam_id, cam in cameras.items():
        frame: dict[str, Any] = {
            "camera_id": cam_id,
            "file_path": str(image_paths[cam_id]) if image_paths is not None else f"{cam_id}.png",
            "transform_matrix": [[float(v) for v in row] for row in camera_to_world_opengl(cam)],
            "camera_model": CAMERA_MODEL,
            "fl_x": float(cam.fx),
            "fl_y": float(cam.fy),
            "cx": float(cam.cx + FILE_PIXEL_CENTRE),
            "cy": float(cam.cy + FILE_PIXEL_CENTRE),
            "w": int(cam.width),
            "h": int(cam.height),
        }
        frame.update({k: float(v) for k, v in zip(_DIST_KEYS, cam.dist)})
        frames.append(frame)
    return {"camera_model": CAMERA_MODEL, "frames": frames}


def _lookup(frame: Mapping[str, Any], top: Mapping[str, Any], key: str) -> Any:
    if key in frame:
        return frame[key]
    if key in top:
        return top[key]
    raise ValueError(f"required key {key!r} is missing (neither in the frame nor at the top level)")


def _as_int(value: Any, key: str) -> int:
    if float(value) != int(float(value)):
        raise ValueError(f"{key!r} must be a whole number of pixels, got {value!r}")
    return int(float(value))


def _frame_to_camera(frame: Mapping[str, Any], top: Mapping[str, Any]) -> Camera:
    model = frame.get("camera_model", top.get("camera_model", CAMERA_MODEL))
    if model != CAMERA_MODEL:
        raise ValueError(f"camera_model {model!r} is not supported, only {CAMERA_MODEL!r}")
    values = {key: _lookup(frame, top, key) for key in _REQUIRED}
    for key in _UNSUPPORTED_DIST:
        value = frame.get(key, top.get(key, 0.0))
        if float(value) != 0.0:
            raise ValueError(f"distortion term {key}={value} is not supported (only k1 k2 p1 p2 k3)")
    c2w = np.asarray(values["transform_matrix"], dtype=np.float64)
    if c2w.shape != (4, 4) or not np.all(np.isfinite(c2w)):
        raise ValueError(f"transform_matrix must be a finite 4x4 matrix, got shape {c2w.shape}")
    if not np.allclose(c2w[3], [0.0, 0.0, 0.0, 1.0], atol=1e-9):
        raise ValueError(f"transform_matrix's last row must be [0, 0, 0, 1], got {c2w[3].tolist()}")
    R, t = pose_from_opengl(c2w)
    return Camera(
        width=_as_int(values["w"], "w"),
        height=_as_int(values["h"], "h"),
        fx=float(values["fl_x"]),
        fy=float(values["fl_y"]),
        cx=float(values["cx"]) - FILE_PIXEL_CENTRE,
        cy=float(values["cy"]) - FILE_PIXEL_CENTRE,
        dist=tuple(float(frame.get(k, top.get(k, 0.0))) for k in _DIST_KEYS),
        R=R,
        t=t,
    )


def transforms_to_cameras(data: Mapping[str, Any]) -> dict[str, Camera]:
    """Cameras keyed by id from a ``transforms.json`` document, in frame order."""
    if not isinstance(data, Mapping) or not isinstance(data.get("frames"), list):
        raise ValueError("transforms must be an object with a 'frames' list")
    cameras: dict[str, Camera] = {}
    for i, frame in enumerate(data["frames"]):
        where = f"transforms frame {i}"
        if not isinstance(frame, Mapping):
            raise ValueError(f"{where} must be an object")
        cam_id = frame.get("camera_id")
        if cam_id is None:
            if "file_path" not in frame:
                raise ValueError(f"{where} has neither 'camera_id' nor 'file_path' to name its camera")
            cam_id = posixpath.splitext(posixpath.basename(str(frame["file_path"])))[0]
        cam_id = str(cam_id)
        if cam_id in cameras:
            raise ValueError(f"{where}: camera id {cam_id!r} appears in more than one frame")
        try:
            cameras[cam_id] = _frame_to_camera(frame, data)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{where} ({cam_id!r}): {exc}") from None
    return cameras


def write_transforms(
    path: str | os.PathLike[str], cameras: Mapping[str, Camera], image_paths: Mapping[str, str] | None = None
) -> Path:
    """Write ``transforms.json`` atomically as canonical (byte-reproducible) JSON."""
    return atomic_write_json(path, cameras_to_transforms(cameras, image_paths))


def read_transforms(path: str | os.PathLike[str]) -> dict[str, Camera]:
    """Cameras from a ``transforms.json`` file."""
    with open(path, encoding="utf-8") as fh:
        try:
            data = json.load(fh)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{os.fspath(path)!r} is not valid JSON: {exc}") from None
    try:
        return transforms_to_cameras(data)
    except ValueError as exc:
        raise ValueError(f"{os.fspath(path)!r}: {exc}") from None
