"""The simulated 13-camera capture rig.

Three rings of cameras about 1 m from the head centre (the world origin), all
aimed at it: ``mid`` at eye level (azimuth 0, +-30, +-60 degrees), ``up`` 20 degrees
above (0, +-30, +-60) and ``low`` 15 degrees below (0, +-30). ``L`` cameras stand on
the *subject's* left (world +x; they see the left cheek, which appears on the
image's right in the frontal view), ``R`` on the subject's right.

Intrinsics imitate a real studio camera: f ~ 2.15 x image size (about 1100 px at
512 px, so the face is ~160 px wide), principal point a few pixels off centre,
a real lens's barrel distortion (k1 -0.2 +- 0.04, k2 0.1 +- 0.03, p1 / p2 ~ 5e-4;
about 5 px at the corners of a 384 px image, and a flipped k1 moves them by 10 px),
each perturbed per camera from ``seed`` so a calibration step has something real
to recover and a sign error in the camera model fails the calibration bars (k3
stays 0: a long lens needs no sixth-order term).
"""

from __future__ import annotations

import numpy as np

from capture_schema.cameras import Camera, look_at
from capture_schema.layout import DEFAULT_CAMERAS

DISTANCE_M = 1.0
FOCAL_PER_PIXEL = 2.15
RING_ELEVATION_DEG = {"mid": 0.0, "up": 20.0, "low": -15.0}
#: Lens distortion per camera: k1 ~ N(K1_MEAN, K1_SPREAD) within K1_RANGE, likewise k2, p1 / p2 ~ N(0, TANGENTIAL_SPREAD).
K1_MEAN, K1_SPREAD, K1_RANGE = -0.2, 0.04, (-0.28, -0.12)
K2_MEAN, K2_SPREAD, K2_RANGE = 0.1, 0.03, (0.02, 0.18)
TANGENTIAL_SPREAD = 5e-4
#: The views FaceMesh is expected to handle: |azimuth| <= 30 degrees.
FRONTAL_AZIMUTH_DEG = 30.0


def camera_angles(name: str) -> tuple[float, float]:
    """(azimuth, elevation) in degrees of a camera id like ``up_L30``; + azimuth = subject's left."""
    ring, code = name.split("_")
    side, degrees = code[0], float(code[1:])
    if ring not in RING_ELEVATION_DEG or side not in "LRC":
        raise ValueError(f"not a rig camera id: {name!r}")
    return (-degrees if side == "R" else degrees), RING_ELEVATION_DEG[ring]


def camera_center(azimuth_deg: float, elevation_deg: float, distance: float = DISTANCE_M) -> np.ndarray:
    """World position of a camera on the sphere around the head (y down, face looks to -z)."""
    az, el = np.deg2rad(azimuth_deg), np.deg2rad(elevation_deg)
    return distance * np.array([np.sin(az) * np.cos(el), -np.sin(el), -np.cos(az) * np.cos(el)])


def frontal_cameras(names: tuple[str, ...] = DEFAULT_CAMERAS) -> tuple[str, ...]:
    """The camera ids within +-30 degrees azimuth (nine of the default thirteen)."""
    return tuple(n for n in names if abs(camera_angles(n)[0]) <= FRONTAL_AZIMUTH_DEG)


def default_rig(size: int = 512, seed: int = 0) -> dict[str, Camera]:
    """Thirteen cameras keyed in ``DEFAULT_CAMERAS`` order, square ``size`` x ``size`` images."""
    if size <= 0:
        raise ValueError("size must be positive")
    rng = np.random.default_rng(seed)
    rig: dict[str, Camera] = {}
    for name in DEFAULT_CAMERAS:
        azimuth, elevation = camera_angles(name)
        jitter = rng.normal(0.0, 1.0, 10)
        centre = camera_center(azimuth + 0.5 * jitter[0], elevation + 0.5 * jitter[1],
                               DISTANCE_M * (1.0 + 0.01 * jitter[2]))
        target = 0.004 * np.array([jitter[3], jitter[4], 0.0])
        R, t = look_at(centre, target)
        f = FOCAL_PER_PIXEL * size * (1.0 + 0.01 * jitter[5])
        scale = size / 512.0
        rig[name] = Camera(
            width=size,
            height=size,
            fx=f,
            fy=f * (1.0 + 0.001 * jitter[6]),
            cx=(size - 1) / 2.0 + 1.5 * scale * jitter[7],
            cy=(size - 1) / 2.0 + 1.5 * scale * jitter[8],
            dist=(float(np.clip(K1_MEAN + K1_SPREAD * jitter[9], *K1_RANGE)),
                  float(np.clip(rng.normal(K2_MEAN, K2_SPREAD), *K2_RANGE)),
                  float(rng.normal(0.0, TANGENTIAL_SPREAD)), float(rng.normal(0.0, TANGENTIAL_SPREAD)), 0.0),
            R=R,
            t=t,
        )
    return rig
