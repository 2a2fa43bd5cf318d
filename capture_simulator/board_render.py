"""Synthetic calibration-board captures, rendered through a camera's lens distortion.

Rendering is by inverse mapping so that the geometry is exact: every supersampled
pixel's distorted coordinate is undistorted (Newton iteration on the camera's own
``distort_normalized``, so render and ``Camera.project`` agree to ~1e-9 px), turned
into a world ray, intersected with the board plane and looked up in the board
texture (``fitting.calibration.boards.board_texture``, bilinear ``cv2.remap``). Supersampled
pixel ``j`` has its centre at image coordinate ``(j + 0.5) / s - 0.5``, so a block of
``s x s`` averages to a pixel centred on an integer, OpenCV's convention.

Board poses are board-to-world ``(R, t)``: ``X_world = R @ X_board + t``, board frame
as in ``capture_schema.board`` (z into the board, so the printed side faces ``-R[:, 2]``).
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from capture_schema.board import BoardSpec, CharucoBoardSpec
from capture_schema.cameras import Camera
from fitting.calibration.boards import BoardTexture, board_object_points, board_texture

#: The simulator's board: 7x5 squares of 4 cm (28 x 20 cm pattern, 24 corners, 17 markers).
#: At 1 m with f ~ 1100 px a square spans ~44 px and a marker cell ~4.7 px, so markers
#: still decode at 60+ degrees obliquity, while the board fills ~60 % of a 512 px frame
#: and stays in view under tilt and a few cm of offset.
DEFAULT_BOARD = CharucoBoardSpec(7, 5, 0.04, 0.03, "DICT_5X5_100")

#: How far (x, y, z, metres) board centres stray from the target: enough for corners to
#: reach towards the image edges and for distances to vary.
DEFAULT_POSE_SPREAD_M = (0.10, 0.08, 0.10)

#: Simulated sessions shoot this many board poses unless told otherwise.
DEFAULT_N_BOARD_POSES = 12

#: Facing directions (azimuth, elevation) in degrees of the board's printed side, in
#: the order poses are drawn: frontal, left/right, up/down, then the diagonals, so any
#: prefix of 5+ poses already faces every ring and side of the rig. Azimuth is
#: positive towards world +x, elevation positive towards world up (-y).
FACING_SCHEDULE_DEG: tuple[tuple[float, float], ...] = (
    (0.0, 0.0),
    (45.0, 0.0),
    (-45.0, 0.0),
    (0.0, 35.0),
    (0.0, -30.0),
    (40.0, 25.0),
    (-40.0, 25.0),
    (35.0, -25.0),
    (-35.0, -25.0),
    (50.0, 10.0),
    (-50.0, 10.0),
    (15.0, 15.0),
)

_BOARD_DARK, _BOARD_LIGHT, _BOARD_BACK = 25.0, 215.0, 70.0


def _facing_rotation(azimuth_deg: float, elevation_deg: float, roll_deg: float) -> np.ndarray:
    """Board-to-world rotation whose printed side faces the given direction."""
    az, el, roll = np.radians([azimuth_deg, elevation_deg, roll_deg])
    normal = np.array([np.sin(az) * np.cos(el), -np.sin(el), -np.cos(az) * np.cos(el)])
    z = -normal
    x = np.cross([0.0, 1.0, 0.0], z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z], axis=1)
    c, s = np.cos(roll), np.sin(roll)
    return R @ np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def board_poses(
    n_poses: int,
    rng: np.random.Generator,
    target: np.ndarray = np.zeros(3),
    board_size_m: tuple[float, float] = (DEFAULT_BOARD.width_m, DEFAULT_BOARD.height_m),
    spread_m: tuple[float, float, float] = DEFAULT_POSE_SPREAD_M,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Board-to-world ``(R, t)`` poses centred near ``target``, facing every part of the rig.

    Tilts follow ``FACING_SCHEDULE_DEG`` (up to 50 degrees off frontal) with a few
    degrees of jitter, a random in-plane roll of up to 20 degrees (so corners are not
    always axis-aligned) and positions spread by up to ``spread_m`` around the target,
    so corners reach towards the image edges (distortion and principal point need
    that coverage) and distances vary (focal length against distance).
    ``board_size_m`` (the pattern's width, height) only centres the pattern on the target.
    """
    if n_poses < 1:
        raise ValueError(f"n_poses must be >= 1, got {n_poses}")
    target = np.asarray(target, dtype=np.float64).reshape(3)
    half = np.array([board_size_m[0] / 2, board_size_m[1] / 2, 0.0])
    poses = []
    for i in range(n_poses):
        az, el = FACING_SCHEDULE_DEG[i % len(FACING_SCHEDULE_DEG)]
        az += rng.uniform(-5.0, 5.0)
        el += rng.uniform(-5.0, 5.0)
        R = _facing_rotation(az, el, rng.uniform(-20.0, 20.0))
        centre = target + rng.uniform(-np.asarray(spread_m), np.asarray(spread_m))
        poses.append((R, centre - R @ half))
    return poses


def _distortion_jacobian(x: np.ndarray, y: np.ndarray, dist: tuple) -> tuple[np.ndarray, ...]:
    k1, k2, p1, p2, k3 = dist
    r2 = x * x + y * y
    radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
    dradial = k1 + r2 * (2.0 * k2 + 3.0 * r2 * k3)  # d radial / d r2
    j00 = radial + 2.0 * x * x * dradial + 2.0 * p1 * y + 6.0 * p2 * x
    j01 = 2.0 * x * y * dradial + 2.0 * p1 * x + 2.0 * p2 * y
    j10 = 2.0 * x * y * dradial + 2.0 * p1 * x + 2.0 * p2 * y
    j11 = radial + 2.0 * y * y * dradial + 6.0 * p1 * y + 2.0 * p2 * x
    return j00, j01, j10, j11


def undistort_normalized(camera: Camera, xy_distorted: np.ndarray, iterations: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Invert ``camera.distort_normalized`` by Newton iteration: (undistorted xy, valid mask).

    Invalid where the iteration does not converge or lands beyond the fold of the
    polynomial model (Jacobian not positive definite), i.e. no physical ray.
    """
    target = np.asarray(xy_distorted, dtype=np.float64)
    xy = target.copy()
    for _ in range(iterations):
        residual = camera.distort_normalized(xy) - target
        if np.all(np.abs(residual) < 1e-13):
            break
        j00, j01, j10, j11 = _distortion_jacobian(xy[..., 0], xy[..., 1], camera.dist)
        det = j00 * j11 - j01 * j10
        det = np.where(np.abs(det) < 1e-12, 1e-12, det)
        xy[..., 0] -= (j11 * residual[..., 0] - j01 * residual[..., 1]) / det
        xy[..., 1] -= (-j10 * residual[..., 0] + j00 * residual[..., 1]) / det
    residual = np.abs(camera.distort_normalized(xy) - target).max(axis=-1)
    j00, j01, j10, j11 = _distortion_jacobian(xy[..., 0], xy[..., 1], camera.dist)
    valid = np.isfinite(residual) & (residual < 1e-9) & (j00 > 0) & (j11 > 0) & (j00 * j11 - j01 * j10 > 0)
    return xy, valid


@lru_cache(maxsize=16)
def _pixel_rays(width: int, height: int, fx: float, fy: float, cx: float, cy: float, dist: tuple, ss: int):
    """Undistorted normalised rays of every supersampled pixel (float32) and their validity.

    Cached per intrinsics (~0.4 s to compute, 9 MB at 512 px and ss = 2) so that a
    13-camera rig pays once, whatever the number of board poses.
    """
    u = (np.arange(width * ss) + 0.5) / ss - 0.5
    v = (np.arange(height * ss) + 0.5) / ss - 0.5
    xd = np.empty((height * ss, width * ss, 2))
    xd[..., 0] = ((u - cx) / fx)[None, :]
    xd[..., 1] = ((v - cy) / fy)[:, None]
    cam = Camera(width, height, fx, fy, cx, cy, dist)
    xy, valid = undistort_normalized(cam, xd)
    xy = xy.astype(np.float32)
    xy.setflags(write=False)
    valid.setflags(write=False)
    return xy, valid


@lru_cache(maxsize=64)
def _float_texture(spec: BoardSpec, px_per_square: int) -> tuple[BoardTexture, np.ndarray]:
    for pps in range(px_per_square, px_per_square + 64, 8):  # OpenCV refuses a few sizes
        try:
            texture = board_texture(spec, pps)
            break
        except ValueError:
            continue
    else:
        texture = board_texture(spec, px_per_square)
    gray = texture.image.astype(np.float32) / np.float32(255.0)
    gray.setflags(write=False)
    return texture, gray


def _background(height: int, width: int) -> np.ndarray:
    """Mid-grey wall with a mild vertical/horizontal gradient (no corner-like structure)."""
    v = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None]
    u = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :]
    return 128.0 + 30.0 * v + 12.0 * u


def _texture_px_per_square(spec: BoardSpec, board_R: np.ndarray, board_t: np.ndarray, camera: Camera, ss: int) -> int:
    """Texels about one supersampled pixel in area (geometric mean of the board-to-image
    scales, smallest over the board), so bilinear lookup spreads each square edge over
    about one sample and the ``ss x ss`` average sees a ramp, not an aliased step. Edges
    stay on texel boundaries, so the geometry is unchanged; only the anti-aliasing is.
    (Texels sized for the most foreshortened direction blur markers at 60+ degrees.)"""
    step = 1e-3
    uv_per_metre = np.inf
    for x, y in ((0, 0), (1, 0), (0, 1), (1, 1), (0.5, 0.5)):
        p = np.array([x * spec.width_m, y * spec.height_m, 0.0])
        pts = np.stack([p, p + [step, 0, 0], p + [0, step, 0]]) @ board_R.T + board_t
        if (camera.depth(pts) <= 0.05).any():
            continue
        uv = camera.project(pts)
        jac = np.stack([uv[1] - uv[0], uv[2] - uv[0]], axis=1) / step
        sv = np.linalg.svd(jac, compute_uv=False)
        uv_per_metre = min(uv_per_metre, float(np.sqrt(sv[0] * sv[1])))
    if not np.isfinite(uv_per_metre):
        uv_per_metre = max(camera.fx, camera.fy)
    pps = ss * uv_per_metre * spec.square_length_m
    return int(np.clip(8 * np.floor(pps / 8), 16, 512))


def render_board_view(
    spec: BoardSpec,
    board_R: np.ndarray,
    board_t: np.ndarray,
    camera: Camera,
    rng: np.random.Generator,
    noise_sigma: float = 2.0,
    blur_sigma: float = 0.6,
    supersample: int = 2,
) -> np.ndarray:
    """Render one gray (H, W) uint8 capture of the board as ``camera`` sees it.

    Printed side: black 25, white 215 with a white margin of half a square; back
    side: uniform 70; elsewhere a mid-grey gradient. ``rng`` draws only the noise.
    """
    ss = int(supersample)
    if ss < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    board_R = np.asarray(board_R, dtype=np.float64).reshape(3, 3)
    board_t = np.asarray(board_t, dtype=np.float64).reshape(3)
    xy, ray_ok = _pixel_rays(camera.width, camera.height, camera.fx, camera.fy, camera.cx, camera.cy, camera.dist, ss)

    # Camera rays in the board frame: origin o, direction M @ (x, y, 1).
    M = (board_R.T @ camera.R.T).astype(np.float32)
    o = board_R.T @ (camera.center - board_t)
    x, y = xy[..., 0], xy[..., 1]
    dz = M[2, 0] * x + M[2, 1] * y + M[2, 2]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lam = np.float32(-o[2]) / dz
        hit = ray_ok & np.isfinite(lam) & (lam > 0)
        bx = np.float32(o[0]) + lam * (M[0, 0] * x + M[0, 1] * y + M[0, 2])
        by = np.float32(o[1]) + lam * (M[1, 0] * x + M[1, 1] * y + M[1, 2])

    texture, texture_gray = _float_texture(spec, _texture_px_per_square(spec, board_R, board_t, camera, ss))
    th, tw = texture_gray.shape
    map_u = np.where(hit, texture.origin_px[0] + texture.px_per_metre * bx, -10.0).astype(np.float32)
    map_v = np.where(hit, texture.origin_px[1] + texture.px_per_metre * by, -10.0).astype(np.float32)
    on_board = hit & (map_u >= -0.5) & (map_u < tw - 0.5) & (map_v >= -0.5) & (map_v < th - 0.5)

    background = _background(camera.height * ss, camera.width * ss)
    if o[2] < 0:  # camera on the printed side
        looked_up = cv2.remap(texture_gray, map_u, map_v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        board_value = _BOARD_DARK + (_BOARD_LIGHT - _BOARD_DARK) * looked_up
    else:
        board_value = np.float32(_BOARD_BACK)
    hires = np.where(on_board, board_value, background)

    image = hires.reshape(camera.height, ss, camera.width, ss).mean(axis=(1, 3), dtype=np.float32)
    if blur_sigma > 0:
        image = cv2.GaussianBlur(image, (0, 0), blur_sigma)
    if noise_sigma > 0:
        image = image + rng.normal(0.0, noise_sigma, image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def project_board_corners(
    spec: BoardSpec, board_R: np.ndarray, board_t: np.ndarray, camera: Camera
) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth pixels (N, 2) of the board's inner corners and a visibility mask (N,).

    Rows follow ``fitting.calibration.boards.board_object_points`` (ChArUco ids). Visible means in
    front of the camera, on the printed side, inside the image (pixel centres at
    integers, so ``[-0.5, W - 0.5]``) and within the lens model's valid region.
    """
    board_R = np.asarray(board_R, dtype=np.float64).reshape(3, 3)
    board_t = np.asarray(board_t, dtype=np.float64).reshape(3)
    world = board_object_points(spec) @ board_R.T + board_t
    cam = camera.world_to_camera(world)
    pixels = camera.project(world)
    in_front = cam[:, 2] > 1e-6
    facing = (camera.center - world) @ (-board_R[:, 2]) > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = cam[:, :2] / cam[:, 2:3]
    j00, j01, j10, j11 = _distortion_jacobian(xy[:, 0], xy[:, 1], camera.dist)
    lens_ok = (j00 > 0) & (j11 > 0) & (j00 * j11 - j01 * j10 > 0)
    inside = (
        (pixels[:, 0] >= -0.5)
        & (pixels[:, 0] <= camera.width - 0.5)
        & (pixels[:, 1] >= -0.5)
        & (pixels[:, 1] <= camera.height - 0.5)
    )
    return pixels, in_front & facing & lens_ok & inside
