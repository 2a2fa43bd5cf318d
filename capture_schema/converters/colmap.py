"""OpenCV cameras <-> COLMAP sparse models (``cameras``, ``images``, ``points3D``).

COLMAP and OpenCV share axes (x right, y down, z forward) and world-to-camera
poses, so no axis flips; but COLMAP puts the centre of the top-left pixel at
(0.5, 0.5) where OpenCV puts it at (0, 0), so a model file's principal point and
keypoints are ours plus ``FILE_PIXEL_CENTRE`` (``write_colmap_model`` adds it,
``read_colmap_model`` removes it). ``camera_to_colmap`` / ``intrinsics_from_colmap``
map parameters only, unshifted: the bundle adjustment runs pycolmap on our pixels. Our ``k1 k2 p1 p2 k3`` maps to
COLMAP's ``OPENCV`` model when ``k3 == 0`` and to ``FULL_OPENCV`` (``k4..k6 = 0``)
otherwise, because COLMAP has no five-term model; a camera without distortion (an
undistorted export) is ``PINHOLE``, the one model dense tools such as Gaussian
splatting trainers accept.

A written model holds one COLMAP camera and one image per rig camera, camera
ids ``1..N`` in the mapping's order, each camera in its own trivial rig (the
files make no claim that cameras are rigidly coupled). The image name is
``<camera_id><image_ext>``: pass ``image_ext=".jpg"`` to point COLMAP's
``image_path`` at a folder such as ``images/<expression>/``. Reading strips a
trailing image extension (``.jpg``, ``.png``, ``.jpeg``) to recover the id.
pycolmap is imported inside the functions (it is heavy and not fork-friendly).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from capture_schema.atomic import atomic_directory
from capture_schema.cameras import FILE_PIXEL_CENTRE, Camera
from capture_schema.layout import IMAGE_EXTENSIONS

#: Parameter names per COLMAP model we can read without losing information.
READABLE_MODELS: dict[str, tuple[str, ...]] = {
    "SIMPLE_PINHOLE": ("f", "cx", "cy"),
    "PINHOLE": ("fx", "fy", "cx", "cy"),
    "SIMPLE_RADIAL": ("f", "cx", "cy", "k1"),
    "RADIAL": ("f", "cx", "cy", "k1", "k2"),
    "OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"),
    "FULL_OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6"),
}
_IMAGE_SUFFIXES = tuple(IMAGE_EXTENSIONS) + (".jpeg",)

Intrinsics = tuple[float, float, float, float, tuple[float, float, float, float, float]]


# --- camera parameters -------------------------------------------------------------


def camera_to_colmap(camera: Camera) -> tuple[str, list[float]]:
    """COLMAP model name and parameter list for ``camera``'s intrinsics."""
    k1, k2, p1, p2, k3 = camera.dist
    if not any(camera.dist):
        return "PINHOLE", [float(camera.fx), float(camera.fy), float(camera.cx), float(camera.cy)]
    params = [camera.fx, camera.fy, camera.cx, camera.cy, k1, k2, p1, p2]
    if k3 == 0.0:
        return "OPENCV", [float(p) for p in params]
    return "FULL_OPENCV", [float(p) for p in params + [k3, 0.0, 0.0, 0.0]]


def intrinsics_from_colmap(model: str, params: Sequence[float]) -> Intrinsics:
    """``fx, fy, cx, cy, (k1, k2, p1, p2, k3)`` from a COLMAP model and its params.

    Raises ``ValueError`` for models OpenCV's five-term distortion cannot hold
    (fisheye models, or ``FULL_OPENCV`` with a rational term ``k4..k6 != 0``).
    """
    names = READABLE_MODELS.get(model)
    if names is None:
        raise ValueError(
            f"COLMAP camera model {model!r} is not supported; use one of "
            f"{', '.join(READABLE_MODELS)} (re-run COLMAP with e.g. --ImageReader.camera_model OPENCV)"
        )
    values = [float(p) for p in params]
    if len(values) != len(names):
        raise ValueError(f"COLMAP model {model} takes {len(names)} params ({' '.join(names)}), got {len(values)}")
    p = dict(zip(names, values))
    if model == "FULL_OPENCV" and (p["k4"], p["k5"], p["k6"]) != (0.0, 0.0, 0.0):
        raise ValueError(
            "COLMAP FULL_OPENCV camera has a rational distortion term (k4, k5, k6) = "
            f"({p['k4']}, {p['k5']}, {p['k6']}); the project's OpenCV model holds only "
            "k1 k2 p1 p2 k3: refine with k4..k6 held at 0 or use the OPENCV model"
        )
    fx = p.get("fx", p.get("f"))
    fy = p.get("fy", p.get("f"))
    dist = tuple(p.get(k, 0.0) for k in ("k1", "k2", "p1", "p2", "k3"))
    return fx, fy, p["cx"], p["cy"], dist  # type: ignore[return-value]


# --- poses -------------------------------------------------------------------------


def pose_to_colmap(R: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera ``R, t`` as COLMAP's text-format ``qvec (qw qx qy qz)``, ``tvec``.

    The quaternion is unit length with ``qw >= 0``. pycolmap's ``Rotation3d.quat``
    is ordered ``xyzw`` instead: reorder with ``qvec[[1, 2, 3, 0]]``.
    """
    m = np.asarray(R, dtype=np.float64).reshape(3, 3)
    trace = np.trace(m)
    # Shepperd's method: divide by the largest of the four candidate terms.
    if trace > max(m[0, 0], m[1, 1], m[2, 2]):
        s = 2.0 * np.sqrt(1.0 + trace)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] >= m[1, 1] and m[0, 0] >= m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] >= m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    qvec = np.asarray(q) / np.linalg.norm(q)
    if qvec[0] < 0:
        qvec = -qvec
    return qvec, np.asarray(t, dtype=np.float64).reshape(3).copy()


def pose_from_colmap(qvec: Sequence[float], tvec: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera ``R, t`` from COLMAP's ``qvec (qw qx qy qz)`` and ``tvec``."""
    q = np.asarray(qvec, dtype=np.float64).reshape(4)
    norm = np.linalg.norm(q)
    if not np.isfinite(norm) or norm < 1e-12:
        raise ValueError(f"COLMAP quaternion {q.tolist()} is not a rotation (zero or non-finite)")
    w, x, y, z = q / norm
    R = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )
    return R, np.asarray(tvec, dtype=np.float64).reshape(3).copy()


# --- whole models ------------------------------------------------------------------


def _check_camera_id(cam_id: str) -> None:
    if not isinstance(cam_id, str) or not cam_id or any(ch.isspace() for ch in cam_id):
        raise ValueError(f"camera id {cam_id!r} cannot be a COLMAP image name: use a non-empty id without whitespace")


def _validated_observations(
    cameras: Mapping[str, Camera], points3d: np.ndarray | None, observations: Mapping[str, np.ndarray] | None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    points = np.zeros((0, 3)) if points3d is None else np.asarray(points3d, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or not np.all(np.isfinite(points)):
        raise ValueError(f"points3d must be a finite (N, 3) array, got shape {points.shape}")
    if observations is None:
        return points, {}
    if points3d is None:
        raise ValueError("observations need points3d: each observation row refers to a point by index")
    unknown = sorted(set(observations) - set(cameras))
    if unknown:
        raise ValueError(f"observations name camera(s) not in cameras: {', '.join(unknown)}")
    obs: dict[str, np.ndarray] = {}
    for cam_id, uv in observations.items():
        uv = np.asarray(uv, dtype=np.float64)
        if uv.shape != (len(points), 2):
            raise ValueError(
                f"observations[{cam_id!r}] must be ({len(points)}, 2) pixels aligned with points3d "
                f"(NaN rows = not seen), got shape {uv.shape}"
            )
        obs[cam_id] = uv
    return points, obs


def write_colmap_model(
    cameras: Mapping[str, Camera],
    out_dir: str | os.PathLike[str],
    points3d: np.ndarray | None = None,
    observations: Mapping[str, np.ndarray] | None = None,
    binary: bool = False,
    *,
    image_ext: str = "",
) -> Path:
    """Write ``cameras`` (and optional 3D points) as a COLMAP model in ``out_dir``.

    ``observations`` maps a camera id to an ``(N, 2)`` array of pixel positions
    aligned with the rows of ``points3d``; NaN rows mean "not seen". Points become
    COLMAP tracks; points seen nowhere are written with an empty track. The
    directory is built in a temporary sibling and renamed into place, replacing
    any previous model there whole. Writes ``.bin`` files when ``binary`` else
    ``.txt`` (``cameras``, ``images``, ``points3D``, plus COLMAP 3.12's ``rigs``
    and ``frames``). Returns ``out_dir``.
    """
    import pycolmap

    if not cameras:
        raise ValueError("write_colmap_model needs at least one camera")
    for cam_id in cameras:
        _check_camera_id(cam_id)
    points, obs = _validated_observations(cameras, points3d, observations)

    rec = pycolmap.Reconstruction()
    point_idx: dict[int, list[tuple[int, int]]] = {j: [] for j in range(len(points))}
    for colmap_id, (cam_id, cam) in enumerate(cameras.items(), start=1):
        model, params = camera_to_colmap(replace(cam, cx=cam.cx + FILE_PIXEL_CENTRE, cy=cam.cy + FILE_PIXEL_CENTRE))
        rec.add_camera_with_trivial_rig(
            pycolmap.Camera(camera_id=colmap_id, model=model, width=cam.width, height=cam.height, params=params)
        )
        uv = obs.get(cam_id, np.full((len(points), 2), np.nan))
        seen = np.flatnonzero(np.all(np.isfinite(uv), axis=1))
        for p2d_idx, j in enumerate(seen):
            point_idx[int(j)].append((colmap_id, p2d_idx))
        image = pycolmap.Image(
            name=f"{cam_id}{image_ext}", keypoints=uv[seen].reshape(-1, 2) + FILE_PIXEL_CENTRE, camera_id=colmap_id, image_id=colmap_id
        )
        cam_from_world = pycolmap.Rigid3d(np.hstack([cam.R, cam.t[:, None]]))
        rec.add_image_with_trivial_frame(image, cam_from_world)
    for j, xyz in enumerate(points):
        track = pycolmap.Track([pycolmap.TrackElement(img_id, p2d) for img_id, p2d in point_idx[j]])
        rec.add_point3D(xyz, track)
    if not rec.is_valid():
        raise RuntimeError("pycolmap rejected the model it was given (Reconstruction.is_valid() is False)")

    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        if binary:
            rec.write_binary(str(tmp))
        else:
            rec.write_text(str(tmp))
    return out_dir


def camera_id_from_image_name(name: str) -> str:
    """The project camera id behind a COLMAP image name (image extension stripped)."""
    stem, ext = os.path.splitext(name)
    return stem if ext.lower() in _IMAGE_SUFFIXES else name


def read_colmap_model(model_dir: str | os.PathLike[str]) -> dict[str, Camera]:
    """Every registered image of a COLMAP model (text or binary) as a ``Camera``.

    Keys are image names with a trailing image extension removed, in image-id
    order. Unregistered images (no pose) are left out, as COLMAP itself does.
    """
    import pycolmap

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"COLMAP model directory {str(model_dir)!r} does not exist")
    try:
        rec = pycolmap.Reconstruction(str(model_dir))
    except ValueError as exc:
        raise ValueError(f"cannot read a COLMAP model from {str(model_dir)!r}: {exc}") from None
    cameras: dict[str, Camera] = {}
    for image_id in sorted(rec.images):
        image = rec.images[image_id]
        if not image.has_pose:
            continue
        cam_id = camera_id_from_image_name(image.name)
        if cam_id in cameras:
            raise ValueError(f"COLMAP model {str(model_dir)!r} holds two images named {cam_id!r} (ignoring extension)")
        colmap_cam = rec.cameras[image.camera_id]
        try:
            fx, fy, cx, cy, dist = intrinsics_from_colmap(colmap_cam.model.name, list(colmap_cam.params))
        except ValueError as exc:
            raise ValueError(f"COLMAP camera {image.camera_id} (image {image.name!r}): {exc}") from None
        pose = image.cam_from_world().matrix()
        cameras[cam_id] = Camera(
            width=int(colmap_cam.width),
            height=int(colmap_cam.height),
            fx=fx,
            fy=fy,
            cx=cx - FILE_PIXEL_CENTRE,
            cy=cy - FILE_PIXEL_CENTRE,
            dist=dist,
            R=pose[:, :3],
            t=pose[:, 3],
        )
    return cameras
