"""Pinhole cameras with OpenCV distortion, in the project's one convention.

OpenCV axes (x right, y down, z forward), world-to-camera extrinsics ``R, t`` in
metres, intrinsics ``fx fy cx cy`` and distortion ``k1 k2 p1 p2 k3``. Every other
layout (COLMAP, NeRF ``transforms.json``) is reached through ``converters``.
Projection is plain numpy so the contract layer needs no OpenCV import.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

# Sanity bounds on every camera, whether read from calibration.json or built in code.
# They are far outside any real head rig and only catch corrupt or hostile values
# (a number that would otherwise crash fitting or silently make a camera an outlier).

#: Largest image side: the biggest sensors shipped (~150 MP) are ~14k px wide.
MAX_IMAGE_SIDE_PX = 100_000
#: Largest focal length: 1e6 px is a < 0.6 degree field of view even at 10k px.
MAX_FOCAL_PX = 1e6
#: Largest |k1 k2 p1 p2 k3|: real lenses fit within ~1e2; beyond 1e3 the polynomial is noise.
MAX_DISTORTION_COEFF = 1e3
#: Largest |t| in metres: a studio rig spans a few metres; 10 km is a wrong unit or garbage.
MAX_TRANSLATION_M = 1e4
#: Where other tools put the centre of the top-left pixel: COLMAP, nerfstudio and instant-ngp at
#: (0.5, 0.5), OpenCV and this project at (0, 0). Their files hold principal points (and COLMAP
#: keypoints) this much larger than ours; the converters add it on writing and remove it on reading.
FILE_PIXEL_CENTRE = 0.5


def _real(name: str, value: Any) -> float:
    """A finite float from a real number (int, float, numpy scalar); never from bool or str."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {type(value).__name__} {_short(value)}")
    try:
        out = float(value)
    except (OverflowError, ValueError, TypeError):
        raise ValueError(f"{name} is out of range, got {_short(value)}") from None
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {out!r}")
    return out


def _whole(name: str, value: Any) -> int:
    """An int from an integer, or from a float holding a whole number (JSON ``640.0``); never bool or str."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be an integer, got {type(value).__name__} {_short(value)}")
    if isinstance(value, numbers.Integral):
        return int(value)
    number = _real(name, value)
    if not number.is_integer():
        raise ValueError(f"{name} must be a whole number, got {number!r}")
    return int(number)


def _short(value: Any) -> str:
    try:
        text = repr(value) if isinstance(value, (str, bytes, numbers.Number)) else f"<{type(value).__name__}>"
    except ValueError:  # an int beyond sys.get_int_max_str_digits()
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


def _finite_array(name: str, value: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A finite float64 array of ``shape``: a numeric ndarray of that size, or nested lists of numbers.

    Lists are checked element by element (numpy would quietly turn ``"1.0"`` into 1.0,
    ``true`` into 1.0 and ``null`` into NaN).
    """
    label = "x".join(map(str, shape))
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iuf":
            raise ValueError(f"{name} must be a {label} array of numbers, got dtype {value.dtype}")
        if value.size != math.prod(shape):
            raise ValueError(f"{name} must hold {math.prod(shape)} numbers, got shape {value.shape}")
        arr = value.astype(np.float64).reshape(shape)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must hold finite numbers only")
        return arr
    flat: list[float] = []

    def walk(item: Any, dims: tuple[int, ...], where: str) -> None:  # depth is len(shape): at most 2
        if not dims:
            flat.append(_real(where, item))
            return
        if not isinstance(item, (list, tuple, np.ndarray)) or len(item) != dims[0]:
            raise ValueError(f"{name} must be a {label} array of numbers, got {_short(item)} at {where}")
        for i, sub in enumerate(item):
            walk(sub, dims[1:], f"{where}[{i}]")

    walk(value, shape, name)
    return np.array(flat, dtype=np.float64).reshape(shape)


def _as_rotation(R: Any) -> np.ndarray:
    mat = _finite_array("R", R, (3, 3))
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
        # Sizes are integers (a float holding a whole number, as JSON may write it, is
        # accepted; a fraction, bool or string is not); every other number is finite.
        sizes = {}
        for name in ("width", "height"):
            value = _whole(name, getattr(self, name))
            if not 0 < value <= MAX_IMAGE_SIDE_PX:
                raise ValueError(f"{name} must be a positive number of pixels up to {MAX_IMAGE_SIDE_PX}, "
                                 f"got {_short(value)}")
            sizes[name] = value
            object.__setattr__(self, name, value)
        for name in ("fx", "fy"):
            value = _real(name, getattr(self, name))
            if not 0 < value < MAX_FOCAL_PX:
                raise ValueError(f"{name} must be a positive focal length below {MAX_FOCAL_PX:g} px, got {value!r}")
            object.__setattr__(self, name, value)
        for name, side in (("cx", sizes["width"]), ("cy", sizes["height"])):
            value = _real(name, getattr(self, name))
            # The principal point may sit off-centre (shift lenses, crops) but not a whole image away.
            if not -side <= value <= 2 * side:
                raise ValueError(f"{name} must lie within [{-side}, {2 * side}] px (one image size around the image), "
                                 f"got {value!r}")
            object.__setattr__(self, name, value)
        if isinstance(self.dist, (str, bytes, Mapping)) or not hasattr(self.dist, "__iter__"):
            raise ValueError(f"dist must be a list of 4 or 5 numbers (k1 k2 p1 p2 [k3]), got {type(self.dist).__name__}")
        dist = list(self.dist)
        if len(dist) not in (4, 5):
            raise ValueError(f"dist must hold k1 k2 p1 p2 [k3] (4 or 5 numbers), got {len(dist)}")
        dist = tuple(_real(f"dist[{i}]", d) for i, d in enumerate(dist))
        if len(dist) == 4:
            dist = dist + (0.0,)
        big = [i for i, d in enumerate(dist) if abs(d) > MAX_DISTORTION_COEFF]
        if big:
            raise ValueError(f"dist[{big[0]}] must be at most {MAX_DISTORTION_COEFF:g} in magnitude, got {dist[big[0]]!r}")
        object.__setattr__(self, "dist", dist)
        object.__setattr__(self, "R", _as_rotation(self.R))
        t = _finite_array("t", self.t, (3,))
        length = math.hypot(*t.tolist())  # unlike np.linalg.norm, never overflows (t = [1e308, 1e308, 0])
        if not length <= MAX_TRANSLATION_M:
            raise ValueError(f"t must be at most {MAX_TRANSLATION_M:g} m long, got {length:g} m")
        object.__setattr__(self, "t", t)

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
        """Apply OpenCV's radial-tangential model to normalised image coordinates (..., 2)."""
        xd, yd = distort(xy[..., 0], xy[..., 1], self.dist)
        return np.stack([xd, yd], axis=-1)

    def project(self, points: np.ndarray) -> np.ndarray:
        """Project world points (N, 3) to distorted pixel coordinates (N, 2)."""
        return project_points(points, self.K, self.dist, self.R, self.t)

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
        """A camera from its ``calibration.json`` block; a bad value is a ``ValueError`` naming it.

        Values are passed as decoded (no ``int("640")``/``float("1.5")`` coercion): a
        string where a number belongs is refused by ``__post_init__``.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"camera entry must be a JSON object, got {type(data).__name__}")
        missing = [k for k in ("width", "height", "fx", "fy", "cx", "cy", "R", "t") if k not in data]
        if missing:
            raise ValueError(f"camera is missing field(s): {', '.join(missing)}")
        return cls(
            width=data["width"],
            height=data["height"],
            fx=data["fx"],
            fy=data["fy"],
            cx=data["cx"],
            cy=data["cy"],
            dist=data.get("dist", (0.0,) * 5),
            R=data["R"],
            t=data["t"],
        )


def distort(x: Any, y: Any, dist: Any) -> tuple[Any, Any]:
    """OpenCV's radial-tangential model ``k1 k2 p1 p2 k3`` on normalised coordinates ``x, y``.

    Written once, with arithmetic only, so numpy arrays and torch tensors (the
    differentiable projection in ``fitting.camera_model``) share the same formula;
    ``dist`` is any 5-sequence whose items broadcast against ``x``.
    """
    k1, k2, p1, p2, k3 = dist
    r2 = x * x + y * y
    radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return xd, yd


def project_points(points: np.ndarray, K: np.ndarray, dist: Any, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Distorted pixels (N, 2) of world points (N, 3) through a camera given as arrays.

    For callers that hold ``K, dist, R, t`` (a training frame's crop camera) rather than a
    validated ``Camera``; no depth check (points behind the camera project mirrored).
    """
    cam = np.asarray(points, dtype=np.float64) @ np.asarray(R, np.float64).T + np.asarray(t, np.float64)
    x, y = cam[..., 0] / cam[..., 2], cam[..., 1] / cam[..., 2]
    coeffs = np.zeros(5)
    given = np.asarray(dist, np.float64).reshape(-1)
    coeffs[: len(given)] = given  # k1 k2 p1 p2 [k3]
    xd, yd = distort(x, y, coeffs)
    K = np.asarray(K, np.float64)
    return np.stack([K[0, 0] * xd + K[0, 1] * yd + K[0, 2], K[1, 1] * yd + K[1, 2]], axis=-1)


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
