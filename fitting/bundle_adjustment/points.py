"""Robust bundle adjustment of a static camera rig and the points it observed.

Given cameras (:class:`capture_schema.cameras.Camera`), an initial guess of the 3D
points (e.g. :func:`fitting.bundle_adjustment.triangulation.triangulate_points`) and
the observations ``pixels`` ``(C, N, 2)`` (NaN where unseen), :func:`refine_cameras_and_points`
jointly refines the camera poses (optionally the intrinsics and distortion) and the
points with pycolmap's Ceres bundle adjuster under a Cauchy loss, and returns new
``Camera`` objects, the refined points and a :class:`BundleAdjustmentReport`.

How the problem is handed to pycolmap
-------------------------------------
* One COLMAP camera per rig camera (``camera_to_colmap``: ``OPENCV`` when ``k3 == 0``,
  else ``FULL_OPENCV`` with ``k4..k6 = 0``), each in its own trivial rig.
* The cameras are static, so each camera is one image (one trivial frame) whose
  keypoints are all of that camera's observations; every point seen by at least two
  cameras is a 3D point whose track lists those keypoints. ``rec.is_valid()`` is checked.
* The solve is ``pycolmap.create_default_ceres_bundle_adjuster(options, config, rec)``
  then ``.solve()`` (not ``pycolmap.bundle_adjustment``, which forces a gauge and
  filters observations in place).

Robust loss and continuation
----------------------------
One Cauchy loss for all residuals. Real keypoints carry gross outliers (wrong
detections, swapped identities): plain least squares is dragged by them (on the
aniposelib data its cost is dominated by a few near-infinite two-view points and it
does not move: median 33.0 -> 33.0 px), soft-L1/Huber do much worse (``PITFALLS.md``). A
Cauchy loss with a small scale, however, treats every residual of a camera that starts
far off as an outlier and barely moves it, so the solve is a short continuation: a few
stages whose scale shrinks geometrically from 64 px to ``loss_scale_px``
(``loss_schedule``), at most ``max_iterations`` Levenberg-Marquardt iterations each.
Before every stage after the first, each point is linearly re-triangulated with the
current cameras and the new position replaces the old one where it has the lower Cauchy
cost (a point stuck behind a camera, where COLMAP's residual is silently zero, or at a
near-parallel two-view intersection, gets a fresh start). No observation or point is
dropped or re-weighted beyond what the loss does.

Intrinsics are held by default (with noisy keypoints and far-off poses, refining them
from the start lets focal lengths run away). With ``refine_intrinsics=True`` focal
lengths, principal point and ``k1 k2 p1 p2 (k3)`` are refined in the *last* stage only,
once the poses have settled; for ``FULL_OPENCV`` cameras the rational terms ``k4..k6``
are held at 0 by a ``pyceres.SubsetManifold(12, [9, 10, 11])`` set on the camera
parameter block of the adjuster's ``problem`` (so the result still fits OpenCV's
five-term model).

Gauge
-----
A rig seen only through points is defined up to a similarity (7 DoF). pycolmap's
``TWO_CAMS_FROM_WORLD`` gauge did not hold scale on an inward-looking rig (it fixes one
translation coordinate of the second camera *in that camera's own frame*), and holding
the first camera's pose constant converged worse on the real 12-camera data (p90 26 px
against 9 px). So the gauge is left free during the solve (Levenberg-Marquardt's
damping handles the null space; Ceres logs rejected Cholesky steps, silenced unless
``verbose``) and removed afterwards: the result is mapped by the similarity that best
aligns the refined camera frames onto the input camera frames (each camera's centre
and the tips of its three axes at the rig's scale, least squares, Umeyama). The
output thus lives in the input's world frame and metric scale; only the rig's shape
changes. ``report.gauge_alignment`` gives that similarity and the RMS camera change.

Errors and reproducibility
--------------------------
The report's errors are the project's own, over *every* observation of every point
in the solve, not COLMAP's (:mod:`fitting.bundle_adjustment.report`). Ceres runs
on one thread by default: with several threads its reductions are summed in a varying
order and, on a problem as far from converged as the real data, the result then
differs from run to run (centimetres); one thread is bit-reproducible and, on two
cores, hardly slower.
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from capture_schema.cameras import Camera
from capture_schema.converters.colmap import camera_to_colmap, intrinsics_from_colmap
from fitting.bundle_adjustment.colmap_solver import hold_rational_terms
from fitting.bundle_adjustment.report import BundleAdjustmentReport, assemble_report, measure_fit
from fitting.bundle_adjustment.triangulation import (
    check_observations,
    observed_mask,
    reprojection_errors,
    triangulate_points,
)
from fitting.geometry import project_to_so3, umeyama

__all__ = ["BundleAdjustmentReport", "default_loss_schedule", "refine_cameras_and_points"]


def default_loss_schedule(loss_scale_px: float, start_px: float = 64.0, stages: int = 4) -> list[float]:
    """Cauchy scales from ``start_px`` down to ``loss_scale_px``, geometrically spaced."""
    if start_px <= loss_scale_px or stages <= 1:
        return [float(loss_scale_px)]
    return [float(v) for v in np.geomspace(start_px, loss_scale_px, stages)]


def refine_cameras_and_points(
    cameras: Sequence[Camera],
    points: np.ndarray,
    pixels: np.ndarray,
    *,
    loss_scale_px: float = 2.0,
    loss_schedule: Sequence[float] | None = None,
    refine_intrinsics: bool = False,
    refine_principal_point: bool = False,
    max_iterations: int = 50,
    progress: Callable[[str], None] | None = None,
    verbose: bool = False,
    num_threads: int = 1,
    retriangulate: bool = True,
) -> tuple[list[Camera], np.ndarray, BundleAdjustmentReport]:
    """Jointly refine camera poses (and optionally intrinsics) and 3D points.

    Args:
        cameras: the rig, ``C >= 2`` cameras (initial guess).
        points: ``(N, 3)`` initial 3D points in the cameras' world frame; rows that
            are not finite, or whose point was seen by fewer than two cameras, are
            left out of the solve and come back unchanged.
        pixels: ``(C, N, 2)`` observed distorted pixels, NaN where unseen.
        loss_scale_px: Cauchy loss scale of the final stage (pixels): residuals well
            above it count as outliers.
        loss_schedule: Cauchy scales of the successive stages; when given it replaces
            the default :func:`default_loss_schedule` (64 px down to
            ``loss_scale_px`` in 4 stages) and its last entry is the final scale.
            ``[s]`` runs a single solve.
        refine_intrinsics: also refine fx, fy and k1 k2 p1 p2 (k3) per camera, in
            the last stage; k4..k6 of FULL_OPENCV stay 0.
        refine_principal_point: with ``refine_intrinsics``, refine cx, cy too (off
            by default, as in COLMAP: from points alone the principal point trades
            off against the rotation and drifts by tens of pixels).
        max_iterations: Levenberg-Marquardt iterations per stage.
        progress: called with one line of text per step (e.g. ``logger.info`` or a
            CLI's ``tqdm.write``).
        verbose: let Ceres print its per-iteration log and summary to stdout and
            keep its warnings.
        num_threads: Ceres threads; 1 (default) is bit-reproducible, more can be
            faster on large problems but not reproducible (module docstring).
        retriangulate: re-triangulate points between stages where that lowers
            their robust cost (module docstring).

    Returns:
        ``(cameras, points, report)``: new ``Camera`` objects in the input's world
        frame and scale (see the module docstring on the gauge), the ``(N, 3)``
        refined points (unused rows unchanged) and a :class:`BundleAdjustmentReport`.

    Raises:
        ValueError: fewer than 2 cameras, mismatched shapes, a non-positive loss
            scale, or no point seen by two cameras.
        RuntimeError: pycolmap rejected the problem or Ceres returned an unusable solution.
    """
    import pycolmap

    t_start = time.perf_counter()
    say = progress or (lambda _msg: None)
    cameras, pts_in, uv = _validate(cameras, points, pixels)
    schedule = _checked_schedule(loss_scale_px, loss_schedule)
    if int(max_iterations) < 1:
        raise ValueError(f"max_iterations must be at least 1, got {max_iterations}")

    seen = observed_mask(uv)
    used_idx = _usable_points(pts_in, seen)
    uv_used, seen_used = uv[:, used_idx], seen[:, used_idx]
    before = measure_fit(cameras, pts_in, uv, used_idx)
    say(
        f"bundle adjustment: {len(cameras)} cameras, {len(used_idx)} points, {int(seen_used.sum())} observations; "
        f"before: median {before[0]['median_px']:.2f} px, p90 {before[0]['p90_px']:.2f} px"
    )

    rec, image_ids, point_ids = _build_reconstruction(pycolmap, cameras, pts_in[used_idx], uv_used, seen_used)
    say(f"bundle adjustment: reconstruction built in {time.perf_counter() - t_start:.1f} s")

    stage_iterations: list[int] = []
    terminations: list[str] = []
    n_retriangulated: list[int] = []
    t_solve = time.perf_counter()
    for stage, scale in enumerate(schedule):
        note = ""
        if stage > 0 and retriangulate:
            n_retriangulated.append(_retriangulate(rec, image_ids, point_ids, cameras, uv_used, scale))
            note = f" ({n_retriangulated[-1]} points re-triangulated first)"
        label = f"{stage + 1}/{len(schedule)}"
        n_iter, termination, cost = _solve_stage(
            pycolmap, rec, image_ids, scale, label,
            refine_intrinsics=bool(refine_intrinsics) and stage == len(schedule) - 1,
            refine_principal_point=bool(refine_principal_point),
            max_iterations=int(max_iterations), verbose=bool(verbose), num_threads=int(num_threads),
        )
        stage_iterations.append(n_iter)
        terminations.append(termination)
        say(
            f"bundle adjustment: stage {label} Cauchy {scale:.3g} px: {n_iter} iterations, "
            f"{termination}, cost {cost[0]:.4g} -> {cost[1]:.4g}" + note
        )
    solve_time = time.perf_counter() - t_solve

    refined, pts_used, alignment = _align_to_input(*_read_back(rec, image_ids, point_ids, cameras), cameras)
    pts_out = pts_in.copy()
    pts_out[used_idx] = pts_used
    after = measure_fit(refined, pts_out, uv, used_idx)
    report = assemble_report(
        seen, used_idx, before=before, after=after, schedule=schedule, refine_intrinsics=refine_intrinsics,
        stage_iterations=stage_iterations, points_retriangulated=n_retriangulated, termination=terminations,
        time_s=time.perf_counter() - t_start, solve_time_s=solve_time, gauge_alignment=alignment,
    )
    say("bundle adjustment: " + report.summary())
    return refined, pts_out, report


def _validate(
    cameras: Sequence[Camera], points: np.ndarray, pixels: np.ndarray
) -> tuple[list[Camera], np.ndarray, np.ndarray]:
    uv = check_observations(cameras, pixels, what="bundle adjustment")
    pts = np.asarray(points, dtype=np.float64)
    if pts.shape != (uv.shape[1], 3):
        raise ValueError(
            f"points must have shape (n_points={uv.shape[1]}, 3) matching pixels' second axis, got {pts.shape}"
        )
    return list(cameras), pts, uv


def _checked_schedule(loss_scale_px: float, loss_schedule: Sequence[float] | None) -> list[float]:
    """The Cauchy scales to run: ``loss_schedule`` if given, else the default continuation."""
    given = [] if loss_schedule is None else [float(v) for v in loss_schedule]
    if loss_schedule is not None and not given:
        raise ValueError("loss_schedule must name at least one Cauchy scale (pixels), e.g. [8.0, 2.0]")
    if not all(np.isfinite(v) and v > 0 for v in [float(loss_scale_px), *given]):
        raise ValueError(
            f"loss scales must be positive pixels, got loss_scale_px={loss_scale_px}, loss_schedule={loss_schedule}"
        )
    return given or default_loss_schedule(float(loss_scale_px))


def _usable_points(points: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Indices of the points with a finite start seen by at least two cameras."""
    used = np.all(np.isfinite(points), axis=1) & (seen.sum(axis=0) >= 2)
    if not used.any():
        raise ValueError("no point is seen by at least two cameras with a finite initial position: nothing to adjust")
    return np.flatnonzero(used)


def _build_reconstruction(
    pycolmap: Any, cameras: Sequence[Camera], points: np.ndarray, pixels: np.ndarray, seen: np.ndarray
) -> tuple[Any, list[int], np.ndarray]:
    """One trivial rig/frame/image per camera, one 3D point per column of ``pixels``.

    Returns ``(rec, image_ids, point_ids)``, ids in camera and point order.
    """
    rec = pycolmap.Reconstruction()
    # point2D index of (camera c, point j) = rank of j among camera c's observations
    p2d_index = np.cumsum(seen, axis=1) - 1
    for c, cam in enumerate(cameras):
        model, params = camera_to_colmap(cam)
        cam_id = c + 1
        rec.add_camera_with_trivial_rig(
            pycolmap.Camera(camera_id=cam_id, model=model, width=cam.width, height=cam.height, params=params)
        )
        keypoints = pixels[c][seen[c]].reshape(-1, 2)
        image = pycolmap.Image(name=f"cam{c:03d}", keypoints=keypoints, camera_id=cam_id, image_id=cam_id)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(np.hstack([cam.R, cam.t[:, None]])))
    point_ids = np.empty(len(points), dtype=np.int64)
    TrackElement = pycolmap.TrackElement
    for j, xyz in enumerate(points):
        cams_j = np.flatnonzero(seen[:, j])
        track = pycolmap.Track([TrackElement(int(c) + 1, int(p2d_index[c, j])) for c in cams_j])
        point_ids[j] = rec.add_point3D(xyz, track)
    if not rec.is_valid():
        raise RuntimeError(
            "pycolmap rejected the reconstruction built from the inputs (Reconstruction.is_valid() is False)"
        )
    return rec, sorted(rec.images), point_ids


def _retriangulate(
    rec: Any, image_ids: Sequence[int], point_ids: np.ndarray, cameras: Sequence[Camera], pixels: np.ndarray,
    scale: float,
) -> int:
    """Re-triangulate the points where that lowers their Cauchy cost (module docstring); returns how many."""
    current, current_pts = _read_back(rec, image_ids, point_ids, cameras)
    fresh, _ = triangulate_points(current, pixels)
    better = _cauchy_cost(current, fresh, pixels, scale) < _cauchy_cost(current, current_pts, pixels, scale)
    for j in np.flatnonzero(better):
        rec.points3D[int(point_ids[j])].xyz = fresh[j]
    return int(better.sum())


def _solve_stage(
    pycolmap: Any, rec: Any, image_ids: Sequence[int], scale: float, label: str, *, refine_intrinsics: bool,
    refine_principal_point: bool, max_iterations: int, verbose: bool, num_threads: int,
) -> tuple[int, str, tuple[float, float]]:
    """One Levenberg-Marquardt solve of ``rec`` (in place) under a Cauchy loss of ``scale`` px.

    Poses and points are always refined, intrinsics only with ``refine_intrinsics``
    (``k4..k6`` held). Returns the iterations, Ceres' termination and the initial and
    final cost; raises if the solution is unusable (``label`` names the stage).
    """
    opts = pycolmap.BundleAdjustmentOptions()
    opts.print_summary = verbose
    opts.refine_focal_length = refine_intrinsics
    opts.refine_principal_point = refine_intrinsics and refine_principal_point
    opts.refine_extra_params = refine_intrinsics
    opts.refine_rig_from_world = True
    opts.refine_points3D = True
    opts.ceres.loss_function_type = pycolmap.LossFunctionType.CAUCHY
    opts.ceres.loss_function_scale = float(scale)
    opts.ceres.solver_options.max_num_iterations = max_iterations
    opts.ceres.solver_options.minimizer_progress_to_stdout = verbose
    opts.ceres.solver_options.num_threads = num_threads
    config = pycolmap.BundleAdjustmentConfig()
    for image_id in image_ids:
        config.add_image(image_id)
    adjuster = pycolmap.create_default_ceres_bundle_adjuster(opts, config, rec)
    keep_alive = hold_rational_terms(adjuster.problem, rec, opts) if refine_intrinsics else []
    with _quiet_glog(pycolmap, enabled=not verbose):
        summary = adjuster.solve()
    del keep_alive
    ceres_summary = summary.ceres_summary
    if not summary.is_solution_usable():
        raise RuntimeError(
            f"bundle adjustment stage {label} (Cauchy {scale:.3g} px) failed: {ceres_summary.message}"
        )
    n_iter = int(ceres_summary.num_successful_steps + ceres_summary.num_unsuccessful_steps)
    return n_iter, str(summary.termination_type.name), (ceres_summary.initial_cost, ceres_summary.final_cost)


@contextmanager
def _quiet_glog(pycolmap: Any, enabled: bool) -> Iterator[None]:
    """Raise glog's threshold to ERROR for the solve.

    With the gauge free, Levenberg-Marquardt's first trial steps on the damped,
    rank-deficient system regularly fail their Cholesky factorisation; Ceres
    rejects the step, raises the damping and goes on, but logs a WARNING each time.
    """
    if not enabled:
        yield
        return
    previous = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 2
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = previous


def _read_back(
    rec: Any, image_ids: Sequence[int], point_ids: np.ndarray, cameras: Sequence[Camera]
) -> tuple[list[Camera], np.ndarray]:
    """The solve's current cameras (sizes from ``cameras``) and points, in ``rec``'s gauge."""
    out = []
    for image_id, cam in zip(image_ids, cameras):
        image = rec.images[image_id]
        colmap_cam = rec.cameras[image.camera_id]
        fx, fy, cx, cy, dist = intrinsics_from_colmap(colmap_cam.model.name, list(colmap_cam.params))
        pose = image.cam_from_world().matrix()
        out.append(
            Camera(
                width=cam.width, height=cam.height, fx=fx, fy=fy, cx=cx, cy=cy, dist=dist,
                R=project_to_so3(pose[:, :3]), t=pose[:, 3],
            )
        )
    return out, np.stack([rec.points3D[int(pid)].xyz for pid in point_ids])


def _cauchy_cost(cameras: Sequence[Camera], points: np.ndarray, pixels: np.ndarray, scale: float) -> np.ndarray:
    """Per-point Cauchy cost ``sum_c b^2 log(1 + e_c^2 / b^2)`` (inf if not finite)."""
    err = reprojection_errors(cameras, points, pixels)
    b2 = float(scale) ** 2
    with np.errstate(over="ignore", invalid="ignore"):
        cost = b2 * np.log1p(err**2 / b2)
        behind = np.zeros(points.shape[0], dtype=bool)
        for c, cam in enumerate(cameras):
            behind |= np.isfinite(err[c]) & ~(cam.depth(points) > 0)
    total = np.nansum(cost, axis=0)
    total[~np.isfinite(total) | behind | ~np.all(np.isfinite(points), axis=1)] = np.inf
    return total


def _align_to_input(
    refined: Sequence[Camera], points: np.ndarray, cameras: Sequence[Camera]
) -> tuple[list[Camera], np.ndarray, dict[str, float]]:
    """Remove the free gauge: map the solve's cameras and points by the similarity that best
    aligns the refined camera frames onto the input ones (module docstring).

    Returns the mapped cameras and points and the report's ``gauge_alignment``.
    """
    scale_ref = _rig_scale(cameras)
    s, Rs, ts = umeyama(_camera_frame_points(refined, scale_ref), _camera_frame_points(cameras, scale_ref))
    aligned = [_apply_similarity(cam, s, Rs, ts) for cam in refined]
    moved = _camera_frame_points(aligned, scale_ref) - _camera_frame_points(cameras, scale_ref)
    alignment = {
        "scale": float(s),
        "rotation_deg": float(np.degrees(np.arccos(np.clip((np.trace(Rs) - 1) / 2, -1, 1)))),
        "translation": float(np.linalg.norm(ts)),
        "rms_camera_change": float(np.sqrt((moved**2).sum(axis=1).mean())),
    }
    return aligned, s * points @ Rs.T + ts, alignment


def _rig_scale(cameras: Sequence[Camera]) -> float:
    centres = np.stack([c.center for c in cameras])
    spread = float(np.linalg.norm(centres - centres.mean(axis=0), axis=1).mean())
    return spread if spread > 1e-9 else 1.0


def _camera_frame_points(cameras: Sequence[Camera], scale: float) -> np.ndarray:
    """Each camera's centre and its x, y, z axis tips at distance ``scale`` (4C, 3)."""
    out = []
    for cam in cameras:
        c = cam.center
        out.append(c)
        out.extend(c + scale * cam.R)  # rows of R are the camera axes in world coordinates
    return np.asarray(out)


def _apply_similarity(cam: Camera, s: float, Rs: np.ndarray, ts: np.ndarray) -> Camera:
    """``cam`` expressed in the world ``X' = s Rs X + ts`` (projections unchanged)."""
    R_new = cam.R @ Rs.T
    return dataclasses.replace(cam, R=project_to_so3(R_new), t=s * cam.t - R_new @ ts)
