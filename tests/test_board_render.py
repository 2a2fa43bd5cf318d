"""Board captures rendered through real intrinsics + distortion, checked with OpenCV's detectors.

The rig: 13 cameras at 1 m (azimuths 0, +-30, +-60 deg; elevations +20, 0, -15 deg),
512 px, f = 2.15 * 512 px, k1 = -0.03, looking at the head position (origin).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pytest

from capture_schema.board import CharucoBoardSpec, ChessboardSpec
from capture_schema.cameras import Camera, look_at
from capture_simulator.board_render import (
    DEFAULT_BOARD,
    DEFAULT_N_BOARD_POSES,
    DEFAULT_POSE_SPREAD_M,
    board_poses,
    project_board_corners,
    render_board_view,
    undistort_normalized,
)
from fitting.calibration.boards import board_object_points, board_texture, detect_board, make_charuco_board

SIZE = 512
IN_VIEW_MAX_OBLIQUITY_DEG = 60.0


def _rig(size: int = SIZE) -> dict[str, Camera]:
    cams = {}
    rings = (("up", 20.0, (0, -30, 30, -60, 60)), ("mid", 0.0, (0, -30, 30, -60, 60)), ("low", -15.0, (0, -30, 30)))
    for ring, elevation, azimuths in rings:
        for azimuth in azimuths:
            a, e = np.radians([azimuth, elevation])
            centre = np.array([np.sin(a) * np.cos(e), -np.sin(e), -np.cos(a) * np.cos(e)])
            R, t = look_at(centre, np.zeros(3))
            f = 2.15 * size
            name = f"{ring}_{'L' if azimuth < 0 else 'R' if azimuth > 0 else 'C'}{abs(azimuth):02d}"
            c = (size - 1) / 2
            cams[name] = Camera(size, size, f, f, c + 1.5, c - 1.0, (-0.03, 0.0, 0.0, 0.0, 0.0), R, t)
    return cams


def _obliquity_deg(spec, R: np.ndarray, t: np.ndarray, cam: Camera) -> float:
    centre = t + R @ np.array([spec.width_m / 2, spec.height_m / 2, 0.0])
    to_cam = cam.center - centre
    return float(np.degrees(np.arccos(to_cam @ -R[:, 2] / np.linalg.norm(to_cam))))


@dataclass
class View:
    pose: int
    camera: str
    visible: np.ndarray
    truth: np.ndarray
    obliquity: float
    ids: np.ndarray
    corners: np.ndarray

    @property
    def in_view(self) -> bool:
        return bool(self.visible.all()) and self.obliquity <= IN_VIEW_MAX_OBLIQUITY_DEG

    @property
    def detected(self) -> bool:
        return len(self.ids) >= max(4, self.visible.sum() // 2)

    def errors(self) -> np.ndarray:
        return np.linalg.norm(self.corners - self.truth[self.ids], axis=1)


def _capture(spec, poses, cams, noise_sigma: float, seed: int) -> list[View]:
    detector = cv2.aruco.CharucoDetector(make_charuco_board(spec))
    rng = np.random.default_rng(seed)
    views = []
    for i, (R, t) in enumerate(poses):
        for name, cam in cams.items():
            truth, visible = project_board_corners(spec, R, t, cam)
            gray = render_board_view(spec, R, t, cam, rng, noise_sigma=noise_sigma)
            corners, ids, _, _ = detector.detectBoard(gray)
            ids = np.zeros(0, int) if ids is None else ids.ravel()
            corners = np.zeros((0, 2)) if ids.size == 0 else corners.reshape(-1, 2).astype(np.float64)
            views.append(View(i, name, visible, truth, _obliquity_deg(spec, R, t, cam), ids, corners))
    return views


@pytest.fixture(scope="module")
def rig() -> dict[str, Camera]:
    return _rig()


@pytest.fixture(scope="module")
def poses() -> list[tuple[np.ndarray, np.ndarray]]:
    return board_poses(8, np.random.default_rng(0))


@pytest.fixture(scope="module")
def charuco_views(rig, poses) -> list[View]:
    return _capture(DEFAULT_BOARD, poses, rig, noise_sigma=2.0, seed=1)


def test_default_board() -> None:
    assert DEFAULT_BOARD == CharucoBoardSpec(7, 5, 0.04, 0.03, "DICT_5X5_100")
    assert DEFAULT_N_BOARD_POSES >= 8


def test_board_poses_face_every_camera(rig) -> None:
    poses = board_poses(DEFAULT_N_BOARD_POSES, np.random.default_rng(3))
    assert len(poses) == DEFAULT_N_BOARD_POSES
    for R, t in poses:
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-9) and np.linalg.det(R) == pytest.approx(1.0)
        centre = t + R @ np.array([DEFAULT_BOARD.width_m / 2, DEFAULT_BOARD.height_m / 2, 0.0])
        assert np.all(np.abs(centre) <= np.array(DEFAULT_POSE_SPREAD_M) + 1e-9)  # around the head position
        tilt = np.degrees(np.arccos(-R[:, 2] @ np.array([0.0, 0.0, -1.0])))
        assert tilt <= 58.0
    obliquity = np.array([[_obliquity_deg(DEFAULT_BOARD, R, t, cam) for cam in rig.values()] for R, t in poses])
    assert obliquity.min(axis=0).max() < 22.0, "some camera is never faced by the board"
    assert ((obliquity < 45.0).sum(axis=1) >= 3).all(), "a pose is seen well by fewer than 3 cameras"
    # the first poses already cover left, right, up and down tilts
    normals = np.array([-R[:, 2] for R, _ in poses[:5]])
    assert normals[:, 0].max() > 0.5 and normals[:, 0].min() < -0.5
    assert normals[:, 1].max() > 0.4 and normals[:, 1].min() < -0.4
    target = np.array([0.1, -0.05, 0.2])
    shifted = board_poses(3, np.random.default_rng(3), target=target)
    assert np.allclose([t for _, t in shifted], [t + target for _, t in poses[:3]])


def test_charuco_detected_in_most_views_in_sight(charuco_views) -> None:
    in_view = [v for v in charuco_views if v.in_view]
    assert len(in_view) >= 60
    rate = np.mean([v.detected for v in in_view])
    assert rate >= 0.9, f"detected in only {rate:.0%} of {len(in_view)} views in sight"
    for pose in sorted({v.pose for v in charuco_views}):
        seen_by = [v.camera for v in charuco_views if v.pose == pose and v.detected]
        assert len(seen_by) >= 2, f"pose {pose} detected by {seen_by}"
    for cam in sorted({v.camera for v in charuco_views}):
        assert any(v.detected for v in charuco_views if v.camera == cam), f"camera {cam} never sees the board"


def test_charuco_corners_match_ground_truth(charuco_views) -> None:
    views = [v for v in charuco_views if v.in_view and v.detected]
    for v in views:
        assert v.visible[v.ids].all(), "detected a corner the truth says is hidden"
    errors = np.concatenate([v.errors() for v in views])
    assert errors.mean() < 0.15, f"mean corner error {errors.mean():.3f} px"
    assert errors.max() < 1.0, f"max corner error {errors.max():.3f} px"


def test_noise_free_corners_are_tighter(rig, poses) -> None:
    views = _capture(DEFAULT_BOARD, poses[:3], rig, noise_sigma=0.0, seed=2)
    errors = np.concatenate([v.errors() for v in views if v.in_view and v.detected])
    assert errors.size > 400
    assert errors.mean() < 0.08, f"mean corner error {errors.mean():.3f} px"
    assert errors.max() < 0.5, f"max corner error {errors.max():.3f} px"


def test_chessboard_found_with_matching_corners(rig) -> None:
    """findChessboardCornersSB finds OpenCV's classic 9x6 board in our order (no flips).

    SB's own corner model errs up to ~0.6 px on 27 px squares seen at 45 degrees;
    cornerSubPix from the same start lands within ~0.1 px, so the render is not to blame.
    """
    spec = ChessboardSpec(cols=9, rows=6, square_length_m=0.025)
    assert not spec.order_ambiguous
    rng = np.random.default_rng(4)
    poses = board_poses(4, np.random.default_rng(5), board_size_m=(spec.width_m, spec.height_m))
    found = tried = 0
    raw, refined = [], []
    for R, t in poses:
        for name in ("mid_C00", "mid_L30", "mid_R30", "up_C00", "low_C00"):
            cam = rig[name]
            truth, visible = project_board_corners(spec, R, t, cam)
            if not visible.all() or _obliquity_deg(spec, R, t, cam) > 50:
                continue
            tried += 1
            gray = render_board_view(spec, R, t, cam, rng)
            ids, corners = detect_board(spec, gray)
            if len(ids) == 0:
                continue
            found += 1
            raw.append(np.linalg.norm(corners - truth[ids], axis=1))  # forward order, no flips
            criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_COUNT, 50, 1e-4)
            better = cv2.cornerSubPix(gray, corners.astype(np.float32).reshape(-1, 1, 2), (5, 5), (-1, -1), criteria)
            refined.append(np.linalg.norm(better.reshape(-1, 2) - truth[ids], axis=1))
    assert tried >= 10 and found >= 0.8 * tried, f"found {found} of {tried}"
    raw, refined = np.concatenate(raw), np.concatenate(refined)
    assert raw.mean() < 0.1 and raw.max() < 1.0, (raw.mean(), raw.max())
    assert refined.mean() < 0.08 and refined.max() < 0.25, (refined.mean(), refined.max())


def _edge_truth_u(spec, R, t, cam: Camera, x_board: float, v: float) -> float:
    """Where the board line x = x_board crosses image row v (dense projection + interpolation)."""
    ys = np.linspace(0.0, spec.height_m, 4001)
    pts = np.stack([np.full_like(ys, x_board), ys, np.zeros_like(ys)], axis=1) @ R.T + t
    uv = cam.project(pts)
    order = np.argsort(uv[:, 1])
    return float(np.interp(v, uv[order, 1], uv[order, 0]))


@pytest.mark.parametrize("yaw_deg", [0.0, 35.0])
def test_rendered_edges_sit_exactly_where_projected(yaw_deg: float) -> None:
    """Sub-pixel exactness (pixel-centre conventions, texture origin, distortion inverse).

    Summing a row's normalised intensities across one black/white edge measures the
    edge position (to ~0.01 px frontally, ~0.035 px at 35 degrees where supersampling
    aliases); a half-texel or half-pixel slip shows up as >= 0.1 px.
    """
    spec = ChessboardSpec(cols=6, rows=4, square_length_m=0.04)
    R0, t0 = look_at(np.array([0.05, -0.03, -0.9]), np.zeros(3))
    cam = Camera(SIZE, SIZE, 1100.0, 1100.0, 257.3, 254.1, (-0.03, 0.01, 0.0005, -0.0003, 0.0), R0, t0)
    a = np.radians(yaw_deg)
    R = np.array([[np.cos(a), 0.0, np.sin(a)], [0.0, 1.0, 0.0], [-np.sin(a), 0.0, np.cos(a)]])
    t = np.array([-0.0713, -0.1, 0.0]) - R @ np.array([0.0, 0.0, 0.0])
    img = render_board_view(spec, R, t, cam, np.random.default_rng(0), noise_sigma=0.0, blur_sigma=0.0).astype(float)
    offsets = []
    for col in range(1, spec.cols + 1):  # every inner vertical edge, mid-way down square row 1 and 3
        for y_board in (0.06, 0.14):
            p = cam.project((R @ np.array([col * spec.square_length_m, y_board, 0.0]) + t)[None])[0]
            v = int(round(p[1]))
            u_true = _edge_truth_u(spec, R, t, cam, col * spec.square_length_m, v)
            lo, hi = int(np.floor(u_true)) - 9, int(np.floor(u_true)) + 10
            row = img[v, lo : hi + 1]
            left, right = row[:3].mean(), row[-3:].mean()
            frac_right = (row - left) / (right - left)  # 0 on the left side, 1 on the right
            u_est = hi + 0.5 - frac_right.sum()
            offsets.append(u_est - u_true)
    offsets = np.array(offsets)
    assert np.abs(offsets).max() < 0.05, f"edge off by {np.abs(offsets).max():.4f} px"
    assert abs(offsets.mean()) < 0.015, f"edges shifted by {offsets.mean():.4f} px on average"


@pytest.mark.parametrize(
    "spec", [DEFAULT_BOARD, CharucoBoardSpec(5, 4, 0.05, 0.035, "DICT_4X4_50"), ChessboardSpec(7, 4, 0.03)]
)
def test_texture_mapping_puts_corners_between_pixels(spec) -> None:
    texture = board_texture(spec, px_per_square=24)
    image = texture.image
    uv = texture.to_pixels(board_object_points(spec))
    assert np.allclose(uv - 0.5, np.round(uv - 0.5), atol=1e-6), "corners must fall on pixel boundaries"
    for u, v in uv:
        c, r = int(round(u - 0.5)), int(round(v - 0.5))
        block = image[r : r + 2, c : c + 2].astype(int)  # the four pixels touching the corner
        assert block[0, 0] == block[1, 1] and block[0, 1] == block[1, 0] and block[0, 0] != block[0, 1]
    h, w = image.shape
    # the white margin surrounds the grid, whose outer edge is at origin_px
    assert (image[: int(texture.origin_px[1] + 0.5)] == 255).all()
    assert texture.to_pixels(np.array([spec.width_m, spec.height_m])) == pytest.approx([w - 0.5 - 12, h - 0.5 - 12])


def test_object_points_follow_opencv_order() -> None:
    board = make_charuco_board(DEFAULT_BOARD)
    assert np.allclose(board_object_points(DEFAULT_BOARD), board.getChessboardCorners())
    chess = board_object_points(ChessboardSpec(9, 6, 0.025))
    assert chess.shape == (54, 3) and np.allclose(chess[:, 2], 0)
    assert np.allclose(chess[0], [0.025, 0.025, 0]) and np.allclose(chess[1], [0.05, 0.025, 0])
    assert np.allclose(chess[9], [0.025, 0.05, 0]) and np.allclose(chess[-1], [0.225, 0.15, 0])


def test_visibility_mask(rig) -> None:
    cam = rig["mid_C00"]
    R, t = np.eye(3), np.array([-0.14, -0.10, 0.0])
    _, visible = project_board_corners(DEFAULT_BOARD, R, t, cam)
    assert visible.all()
    flipped = np.diag([-1.0, 1.0, -1.0])  # printed side turned away from the cameras
    _, visible = project_board_corners(DEFAULT_BOARD, flipped, np.array([0.14, -0.10, 0.0]), cam)
    assert not visible.any()
    _, visible = project_board_corners(DEFAULT_BOARD, R, np.array([-0.14, -0.10, -1.5]), cam)  # behind
    assert not visible.any()
    truth, visible = project_board_corners(DEFAULT_BOARD, R, np.array([0.10, -0.10, 0.0]), cam)  # half out
    assert 0 < visible.sum() < visible.size
    assert (visible == (truth[:, 0] <= SIZE - 0.5)).all()


def test_back_of_board_shows_no_pattern(rig) -> None:
    cam = rig["mid_C00"]
    flipped = np.diag([-1.0, 1.0, -1.0])
    gray = render_board_view(DEFAULT_BOARD, flipped, np.array([0.14, -0.10, 0.0]), cam, np.random.default_rng(0))
    ids, _ = detect_board(DEFAULT_BOARD, gray)
    assert len(ids) == 0
    assert gray[200:300, 200:300].std() < 4.0  # uniform backing plus noise


def test_render_is_deterministic_uint8(rig, poses) -> None:
    R, t = poses[0]
    a = render_board_view(DEFAULT_BOARD, R, t, rig["up_L30"], np.random.default_rng(9))
    b = render_board_view(DEFAULT_BOARD, R, t, rig["up_L30"], np.random.default_rng(9))
    assert a.dtype == np.uint8 and a.shape == (SIZE, SIZE)
    assert np.array_equal(a, b)
    assert 0 < a.min() and a.max() < 255 and a.std() > 30


def test_undistortion_inverts_the_camera_model() -> None:
    cam = Camera(SIZE, SIZE, 1100.0, 1100.0, 256.0, 256.0, (-0.08, 0.02, 0.001, -0.002, 0.005))
    xy = np.random.default_rng(0).uniform(-0.35, 0.35, size=(5000, 2))
    undistorted, valid = undistort_normalized(cam, cam.distort_normalized(xy))
    assert valid.all()
    assert np.abs(undistorted - xy).max() < 1e-10
