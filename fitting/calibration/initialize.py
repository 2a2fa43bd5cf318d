"""Initial rig from board detections: intrinsics, camera poses, board poses.

A bundle adjustment only finds the maximum-likelihood rig when it starts in its
basin, so the start is built from independent, robust pieces:

1. Intrinsics + distortion per camera with ``cv2.calibrateCamera`` (5 terms) on
   that camera's views with enough, non-collinear corners. All five terms are
   free from the start: holding k3 at 0 for cameras with few views was tried and
   sent OpenCV's 4-photo ChArUco sample to fx 354 instead of ~455 px, a minimum the
   bundle adjustment could not leave (the likelihood is nearly flat there:
   RMS 0.188 vs 0.188 px). k3 = 0 is only the fallback when the 5-term fit fails.
   Views seen more than ``MAX_OBLIQUITY_DEG`` from face-on are then dropped and
   the camera re-calibrated without them (unless that would leave it too few).
2. Each usable view's board pose by PnP with those intrinsics.
3. Relative camera poses: for every pair of cameras the board poses at shared
   moments each give one hypothesis; the best-supported agreeing set is averaged
   (``fitting.geometry.consensus_pose``), so a bad view cannot drag a pose away. Poses are
   chained along a maximum spanning tree of the co-visibility graph (edge weight =
   shared moments), from the first camera, which defines the world frame.
4. Board poses in the world: per moment, the same consensus over every camera's
   view of it. Views that disagree with a consensus of at least two others by more
   than the tolerance are left out of the bundle adjustment and reported.

Chessboards that look the same turned by 180 degrees (``order_ambiguous``) are
resolved here, not rejected: every view contributes both possible corner orders
as hypotheses (the flip is a rigid 180-degree turn of the board about its centre),
the consensus keeps the order that agrees with the other cameras, and the view's
ids are renumbered to it. A moment seen by one camera only keeps the detector's
order, which is equally valid there (the two orders give identical constraints).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from capture_schema.board import BoardSpec, CharucoBoardSpec, ChessboardSpec
from capture_schema.cameras import Camera
from fitting.calibration.boards import board_object_points
from fitting.calibration.detect import (
    CameraDetections,
    FolderDetections,
    ProgressCallback,
    ViewDetection,
    frame_sort_key,
)
from fitting.calibration.errors import CalibrationError, implausible_camera
from fitting.geometry import consensus_pose, inv_h, to_h

#: A view needs this many corners, not all on one line, to give a board pose.
MIN_POSE_CORNERS = 6
#: A camera needs this many views with enough corners for its own intrinsics.
MIN_CALIBRATION_VIEWS = 3
#: Views of the board more oblique than this (angle between its normal and the line of
#: sight) are left out: corner detectors err there (ChArUco on 1024 px renders: 0.03-0.08 px
#: RMS up to 60 degrees, 0.16 px at 60-70, 0.8 px beyond 70).
MAX_OBLIQUITY_DEG = 70.0
#: Pose hypotheses agree within this rotation and this fraction of the board distance.
ROTATION_TOLERANCE_DEG = 5.0
TRANSLATION_TOLERANCE = 0.1


@dataclass
class InitialRig:
    """Starting point of the bundle adjustment (world = first camera's frame, metres)."""

    spec: BoardSpec
    cameras: dict[str, Camera]
    board_poses: dict[str, np.ndarray]  # frame key -> T_world_board (4x4)
    views: dict[str, dict[str, ViewDetection]]  # camera -> frame -> detection, ids made consistent
    intrinsics_rms_px: dict[str, float]  # cv2.calibrateCamera RMS per camera
    n_calibration_views: dict[str, int]
    tree: list[tuple[str, str, int]]  # (parent, child, shared moments) edges used for chaining
    rejected_views: dict[str, dict[str, str]] = field(default_factory=dict)  # camera -> frame -> reason
    n_reordered_views: int = 0  # ambiguous chessboard views whose corner order was reversed


def min_calibration_corners(spec: BoardSpec) -> int:
    """Corners a view needs to enter ``calibrateCamera`` (a chessboard is all or nothing)."""
    if isinstance(spec, CharucoBoardSpec):
        return max(8, spec.n_corners // 3)
    return spec.n_corners


def _board_flip(spec: BoardSpec) -> np.ndarray | None:
    """T_board_flipped for a 180-degree-symmetric chessboard (id i <-> N-1-i), else None."""
    if isinstance(spec, ChessboardSpec) and spec.order_ambiguous:
        return to_h(np.diag([-1.0, -1.0, 1.0]), [spec.width_m, spec.height_m, 0.0])
    return None


def _not_collinear(points: np.ndarray, square: float) -> bool:
    centred = points[:, :2] - points[:, :2].mean(0)
    return bool(np.linalg.svd(centred, compute_uv=False)[-1] >= 0.25 * square)


def _calibrate_intrinsics(
    obj: np.ndarray, views: list[ViewDetection], size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, float]:
    criteria = (cv2.TERM_CRITERIA_COUNT + cv2.TERM_CRITERIA_EPS, 100, 1e-12)
    object_points = [obj[v.ids].astype(np.float32) for v in views]
    image_points = [v.corners.astype(np.float32).reshape(-1, 1, 2) for v in views]
    for flags in (0, cv2.CALIB_FIX_K3):
        try:
            rms, K, dist, _, _ = cv2.calibrateCamera(object_points, image_points, size, None, None,
                                                     flags=flags, criteria=criteria)
        except cv2.error:
            continue
        dist = dist.reshape(-1)[:5]
        if np.isfinite(rms) and np.all(np.isfinite(K)) and np.all(np.isfinite(dist)) and K[0, 0] > 0 and K[1, 1] > 0:
            return K, dist, float(rms)
    raise CalibrationError("cv2.calibrateCamera found no finite intrinsics")


def _pnp(obj: np.ndarray, view: ViewDetection, K: np.ndarray, dist: np.ndarray) -> np.ndarray | None:
    pts3, pts2 = obj[view.ids].astype(np.float64), view.corners.astype(np.float64)
    ok, rvec, tvec = cv2.solvePnP(pts3, pts2, K, dist, flags=cv2.SOLVEPNP_IPPE)
    if not ok:
        return None
    rvec, tvec = cv2.solvePnPRefineLM(pts3, pts2, K, dist, rvec, tvec)
    T = to_h(cv2.Rodrigues(rvec)[0], tvec)
    return T if T[2, 3] > 0 and np.all(np.isfinite(T)) else None


def _obliquity_deg(T_cam_board: np.ndarray, centre_board: np.ndarray) -> float:
    """Angle between the board's printed-side normal (-z) and the direction to the camera."""
    centre = T_cam_board[:3, :3] @ centre_board + T_cam_board[:3, 3]
    normal = -T_cam_board[:3, 2]
    return float(np.degrees(np.arccos(np.clip(normal @ -centre / np.linalg.norm(centre), -1.0, 1.0))))


def _spanning_tree(order: list[str], shared: dict[tuple[str, str], int]) -> list[tuple[str, str, int]]:
    """Prim's maximum spanning tree from ``order[0]``; raises naming unreachable cameras."""
    in_tree = {order[0]}
    edges: list[tuple[str, str, int]] = []
    while len(in_tree) < len(order):
        best = None
        for a in order:
            if a not in in_tree:
                continue
            for b in order:
                if b in in_tree:
                    continue
                n = shared.get((a, b), 0)
                if n > 0 and (best is None or n > best[2]):
                    best = (a, b, n)
        if best is None:
            missing = [c for c in order if c not in in_tree]
            raise CalibrationError(
                f"camera(s) {', '.join(repr(c) for c in missing)} never see the board at the same moment as "
                f"cameras connected to {order[0]!r} (no shared moment with usable detections), so their pose "
                "relative to the rest of the rig is unknown; shoot board poses both see",
                camera=missing[0],
            )
        edges.append(best)
        in_tree.add(best[1])
    return edges


@dataclass
class _CameraInit:
    K: np.ndarray
    dist: np.ndarray
    rms: float
    n_calib: int
    poses: dict[str, np.ndarray]  # frame -> T_cam_board of the views kept
    rejected: dict[str, str]


def _init_camera(cam: str, det: CameraDetections, obj: np.ndarray, spec: BoardSpec, hint: str) -> _CameraInit:
    """Intrinsics and per-view board poses of one camera; grazing views dropped when others suffice."""
    min_corners = min_calibration_corners(spec)
    board_centre = np.array([spec.width_m / 2, spec.height_m / 2, 0.0])
    rejected: dict[str, str] = {}
    good: dict[str, ViewDetection] = {}
    for key, view in det.views.items():
        if len(view.ids) >= MIN_POSE_CORNERS and _not_collinear(obj[view.ids], spec.square_length_m):
            good[key] = view
        else:
            rejected[key] = f"too few corners for a pose ({len(view.ids)}, or all on one line)"

    def calibrate(views: dict[str, ViewDetection]) -> tuple[np.ndarray, np.ndarray, float, int]:
        calib_views = [v for v in views.values() if len(v.ids) >= min_corners]
        if len(calib_views) < MIN_CALIBRATION_VIEWS or det.image_size is None:
            raise CalibrationError(
                f"camera {cam!r} has {len(calib_views)} usable board view(s) but needs at least "
                f"{MIN_CALIBRATION_VIEWS} (a usable view shows >= {min_corners} board corners); the board was "
                f"found in {det.n_detected} of its {det.n_images} images ({det.n_unreadable} unreadable, "
                f"{det.n_no_board} without a board){hint}",
                camera=cam,
            )
        try:
            return (*_calibrate_intrinsics(obj, calib_views, det.image_size), len(calib_views))
        except CalibrationError as exc:
            raise CalibrationError(f"camera {cam!r}: {exc}", camera=cam) from None

    K, dist, rms, n_calib = calibrate(good)
    poses: dict[str, np.ndarray] = {}
    oblique: dict[str, float] = {}
    for key, view in good.items():
        T = _pnp(obj, view, K, dist)
        if T is None:
            rejected[key] = "no valid board pose (PnP failed)"
        elif (angle := _obliquity_deg(T, board_centre)) > MAX_OBLIQUITY_DEG:
            oblique[key] = angle
        else:
            poses[key] = T
    remaining = {k: good[k] for k in poses}
    if oblique and sum(len(v.ids) >= min_corners for v in remaining.values()) >= MIN_CALIBRATION_VIEWS:
        # Re-calibrate without the grazing views; keep them only if the camera has nothing better.
        K, dist, rms, n_calib = calibrate(remaining)
        for key, angle in oblique.items():
            rejected[key] = f"board seen {angle:.0f} degrees from face-on (> {MAX_OBLIQUITY_DEG:.0f})"
        poses = {}
        for key, view in remaining.items():
            T = _pnp(obj, view, K, dist)
            if T is None:
                rejected[key] = "no valid board pose (PnP failed)"
            else:
                poses[key] = T
    else:
        for key in oblique:
            T = _pnp(obj, good[key], K, dist)
            if T is not None:
                poses[key] = T
    return _CameraInit(K, dist, rms, n_calib, poses, rejected)


def initialize_rig(detections: FolderDetections, progress: ProgressCallback | None = None) -> InitialRig:
    """Build the initial rig (see module docstring). Raises ``CalibrationError`` naming the camera."""
    spec = detections.spec
    order = list(detections.cameras)
    if not order:
        raise CalibrationError("no cameras to calibrate")
    obj = board_object_points(spec)
    flip = _board_flip(spec)
    n_steps = len(order) + 2
    step = 0

    def tick() -> None:
        nonlocal step
        step += 1
        if progress is not None:
            progress("initialize", step, n_steps)

    all_images = sum(d.n_images for d in detections.cameras.values())
    all_found = sum(d.n_detected for d in detections.cameras.values())
    hint = (
        f"; over all cameras the board was found in only {all_found} of {all_images} images: "
        "check that board.json describes the board in the pictures"
        if all_found < 0.5 * all_images else ""
    )
    intrinsics: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    rms: dict[str, float] = {}
    n_calib: dict[str, int] = {}
    view_pose: dict[str, dict[str, np.ndarray]] = {}
    usable: dict[str, dict[str, ViewDetection]] = {}
    rejected: dict[str, dict[str, str]] = {}
    for cam in order:
        init = _init_camera(cam, detections.cameras[cam], obj, spec, hint)
        intrinsics[cam] = (init.K, init.dist)
        rms[cam], n_calib[cam], view_pose[cam], rejected[cam] = init.rms, init.n_calib, init.poses, init.rejected
        usable[cam] = {k: detections.cameras[cam].views[k] for k in init.poses}
        tick()

    distances = [T[2, 3] for poses in view_pose.values() for T in poses.values()]
    trans_tol = TRANSLATION_TOLERANCE * float(np.median(distances))
    variants = [np.eye(4)] if flip is None else [np.eye(4), flip]

    shared = {}
    for a in order:
        for b in order:
            if a != b:
                shared[(a, b)] = len(view_pose[a].keys() & view_pose[b].keys())
    tree = _spanning_tree(order, shared)

    cam_from_world: dict[str, np.ndarray] = {order[0]: np.eye(4)}
    for parent, child, _ in tree:
        candidates, weights = [], []
        for key in sorted(view_pose[parent].keys() & view_pose[child].keys(), key=frame_sort_key):
            w = min(len(usable[parent][key].ids), len(usable[child][key].ids))
            for F in variants:
                candidates.append(view_pose[child][key] @ F @ inv_h(view_pose[parent][key]))
                weights.append(w)
        child_from_parent, _ = consensus_pose(candidates, weights, ROTATION_TOLERANCE_DEG, trans_tol)
        cam_from_world[child] = child_from_parent @ cam_from_world[parent]
    tick()

    board_poses: dict[str, np.ndarray] = {}
    views: dict[str, dict[str, ViewDetection]] = {cam: {} for cam in order}
    n_reordered = 0
    for key in detections.frames:
        seen = [cam for cam in order if key in view_pose[cam]]
        if not seen:
            continue
        candidates, weights, owners = [], [], []
        for cam in seen:
            for v, F in enumerate(variants):
                candidates.append(inv_h(cam_from_world[cam]) @ view_pose[cam][key] @ F)
                weights.append(len(usable[cam][key].ids))
                owners.append((cam, v))
        pose, inliers = consensus_pose(candidates, weights, ROTATION_TOLERANCE_DEG, trans_tol)
        n_agree = len({owners[i][0] for i in np.flatnonzero(inliers)})
        board_poses[key] = pose
        for i, (cam, v) in enumerate(owners):
            view = usable[cam][key]
            if inliers[i]:
                if v == 1:  # the reversed order agrees with the rig: renumber the corners
                    view = ViewDetection(spec.n_corners - 1 - view.ids, view.corners)
                    n_reordered += 1
                views[cam][key] = view
        for cam in seen:
            if key not in views[cam]:
                if n_agree >= 2:
                    rejected[cam][key] = (
                        f"board pose disagrees with {n_agree} other camera(s) at this moment "
                        f"(> {ROTATION_TOLERANCE_DEG} deg or > {trans_tol * 1000:.0f} mm)"
                    )
                else:  # no majority to judge by: keep it, the robust loss decides
                    views[cam][key] = usable[cam][key]
    tick()

    cameras = {}
    for cam in order:
        K, dist = intrinsics[cam]
        width, height = detections.cameras[cam].image_size
        T = cam_from_world[cam]
        try:
            cameras[cam] = Camera(width, height, K[0, 0], K[1, 1], K[0, 2], K[1, 2], tuple(dist), T[:3, :3], T[:3, 3])
        except ValueError as exc:
            raise implausible_camera(cam, "OpenCV initial calibration", exc) from None
    board_poses = {k: board_poses[k] for k in sorted(board_poses, key=frame_sort_key)}
    return InitialRig(spec, cameras, board_poses, views, rms, n_calib, tree,
                      {c: r for c, r in rejected.items() if r}, n_reordered)
