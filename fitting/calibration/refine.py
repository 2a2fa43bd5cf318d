"""One joint bundle adjustment of the whole rig in pycolmap.

What is optimised, at once: every camera's intrinsics (fx, fy, cx, cy) and
distortion (k1 k2 p1 p2 k3), every camera's pose relative to the first camera,
and every board pose. The board's corners are known exactly in the board frame,
so they are *constant* 3D points; that also fixes the gauge (position, rotation
and metric scale all come from the board) without any pose prior.

pycolmap features used (4.2), following PITFALLS.md:

* the board frame is COLMAP's world; one ``Point3D`` per board corner, held
  constant (``BundleAdjustmentConfig.add_constant_point``) and shared by every
  board pose, so the board stays rigid and metric;
* a ``Rig`` whose reference sensor is the first camera (``add_ref_sensor``) and
  whose other sensors carry ``sensor_from_rig`` = camera-from-first-camera
  (``add_sensor``): the unknown extrinsics, one per camera;
* one ``Frame`` per board moment with ``rig_from_world`` = first-camera-from-board
  (the board pose), holding one ``Image`` per camera that saw that moment, whose
  keypoints are the detected corners linked to the corner points (``Track``s);
  the first camera always has images (checked before), otherwise COLMAP would
  silently hold every ``sensor_from_rig`` constant. A moment the first camera
  did not see is still a frame of the rig (its images come from other sensors);
  pycolmap accepts that (``Reconstruction.is_valid()``);
* cameras are ``FULL_OPENCV`` (fx fy cx cy k1 k2 p1 p2 k3 k4 k5 k6): the 5-term
  OpenCV model has no COLMAP twin, so k4..k6 are held at 0 with
  ``pyceres.SubsetManifold(12, [9, 10, 11])`` set on each camera's parameter block
  through ``create_default_ceres_bundle_adjuster(...).problem`` (the params array
  is a view into the reconstruction, so it *is* the Ceres block). A manifold
  pycolmap already put there (a ``SubsetManifold`` for intrinsics its options
  keep fixed) is not clobbered: ours then also holds the indices those options
  fix (checked by the tests). Ceres keeps only raw pointers to manifolds, so the
  Python objects (and the ``problem`` wrapper) are kept alive until ``solve()``
  returns: letting them go earlier segfaulted inside the solve;
* ``refine_principal_point=True``, ``print_summary=False``, Cauchy loss with a
  1 px scale: quadratic (maximum likelihood) for corner noise of a few tenths of
  a pixel, while a mis-detected corner several pixels off weighs ~1/(1+r^2).

After the solve the rig frame *is* the first camera's frame, so extrinsics are
read off directly (world = first camera, metres from the board). Residuals are
recomputed independently with ``capture_schema.cameras.Camera.project`` on the
converted cameras (and checked against COLMAP's own mean error by the tests).

Error figures: an observation is an *inlier* when its reprojection error (2D
norm) is at most ``OUTLIER_THRESHOLD_PX`` (3 x the Cauchy scale, where the loss
weighs it <= 0.1). ``loss_scale_px`` can be raised to make the loss effectively
least squares (the tests do so to reproduce ``cv2.stereoCalibrate`` exactly).
Per-camera ``rmse_px`` = sqrt(mean |r|^2) over that camera's
inliers, the same definition as OpenCV's calibration RMS; ``rmse_all_px`` keeps
every observation, and outliers are counted, so nothing is hidden.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from capture_schema.cameras import Camera
from fitting.bundle_adjustment.colmap_solver import FULL_OPENCV_RATIONAL, hold_rational_terms
from fitting.calibration.boards import board_object_points
from fitting.calibration.detect import ProgressCallback
from fitting.calibration.errors import CalibrationError, implausible_camera
from fitting.calibration.initialize import InitialRig

#: Cauchy loss scale in pixels.
LOSS_SCALE_PX = 1.0
#: Observations farther than this many loss scales count as outliers in the reported RMSE.
OUTLIER_THRESHOLD_SCALES = 3.0
OUTLIER_THRESHOLD_PX = OUTLIER_THRESHOLD_SCALES * LOSS_SCALE_PX
MAX_ITERATIONS = 500


@dataclass
class CameraResiduals:
    """Reprojection residuals (observed - projected) of one camera, after refinement."""

    frames: list[str]
    ids: np.ndarray  # (M,) corner ids
    observed: np.ndarray  # (M, 2)
    residuals: np.ndarray  # (M, 2) pixels

    @property
    def norms(self) -> np.ndarray:
        return np.linalg.norm(self.residuals, axis=1)


@dataclass
class RefinedRig:
    """The refined rig in the project's convention plus honest residual statistics."""

    cameras: dict[str, Camera]
    board_poses: dict[str, np.ndarray]  # frame key -> T_world_board
    residuals: dict[str, CameraResiduals]
    rmse_px: float  # over all inliers
    rmse_all_px: float  # over every observation
    camera_rmse_px: dict[str, float]
    camera_rmse_all_px: dict[str, float]
    n_observations: dict[str, int]  # inliers per camera
    n_outliers: dict[str, int]
    initial_rmse_px: float  # all observations, at the initial rig
    colmap_mean_error_px: float  # COLMAP's own mean reprojection error (mean of norms)
    outlier_threshold_px: float
    solver: dict = field(default_factory=dict)  # termination, iterations, costs


def _rigid3d(T: np.ndarray):
    import pycolmap

    return pycolmap.Rigid3d(np.asarray(T[:3, :4], dtype=np.float64))


def _matrix(rigid) -> np.ndarray:
    T = np.eye(4)
    T[:3, :4] = rigid.matrix()
    return T


def _camera_params(cam: Camera) -> list[float]:
    k1, k2, p1, p2, k3 = cam.dist
    return [cam.fx, cam.fy, cam.cx, cam.cy, k1, k2, p1, p2, k3, 0.0, 0.0, 0.0]


def residuals_for(
    cameras: dict[str, Camera], board_poses: dict[str, np.ndarray], views: dict, obj: np.ndarray
) -> dict[str, CameraResiduals]:
    """Residuals of every view given cameras and board poses (numpy, independent of COLMAP)."""
    out = {}
    for cam_id, cam in cameras.items():
        frames, ids, observed, projected = [], [], [], []
        for key, view in views[cam_id].items():
            T = board_poses[key]
            world = obj[view.ids] @ T[:3, :3].T + T[:3, 3]
            frames += [key] * len(view.ids)
            ids.append(view.ids)
            observed.append(view.corners)
            projected.append(cam.project(world))
        if ids:
            obs = np.concatenate(observed)
            out[cam_id] = CameraResiduals(frames, np.concatenate(ids), obs, obs - np.concatenate(projected))
        else:
            out[cam_id] = CameraResiduals([], np.zeros(0, np.int64), np.zeros((0, 2)), np.zeros((0, 2)))
    return out


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(values**2))) if values.size else float("nan")


def refine_rig(
    initial: InitialRig, progress: ProgressCallback | None = None, *, loss_scale_px: float = LOSS_SCALE_PX
) -> RefinedRig:
    """Jointly refine ``initial`` (see module docstring); world = first camera's frame."""
    import pycolmap

    if not (np.isfinite(loss_scale_px) and loss_scale_px > 0):
        raise ValueError(f"loss_scale_px must be a positive number, got {loss_scale_px!r}")
    threshold = OUTLIER_THRESHOLD_SCALES * loss_scale_px

    if progress is not None:
        progress("refine", 0, 1)
    order = list(initial.cameras)
    ref = order[0]
    if not initial.views.get(ref):
        raise CalibrationError(f"camera {ref!r} (the reference camera) has no usable board view", camera=ref)
    obj = board_object_points(initial.spec)
    initial_res = residuals_for(initial.cameras, initial.board_poses, initial.views, obj)
    initial_rmse = _rms(np.concatenate([r.norms for r in initial_res.values()]))

    rec = pycolmap.Reconstruction()
    colmap_id = {cam: i + 1 for i, cam in enumerate(order)}
    for cam in order:
        c = initial.cameras[cam]
        rec.add_camera(pycolmap.Camera(camera_id=colmap_id[cam], model="FULL_OPENCV", width=c.width,
                                       height=c.height, params=_camera_params(c)))
    rig = pycolmap.Rig(rig_id=1)
    rig.add_ref_sensor(rec.cameras[colmap_id[ref]].sensor_id)
    world_from_ref = np.linalg.inv(np.vstack([np.hstack([initial.cameras[ref].R, initial.cameras[ref].t[:, None]]),
                                              [0, 0, 0, 1]]))
    for cam in order[1:]:
        c = initial.cameras[cam]
        cam_from_world = np.vstack([np.hstack([c.R, c.t[:, None]]), [0, 0, 0, 1]])
        rig.add_sensor(rec.cameras[colmap_id[cam]].sensor_id, _rigid3d(cam_from_world @ world_from_ref))
    rec.add_rig(rig)

    tracks: dict[int, list] = {j: [] for j in range(len(obj))}
    image_index: dict[int, tuple[str, str]] = {}
    image_id = 0
    ref_from_world = np.linalg.inv(world_from_ref)
    for frame_id, (key, T_world_board) in enumerate(initial.board_poses.items(), start=1):
        images = []
        frame = pycolmap.Frame(frame_id=frame_id, rig_id=1, rig_from_world=_rigid3d(ref_from_world @ T_world_board))
        for cam in order:
            view = initial.views[cam].get(key)
            if view is None:
                continue
            image_id += 1
            image = pycolmap.Image(name=f"{cam}/{key}", keypoints=view.corners, camera_id=colmap_id[cam],
                                   image_id=image_id)
            image.frame_id = frame_id
            frame.add_data_id(image.data_id)
            images.append(image)
            image_index[image_id] = (cam, key)
            for idx, j in enumerate(view.ids):
                tracks[int(j)].append(pycolmap.TrackElement(image_id, idx))
        if not images:
            continue
        rec.add_frame(frame)
        for image in images:
            rec.add_image(image)
    point_ids = [rec.add_point3D(obj[j], pycolmap.Track(tracks[j])) for j in range(len(obj)) if tracks[j]]
    if not rec.is_valid():
        raise RuntimeError("pycolmap rejected the calibration problem (Reconstruction.is_valid() is False)")

    config = pycolmap.BundleAdjustmentConfig()
    for i in image_index:
        config.add_image(i)
    for pid in point_ids:
        config.add_constant_point(pid)
    options = pycolmap.BundleAdjustmentOptions(
        refine_focal_length=True, refine_principal_point=True, refine_extra_params=True,
        refine_rig_from_world=True, refine_sensor_from_rig=True, print_summary=False,
    )
    options.ceres.loss_function_type = pycolmap.LossFunctionType.CAUCHY
    options.ceres.loss_function_scale = float(loss_scale_px)
    solver = options.ceres.solver_options
    solver.max_num_iterations = MAX_ITERATIONS
    solver.function_tolerance = 1e-12
    solver.gradient_tolerance = 1e-12
    solver.parameter_tolerance = 1e-12
    adjuster = pycolmap.create_default_ceres_bundle_adjuster(options, config, rec)
    problem = adjuster.problem
    manifolds = hold_rational_terms(problem, rec, options)
    summary = adjuster.solve()
    del manifolds, problem  # only now may Python free them
    if not summary.is_solution_usable():
        raise CalibrationError(f"bundle adjustment failed: {summary.brief_report()}")

    cameras: dict[str, Camera] = {}
    rig = rec.rigs[1]
    for cam in order:
        col = rec.cameras[colmap_id[cam]]
        p = np.asarray(col.params, dtype=np.float64)
        if np.any(p[list(FULL_OPENCV_RATIONAL)] != 0.0):
            raise RuntimeError(f"k4..k6 of camera {cam!r} moved during refinement: {p[list(FULL_OPENCV_RATIONAL)]}")
        T = np.eye(4) if cam == ref else _matrix(rig.sensor_from_rig(col.sensor_id))
        try:
            cameras[cam] = Camera(col.width, col.height, p[0], p[1], p[2], p[3], tuple(p[4:9]), T[:3, :3], T[:3, 3])
        except ValueError as exc:
            raise implausible_camera(cam, "bundle adjustment", exc) from None
    board_poses = {}
    for frame_id, key in enumerate(initial.board_poses, start=1):
        if rec.exists_frame(frame_id):
            board_poses[key] = _matrix(rec.frames[frame_id].rig_from_world)
    rec.update_point_3d_errors()
    colmap_mean = float(rec.compute_mean_reprojection_error())

    residuals = residuals_for(cameras, board_poses, initial.views, obj)
    inlier_sq, all_sq = [], []
    cam_rmse, cam_rmse_all, n_obs, n_out = {}, {}, {}, {}
    for cam, res in residuals.items():
        norms = res.norms
        inl = norms <= threshold
        cam_rmse[cam] = _rms(norms[inl])
        cam_rmse_all[cam] = _rms(norms)
        n_obs[cam] = int(inl.sum())
        n_out[cam] = int((~inl).sum())
        inlier_sq.append(norms[inl])
        all_sq.append(norms)
    ceres = summary.ceres_summary
    solver_info = {
        "termination": str(summary.termination_type).split(".")[-1],
        "iterations": int(ceres.num_successful_steps + ceres.num_unsuccessful_steps),
        "initial_cost": float(ceres.initial_cost),
        "final_cost": float(ceres.final_cost),
        "num_residuals": int(summary.num_residuals),
        "loss": f"CAUCHY({loss_scale_px:g} px)",
    }
    if progress is not None:
        progress("refine", 1, 1)
    return RefinedRig(
        cameras=cameras,
        board_poses=board_poses,
        residuals=residuals,
        rmse_px=_rms(np.concatenate(inlier_sq)),
        rmse_all_px=_rms(np.concatenate(all_sq)),
        camera_rmse_px=cam_rmse,
        camera_rmse_all_px=cam_rmse_all,
        n_observations=n_obs,
        n_outliers=n_out,
        initial_rmse_px=initial_rmse,
        colmap_mean_error_px=colmap_mean,
        outlier_threshold_px=threshold,
        solver=solver_info,
    )
