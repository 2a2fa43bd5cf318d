"""Rig calibration (fitting.calibration) against a simulated rig's truth and real OpenCV data.

Simulated rig: the simulator's 13 cameras at 768 px (f ~ 1650 px) and 20 board poses,
rendered once per module (two spawned processes, one per half of the cameras; the
board poses depend only on the seed, so both halves see the same moments). The
estimated world is aligned to the true one by a similarity fitted on a head-sized
point cloud (points within 0.15 m of the origin, triangulated by the estimated
cameras from their true projections), then compared with the truth.

Real data: OpenCV's stereo chessboard sample and its ArUco tutorial ChArUco photos,
copied into ``tests/data`` (provenance and licences there).
"""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from conftest import need_reference_data
from capture_schema.board import ChessboardSpec, write_board
from capture_schema import derived_layout as layout
from capture_schema.calibration_file import read_calibration
from capture_schema.cameras import Camera
from capture_schema.converters import read_colmap_model, read_transforms
from capture_simulator.board_render import DEFAULT_BOARD, project_board_corners
from capture_simulator.rig import default_rig
from fitting.calibration.boards import board_object_points
from fitting.calibration import (
    CalibrationError,
    calibrate_folder,
    calibration_input_hash,
    write_calibration_outputs,
)
from fitting.calibration.detect import ViewDetection, detect_folder, detect_image
from fitting.geometry import to_h
from fitting.calibration.initialize import InitialRig, initialize_rig
from fitting.calibration.refine import refine_rig, residuals_for

SIZE = 768
N_POSES = 20
SEED = 0
DATA = Path(__file__).resolve().parent / "data"
STEREO = DATA / "opencv_stereo_chessboard"
CHARUCO = DATA / "opencv_charuco"


# --- simulated captures ------------------------------------------------------------


def _render_part(args: tuple) -> tuple[dict[str, list[bytes]], list]:
    from capture_simulator.simulate import render_calibration_captures

    size, seed, n_poses, names, board = args
    rig = default_rig(size=size, seed=seed)
    return render_calibration_captures({n: rig[n] for n in names}, board, n_poses, seed)


def render_calibration_folder(out: Path, size: int, n_poses: int, seed: int, board=DEFAULT_BOARD,
                              names: list[str] | None = None) -> tuple[dict[str, Camera], list]:
    """``out/board.json`` + ``out/<cam>/<NNN>.png``; returns the true cameras and board poses."""
    rig = default_rig(size=size, seed=seed)
    names = list(rig) if names is None else names
    halves = [names[0::2], names[1::2]]
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        parts = list(pool.map(_render_part, [(size, seed, n_poses, h, board) for h in halves if h]))
    write_board(out / "board.json", board)
    for captures, _ in parts:
        for cam, shots in captures.items():
            (out / cam).mkdir(parents=True)
            for i, data in enumerate(shots):
                (out / cam / f"{i:03d}.png").write_bytes(data)
    poses = parts[0][1]
    assert all(np.allclose(a[0], b[0]) and np.allclose(a[1], b[1]) for a, b in zip(poses, parts[-1][1]))
    return {n: rig[n] for n in names}, poses


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sim_calib") / "calibration"
    truth, poses = render_calibration_folder(folder, SIZE, N_POSES, SEED)
    return folder, truth, poses


@pytest.fixture(scope="module")
def sim_result(sim):
    folder, truth, _ = sim
    start = time.perf_counter()
    result = calibrate_folder(folder, cameras=list(truth))
    print(f"\ncalibrate_folder: {time.perf_counter() - start:.2f} s {result.timings_s}")
    return result


def _copy(folder: Path, dst: Path, cameras: list[str]) -> Path:
    dst.mkdir(parents=True)
    shutil.copy(folder / "board.json", dst / "board.json")
    for cam in cameras:
        shutil.copytree(folder / cam, dst / cam)
    return dst


# --- comparison with the truth -----------------------------------------------------


def head_points(n: int = 2000, radius: float = 0.15, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return d * radius * rng.uniform(0.0, 1.0, (n, 1)) ** (1 / 3)


def triangulate(cameras: dict[str, Camera], pixels: dict[str, np.ndarray]) -> np.ndarray:
    """Linear (DLT) triangulation on undistorted normalised coordinates, all cameras."""
    rows = []
    criteria = (cv2.TERM_CRITERIA_COUNT + cv2.TERM_CRITERIA_EPS, 50, 1e-12)
    for cam_id, cam in cameras.items():
        xy = cv2.undistortPoints(pixels[cam_id].reshape(-1, 1, 2), cam.K, np.array(cam.dist), None, None, None,
                                 criteria).reshape(-1, 2)
        P = np.hstack([cam.R, cam.t[:, None]])
        rows.append(np.stack([xy[:, :1] * P[2] - P[0], xy[:, 1:] * P[2] - P[1]], axis=1))
    _, _, vt = np.linalg.svd(np.concatenate(rows, axis=1))
    X = vt[:, -1]
    return X[:, :3] / X[:, 3:]


def rotation_angle_deg(Ra: np.ndarray, Rb: np.ndarray) -> float:
    """Angle between two rotations in degrees (scipy, not the project's geometry helpers)."""
    return float(np.degrees(Rotation.from_matrix(Ra @ Rb.T).magnitude()))


def similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """``(s, R, t)`` with ``dst ~ s R src + t``: scipy's rotation fit of the centred sets, then the best scale."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    rot, _ = Rotation.align_vectors(dst - mu_d, src - mu_s)
    R = rot.as_matrix()
    s = float(np.sum((dst - mu_d) * ((src - mu_s) @ R.T)) / np.sum((src - mu_s) ** 2))
    return s, R, mu_d - s * R @ mu_s


def compare_to_truth(est: dict[str, Camera], truth: dict[str, Camera], align: str = "head") -> dict:
    names = list(truth)
    P = head_points()
    if align == "head":
        s, R, t = similarity(triangulate(est, {n: truth[n].project(P) for n in names}), P)
    else:
        s, R, t = similarity(np.array([est[n].center for n in names]), np.array([truth[n].center for n in names]))
    P_est = (P - t) @ R / s  # true world -> estimated world
    proj = np.concatenate([np.linalg.norm(est[n].project(P_est) - truth[n].project(P), axis=1) for n in names])
    centres = np.array([np.linalg.norm(s * R @ est[n].center + t - truth[n].center) for n in names])
    focal = np.array([[est[n].fx / truth[n].fx - 1, est[n].fy / truth[n].fy - 1] for n in names])
    pp = np.array([np.hypot(est[n].cx - truth[n].cx, est[n].cy - truth[n].cy) for n in names])
    rot = np.array([rotation_angle_deg(est[n].R @ R.T, truth[n].R) for n in names])
    return {
        "proj_mean_px": proj.mean(), "proj_max_px": proj.max(), "centre_max_mm": 1000 * centres.max(),
        "centre_mean_mm": 1000 * centres.mean(), "focal_max_pct": 100 * np.abs(focal).max(),
        "scale_pct": 100 * abs(s - 1), "pp_max_px": pp.max(), "rotation_max_deg": rot.max(),
    }


def _fmt(m: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in m.items())


# --- simulated rig: accuracy ---------------------------------------------------------


def test_simulated_corner_noise_is_measured(sim) -> None:
    """The simulator's corners err ~0.07 px RMS (not 0.3 px): small, but not noise-free."""
    folder, truth, poses = sim
    det = detect_folder(folder, list(truth))
    errors = []
    for cam_id, cam_det in det.cameras.items():
        for key, view in cam_det.views.items():
            R, t = poses[int(key)]
            true_px, visible = project_board_corners(DEFAULT_BOARD, R, t, truth[cam_id])
            assert visible[view.ids].all()
            errors.append(np.linalg.norm(view.corners - true_px[view.ids], axis=1))
    errors = np.concatenate(errors)
    rms = float(np.sqrt(np.mean(errors**2)))
    print(f"\ncorner error vs truth: rms {rms:.3f} px, median {np.median(errors):.3f}, max {errors.max():.2f}, "
          f"n {errors.size}")
    assert errors.size > 3000
    assert 0.02 < rms < 0.3


def test_simulated_rig_matches_truth(sim, sim_result) -> None:
    _, truth, _ = sim
    m = compare_to_truth(sim_result.cameras, truth)
    centres_only = compare_to_truth(sim_result.cameras, truth, align="centres")
    print(f"\n{SIZE} px, {N_POSES} poses, head-cloud alignment: {_fmt(m)}"
          f"\n  (camera-centre alignment, for comparison: {_fmt(centres_only)})"
          f"\n  rmse {sim_result.rmse_px:.4f} px (all {sim_result.rmse_all_px:.4f}, initial "
          f"{sim_result.initial_rmse_px:.4f}), solver {sim_result.solver}")
    assert m["proj_mean_px"] <= 0.5 and m["proj_max_px"] <= 1.5, _fmt(m)
    assert m["centre_max_mm"] <= 3.0, _fmt(m)
    assert m["focal_max_pct"] <= 0.5, _fmt(m)
    assert m["scale_pct"] <= 0.5, _fmt(m)
    # Measured at 768 px: centre mean 0.19 mm, principal point 4.3 px, rotation 0.15 degrees. The
    # principal point and the camera's rotation trade off for a rig that sees the head from ~1 m (both
    # move the image the same way), so they err together while projections stay at 0.01 px.
    assert m["centre_mean_mm"] <= 1.0, _fmt(m)
    assert m["pp_max_px"] <= 8.0 and m["rotation_max_deg"] <= 0.3, _fmt(m)
    # A maximum-likelihood rig does far better than the bars; a local minimum does not.
    assert m["proj_mean_px"] < 0.05, _fmt(m)
    assert sim_result.solver["termination"] == "CONVERGENCE"


def test_simulated_rig_with_0_3_px_corner_noise_meets_the_bars(sim) -> None:
    """The issue's premise: ~0.3 px corner noise. Extra Gaussian noise on the detected corners
    (on top of the renderer's ~0.07 px) brings the corner RMS to ~0.3 px; the bars must hold."""
    folder, truth, poses = sim
    det = detect_folder(folder, list(truth))
    rng = np.random.default_rng(1)
    sigma = 0.29 / np.sqrt(2)  # per axis, so the 2D RMS of the added noise is 0.29 px
    for cam_det in det.cameras.values():
        for key, view in list(cam_det.views.items()):
            cam_det.views[key] = ViewDetection(view.ids, view.corners + rng.normal(0, sigma, view.corners.shape))
    errors = []
    for cam_id, cam_det in det.cameras.items():
        for key, view in cam_det.views.items():
            true_px, _ = project_board_corners(DEFAULT_BOARD, *poses[int(key)], truth[cam_id])
            errors.append(np.linalg.norm(view.corners - true_px[view.ids], axis=1))
    corner_rms = float(np.sqrt(np.mean(np.concatenate(errors) ** 2)))
    assert 0.25 < corner_rms < 0.35
    refined = refine_rig(initialize_rig(det))
    m = compare_to_truth(refined.cameras, truth)
    print(f"\ncorner rms {corner_rms:.3f} px: {_fmt(m)}")
    assert m["proj_mean_px"] <= 0.5 and m["proj_max_px"] <= 1.5, _fmt(m)
    assert m["centre_max_mm"] <= 3.0, _fmt(m)
    assert m["focal_max_pct"] <= 0.5, _fmt(m)
    assert m["scale_pct"] <= 0.5, _fmt(m)
    # Measured: centre mean 0.73 mm, principal point 11.1 px, rotation 0.37 degrees (see above).
    assert m["centre_mean_mm"] <= 1.5, _fmt(m)
    assert m["pp_max_px"] <= 20.0 and m["rotation_max_deg"] <= 0.75, _fmt(m)


def test_bundle_adjustment_from_truth_lands_on_the_same_rig(sim, sim_result) -> None:
    """Started from the true rig, the adjustment reaches our solution: it is the global optimum."""
    folder, truth, poses = sim
    names = list(truth)
    det = detect_folder(folder, names)
    init = initialize_rig(det)
    ref = to_h(truth[names[0]].R, truth[names[0]].t)
    world_from_ref = np.linalg.inv(ref)
    cams = {}
    for n, c in truth.items():
        T = to_h(c.R, c.t) @ world_from_ref
        cams[n] = Camera(c.width, c.height, c.fx, c.fy, c.cx, c.cy, c.dist, T[:3, :3], T[:3, 3])
    boards = {k: ref @ to_h(*poses[int(k)]) for k in init.board_poses}
    from_truth = refine_rig(InitialRig(init.spec, cams, boards, init.views, {}, {}, []))
    for n in names:
        a, b = from_truth.cameras[n], sim_result.cameras[n]
        assert abs(a.fx / b.fx - 1) < 1e-5, n
        assert np.linalg.norm(a.center - b.center) < 1e-5, n
    assert from_truth.rmse_all_px == pytest.approx(sim_result.rmse_all_px, rel=1e-5)


def test_world_frame_residuals_and_colmap_agree(sim_result) -> None:
    first = next(iter(sim_result.cameras.values()))
    assert np.allclose(first.R, np.eye(3)) and np.allclose(first.t, 0.0)
    norms = np.concatenate([r.norms for r in sim_result.residuals.values()])
    ids = np.concatenate([r.ids for r in sim_result.residuals.values()])
    # Our numpy residuals (5-term OpenCV model) equal COLMAP's FULL_OPENCV ones: k4..k6 stayed 0.
    # COLMAP's figure is the mean over points (one per board corner) of each track's mean error.
    per_corner = [norms[ids == i].mean() for i in np.unique(ids)]
    assert np.mean(per_corner) == pytest.approx(sim_result.solver["colmap_mean_error_px"], rel=1e-4)
    assert sim_result.rmse_px < 0.15
    for cam_id, det in sim_result.detections.items():
        assert det.n_detected >= 6 and det.n_unreadable == 0, cam_id
        assert sim_result.calibration.n_observations[cam_id] > 100, cam_id
        assert sim_result.calibration.camera_rmse_px[cam_id] < 0.2, cam_id


def test_outputs_written_atomically_and_readable(sim_result, tmp_path, monkeypatch) -> None:
    out = write_calibration_outputs(sim_result, tmp_path / "calib_out")
    assert sorted(p.name for p in out.iterdir()) == sorted([
        layout.CALIBRATION_FILE, layout.CALIBRATION_REPORT_FILE, layout.COLMAP_DIR, layout.TRANSFORMS_FILE,
        layout.CALIBRATION_PICTURE_FILE])
    back = read_calibration(out / layout.CALIBRATION_FILE)
    assert list(back.cameras) == list(sim_result.cameras)
    assert back.rmse_px == pytest.approx(sim_result.rmse_px)
    colmap = read_colmap_model(out / layout.COLMAP_DIR)
    nerf = read_transforms(out / layout.TRANSFORMS_FILE)
    for cam_id, cam in sim_result.cameras.items():
        for other in (back.cameras[cam_id], colmap[cam_id], nerf[cam_id]):
            assert np.allclose(other.K, cam.K) and np.allclose(other.dist, cam.dist, atol=1e-12)
            assert np.allclose(other.R, cam.R, atol=1e-9) and np.allclose(other.t, cam.t, atol=1e-9)
    import pycolmap

    rec = pycolmap.Reconstruction(str(out / layout.COLMAP_DIR))
    assert sorted(p.name for p in (out / layout.COLMAP_DIR).iterdir()) == sorted(layout.COLMAP_TEXT_FILES)
    rec.update_point_3d_errors()
    inlier_mean = np.mean(np.concatenate([r.norms[r.norms <= 3.0] for r in sim_result.residuals.values()]))
    # (the text model rounds coordinates, hence 1 %; a wrong lens model would be far off)
    assert rec.compute_mean_reprojection_error() == pytest.approx(inlier_mean, rel=1e-2)
    report = json.loads((out / layout.CALIBRATION_REPORT_FILE).read_text())
    assert report["cameras"]["mid_C00"]["detection"]["n_images"] == N_POSES
    # Boards held at the head cover only the image centre: the report says the lens model is
    # extrapolated towards the image corners (a wild k2/k3 there is not caught by the RMSE).
    assert report["cameras"]["mid_C00"]["corner_radius_fraction"] < 0.7
    assert any("mid_C00" in w and "extrapolated" in w for w in report["warnings"])
    assert "timings" not in json.dumps(report)  # derived files are byte-identical on reruns

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("fitting.calibration.calibrate.write_transforms", boom)
    with pytest.raises(RuntimeError):
        write_calibration_outputs(sim_result, tmp_path / "never")
    assert not (tmp_path / "never").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib_out"]  # no temp leftovers


def test_rerun_writes_byte_identical_outputs(sim, sim_result, tmp_path) -> None:
    folder, truth, _ = sim
    first = write_calibration_outputs(sim_result, tmp_path / "first")
    second = write_calibration_outputs(calibrate_folder(folder, cameras=list(truth)), tmp_path / "second")
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel


def test_input_hash(sim, tmp_path) -> None:
    folder, truth, _ = sim
    names = list(truth)[:3]
    a = _copy(folder, tmp_path / "a", names)
    b = _copy(folder, tmp_path / "elsewhere" / "b", names)
    h = calibration_input_hash(a)
    assert len(h) == 64 and h == calibration_input_hash(b)
    (b / "notes.txt").write_text("not an input")
    assert calibration_input_hash(b) == h
    img = b / names[0] / "000.png"
    img.write_bytes(img.read_bytes() + b"\0")
    assert calibration_input_hash(b) != h
    board = json.loads((a / "board.json").read_text())
    board["square_length_m"] = 0.041
    (a / "board.json").write_text(json.dumps(board))
    assert calibration_input_hash(a) != h


def test_progress_reports_every_stage(sim, tmp_path) -> None:
    folder, truth, _ = sim
    names = list(truth)[:4]
    calls = []
    calibrate_folder(_copy(folder, tmp_path / "c", names), names, progress=lambda *a: calls.append(a))
    stages = [c[0] for c in calls]
    assert stages[0] == "detect" and stages[-1] == "refine" and "initialize" in stages
    detect = [c for c in calls if c[0] == "detect"]
    assert detect[-1][1] == detect[-1][2] == 4 * N_POSES


# --- simulated rig: robustness ----------------------------------------------------------


SUBSET = ["mid_C00", "mid_L30", "mid_R30", "up_C00", "low_C00"]


def test_camera_with_too_few_detections(sim, sim_result, tmp_path) -> None:
    folder, truth, _ = sim
    victim = "mid_L30"
    used = sorted(set(sim_result.residuals[victim].frames))
    for keep, should_fail in ((2, True), (4, False)):
        dst = _copy(folder, tmp_path / f"keep{keep}", SUBSET)
        for path in (dst / victim).iterdir():
            if path.stem not in used[:keep]:
                path.unlink()
        if should_fail:
            with pytest.raises(CalibrationError) as err:
                calibrate_folder(dst, SUBSET)
            assert err.value.camera == victim
            assert f"'{victim}' has 2 usable board view(s) but needs at least 3" in str(err.value)
        else:
            result = calibrate_folder(dst, SUBSET)
            assert result.detections[victim].n_detected == keep
            cam, true = result.cameras[victim], truth[victim]
            assert abs(cam.fx / true.fx - 1) < 0.01


def test_corrupt_image_is_skipped_and_counted(sim, tmp_path) -> None:
    folder, truth, _ = sim
    dst = _copy(folder, tmp_path / "corrupt", SUBSET)
    (dst / "mid_R30" / "003.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (dst / "up_C00" / "005.png").write_bytes(b"")
    result = calibrate_folder(dst, SUBSET)
    assert result.detections["mid_R30"].n_unreadable == 1
    assert "003.png" in result.detections["mid_R30"].skipped
    assert result.detections["up_C00"].skipped["005.png"].startswith("unreadable")
    assert result.detections["mid_C00"].n_unreadable == 0
    assert "003" not in result.residuals["mid_R30"].frames
    m = compare_to_truth(result.cameras, {n: truth[n] for n in SUBSET})
    assert m["proj_mean_px"] < 0.5 and m["focal_max_pct"] < 0.5, _fmt(m)


@pytest.mark.parametrize("board", [
    {"type": "charuco", "squares_x": 5, "squares_y": 7, "square_length_m": 0.04, "marker_length_m": 0.03,
     "dictionary": "DICT_5X5_100"},
    {"type": "charuco", "squares_x": 9, "squares_y": 7, "square_length_m": 0.04, "marker_length_m": 0.03,
     "dictionary": "DICT_5X5_100"},
    {"type": "chessboard", "cols": 5, "rows": 4, "square_length_m": 0.04},
])
def test_wrong_board_size_writes_nothing(sim, tmp_path, board) -> None:
    folder, _, _ = sim
    dst = _copy(folder, tmp_path / "wrong", SUBSET[:3])
    (dst / "board.json").write_text(json.dumps(board))
    out = tmp_path / "out"
    with pytest.raises(CalibrationError) as err:
        write_calibration_outputs(calibrate_folder(dst, SUBSET[:3]), out)
    assert "board" in str(err.value)
    assert not out.exists()


def test_malformed_board_json_names_the_field(sim, tmp_path) -> None:
    folder, _, _ = sim
    dst = _copy(folder, tmp_path / "typo", SUBSET[:2])
    (dst / "board.json").write_text(json.dumps({"type": "charuco", "squares_x": 7, "squares_y": 5,
                                                "square_length": 0.04, "marker_length_m": 0.03,
                                                "dictionary": "DICT_5X5_100"}))
    with pytest.raises(CalibrationError) as err:
        calibrate_folder(dst)
    assert err.value.field == "square_length" and "square_length" in str(err.value)
    (dst / "board.json").write_text("{not json")
    with pytest.raises(CalibrationError, match="board.json"):
        calibrate_folder(dst)


def test_camera_never_seen_with_the_others(sim, tmp_path) -> None:
    folder, _, _ = sim
    dst = _copy(folder, tmp_path / "alone", SUBSET)
    for path in sorted((dst / "up_C00").iterdir()):
        path.rename(path.with_name(f"9{path.name}"))  # moments no other camera has
    with pytest.raises(CalibrationError) as err:
        calibrate_folder(dst, SUBSET)
    assert err.value.camera == "up_C00" and "never see the board at the same moment" in str(err.value)


def test_no_cameras(tmp_path) -> None:
    write_board(tmp_path / "board.json", DEFAULT_BOARD)
    with pytest.raises(CalibrationError, match="no cameras"):
        calibrate_folder(tmp_path)
    with pytest.raises(CalibrationError, match="'cam9' has no folder"):
        calibrate_folder(tmp_path, ["cam9"])
    with pytest.raises(CalibrationError, match="does not exist"):
        calibrate_folder(tmp_path / "missing")


@pytest.mark.slow  # renders and calibrates its own rig (~25 s)
def test_symmetric_chessboard_order_is_resolved(tmp_path) -> None:
    """An 8 x 6 chessboard looks the same turned by 180 degrees: corner order is made consistent."""
    spec = ChessboardSpec(cols=8, rows=6, square_length_m=0.03)
    assert spec.order_ambiguous
    names = ["mid_C00", "mid_L30", "mid_R30", "up_C00", "low_C00"]
    truth, _ = render_calibration_folder(tmp_path / "chess", 512, 10, 1, board=spec, names=names)
    result = calibrate_folder(tmp_path / "chess", names)
    m = compare_to_truth(result.cameras, truth)
    print(f"\nsymmetric chessboard: {_fmt(m)}, reordered views {result.n_reordered_views}")
    assert m["proj_mean_px"] < 0.5 and m["centre_max_mm"] < 3.0 and m["focal_max_pct"] < 0.5, _fmt(m)

    # Reverse the detector's order in some views on purpose: the rig must not change.
    det = detect_folder(tmp_path / "chess", names)
    flipped = 0
    for cam_id in ("mid_L30", "up_C00"):
        for key in list(det.cameras[cam_id].views)[::2]:
            view = det.cameras[cam_id].views[key]
            det.cameras[cam_id].views[key] = ViewDetection(spec.n_corners - 1 - view.ids, view.corners)
            flipped += 1
    init = initialize_rig(det)
    assert init.n_reordered_views >= flipped // 2
    assert not any("disagrees" in why for r in init.rejected_views.values() for why in r.values())
    again = refine_rig(init)
    for n in names:
        assert np.allclose(again.cameras[n].K, result.cameras[n].K, rtol=1e-6), n
        assert np.linalg.norm(again.cameras[n].center - result.cameras[n].center) < 1e-6, n
    obj = board_object_points(spec)
    res = residuals_for(again.cameras, again.board_poses, init.views, obj)
    assert max(r.norms.max() for r in res.values()) < 1.0


# --- real data ------------------------------------------------------------------------


def _need(path: Path) -> None:
    need_reference_data(path, "real reference data (copied from the shared data into tests/data)")


def _stereo_numbers(result, ref: dict) -> dict:
    R, t = result.cameras["right"].R, result.cameras["right"].t
    return {
        "baseline_pct": 100 * abs(np.linalg.norm(t) / ref["stereo"]["baseline_m"] - 1),
        "rotation_deg": rotation_angle_deg(R, np.array(ref["stereo"]["R_right_from_left"])),
    }


def test_opencv_stereo_chessboard() -> None:
    """Default corners: cornerSubPix windows sized to the squares, robust (Cauchy) adjustment.

    OpenCV's reference used (11, 11) windows, which span neighbouring corners on these
    21-37 px squares: its per-camera RMS (0.41 / 0.46 px) is twice ours, and those corners
    hold 6 px outliers. ``cv2.stereoCalibrate`` on *our* corners lands where we do, about
    0.12 degrees from the reference rotation, so that bar is 0.15 degrees here; the next
    test shows that with the reference's corners and least squares we reproduce it to 0.001.
    """
    _need(STEREO)
    ref = json.loads((STEREO / "reference_opencv.json").read_text())
    result = calibrate_folder(STEREO)
    assert list(result.cameras) == ["left", "right"]
    for cam_id in ("left", "right"):
        cam, r = result.cameras[cam_id], ref[cam_id]
        rmse = result.calibration.camera_rmse_px[cam_id]
        print(f"\n{cam_id}: rmse {rmse:.3f} (ref {r['rms_px']:.3f}) fx {cam.fx:.2f} (ref {r['fx']:.2f}) "
              f"fy {cam.fy:.2f} (ref {r['fy']:.2f})")
        assert result.detections[cam_id].n_detected == 13
        assert rmse <= 1.1 * r["rms_px"] and rmse <= 0.6 * r["rms_px"]
        assert abs(cam.fx / r["fx"] - 1) <= 0.01 and abs(cam.fy / r["fy"] - 1) <= 0.01
    numbers = _stereo_numbers(result, ref)
    print(numbers)
    assert numbers["baseline_pct"] <= 1.0 and numbers["rotation_deg"] <= 0.15


def test_cli_meets_every_stereo_bar_with_reference_style_corners(tmp_path: Path) -> None:
    """``o2a calibrate`` with OpenCV's (11, 11) windows and a robust 3 px loss meets all the bars.

    Per camera RMS <= 1.1x OpenCV's and focal within 1 %; baseline within 1 % and
    relative rotation within 0.1 degree of ``stereoCalibrate``'s result.
    """
    from capture_schema.calibration_file import read_calibration
    from pipelines.cli import main

    _need(STEREO)
    ref = json.loads((STEREO / "reference_opencv.json").read_text())
    out = tmp_path / "out"
    assert main(["calibrate", str(STEREO), "--out", str(out), "--subpix-window", "11", "--loss-scale", "3"]) == 0
    calibration = read_calibration(out / layout.CALIBRATION_FILE)
    for cam_id in ("left", "right"):
        cam, r = calibration.cameras[cam_id], ref[cam_id]
        assert calibration.camera_rmse_px[cam_id] <= 1.1 * r["rms_px"]
        assert abs(cam.fx / r["fx"] - 1) <= 0.01 and abs(cam.fy / r["fy"] - 1) <= 0.01
    R, t = calibration.cameras["right"].R, calibration.cameras["right"].t
    assert 100 * abs(np.linalg.norm(t) / ref["stereo"]["baseline_m"] - 1) <= 1.0
    assert rotation_angle_deg(R, np.array(ref["stereo"]["R_right_from_left"])) <= 0.1


def test_opencv_stereo_reproduced_with_reference_corners_and_least_squares() -> None:
    _need(STEREO)
    ref = json.loads((STEREO / "reference_opencv.json").read_text())
    result = calibrate_folder(STEREO, subpix_half_window=11, loss_scale_px=1e4)
    for cam_id in ("left", "right"):
        cam, r = result.cameras[cam_id], ref[cam_id]
        assert result.calibration.camera_rmse_px[cam_id] <= 1.1 * r["rms_px"]
        assert abs(cam.fx / r["fx"] - 1) <= 0.01 and abs(cam.fy / r["fy"] - 1) <= 0.01
    numbers = _stereo_numbers(result, ref)
    assert numbers["baseline_pct"] <= 0.05 and numbers["rotation_deg"] <= 0.01, numbers
    assert result.rmse_px == pytest.approx(ref["stereo"]["rms_px_joint"], rel=0.01)


def test_opencv_charuco() -> None:
    _need(CHARUCO)
    det = detect_folder(CHARUCO)
    assert det.cameras["cam0"].n_detected == 4
    assert all(len(v.ids) == 24 for v in det.cameras["cam0"].views.values())
    occluded = cv2.imread(str(CHARUCO / "chocclusion_original.jpg"), cv2.IMREAD_GRAYSCALE)
    view = detect_image(det.spec, occluded)
    assert view is not None and len(view.ids) >= 8
    result = calibrate_folder(CHARUCO)
    cam = result.cameras["cam0"]
    print(f"\ncharuco: fx {cam.fx:.2f} fy {cam.fy:.2f} rmse {result.rmse_px:.3f} (published 452.51 / 456.77)")
    assert abs(cam.fx / 452.51 - 1) <= 0.02 and abs(cam.fy / 456.77 - 1) <= 0.02
    assert result.rmse_px < 0.3


def test_rational_terms_held_without_clobbering_pycolmaps_manifold() -> None:
    """k4..k6 stay 0 and a principal point pycolmap holds constant stays constant too."""
    import pycolmap

    from fitting.bundle_adjustment.colmap_solver import hold_rational_terms

    rec = pycolmap.Reconstruction()
    rec.add_camera(pycolmap.Camera(camera_id=1, model="FULL_OPENCV", width=640, height=480,
                                   params=[500, 505, 320, 240, 0.01, 0, 0, 0, 0, 0, 0, 0]))
    rig = pycolmap.Rig(rig_id=1)
    rig.add_ref_sensor(rec.cameras[1].sensor_id)
    rec.add_rig(rig)
    obj = np.array([[x * 0.03, y * 0.03, 0.0] for y in range(6) for x in range(8)])
    tracks: dict[int, list] = {j: [] for j in range(len(obj))}
    rng = np.random.default_rng(0)
    for f in range(4):
        R = pycolmap.Rotation3d(np.array([0.3 * (f % 2) - 0.15, 0.3 * (f // 2) - 0.15, 0.1 * f])).matrix()
        pose = pycolmap.Rigid3d(np.hstack([R, [[-0.1], [-0.07], [0.6]]]))
        frame = pycolmap.Frame(frame_id=f + 1, rig_id=1, rig_from_world=pose)
        uv = np.array([rec.cameras[1].img_from_cam(pose * p) for p in obj]) + rng.normal(0, 0.2, (len(obj), 2))
        image = pycolmap.Image(name=str(f), keypoints=uv, camera_id=1, image_id=f + 1)
        image.frame_id = f + 1
        frame.add_data_id(image.data_id)
        rec.add_frame(frame)
        rec.add_image(image)
        for j in range(len(obj)):
            tracks[j].append(pycolmap.TrackElement(f + 1, j))
    config = pycolmap.BundleAdjustmentConfig()
    for i in range(1, 5):
        config.add_image(i)
    for j in range(len(obj)):
        config.add_constant_point(rec.add_point3D(obj[j], pycolmap.Track(tracks[j])))
    options = pycolmap.BundleAdjustmentOptions(refine_principal_point=False, print_summary=False)
    rec.cameras[1].params[0] = 520.0
    adjuster = pycolmap.create_default_ceres_bundle_adjuster(options, config, rec)
    problem, params = adjuster.problem, rec.cameras[1].params
    assert problem.has_parameter_block(params) and problem.has_manifold(params)
    assert problem.parameter_block_tangent_size(params) == 10  # pycolmap holds cx, cy
    manifolds = hold_rational_terms(problem, rec, options)
    assert problem.parameter_block_tangent_size(params) == 7
    assert adjuster.solve().is_solution_usable()
    del manifolds
    p = np.asarray(rec.cameras[1].params)
    assert np.all(p[9:] == 0.0) and p[2] == 320.0 and p[3] == 240.0 and abs(p[0] - 500) < 20
