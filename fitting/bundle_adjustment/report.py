"""The report of :func:`fitting.bundle_adjustment.points.refine_cameras_and_points`.

Kept apart from the solve so that module holds only the pycolmap plumbing. The
errors are measured with the project's own projection (OpenCV model,
``Camera.project``), not COLMAP's, so they compare with every other error the
project reports; points behind an observing camera are counted, not dropped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from capture_schema.cameras import Camera
from fitting.bundle_adjustment.triangulation import error_summary, observed_mask, reprojection_errors


@dataclass
class BundleAdjustmentReport:
    """What the bundle adjustment did, in numbers (all errors in pixels).

    ``before`` / ``after`` summarise the reprojection errors (``median_px``,
    ``p90_px``, ``mean_px``, ``n_observations``) over the same observations: every
    observation of every point that went into the solve (``n_points_used`` points,
    ``n_observations_used`` observations); ``after["n_observations"]`` is the count
    the final median is taken over. Points left out (seen by fewer than two cameras,
    or a non-finite initial position) are counted in ``n_points_skipped`` and their
    observations in ``n_observations_skipped``; nothing is dropped for having a large
    error. ``n_points_behind_camera_*`` count points behind at least one camera that
    observed them (their errors are included). ``points_retriangulated[k]`` is how
    many points got a fresh linear triangulation before stage ``k + 2``;
    ``termination`` is Ceres' verdict per stage (``NO_CONVERGENCE`` = the stage
    used all its iterations). ``gauge_alignment`` is the similarity applied after the
    solve (``scale``, ``rotation_deg``, ``translation`` in world units) and
    ``rms_camera_change``, the RMS move of the camera centres and axis tips.
    """

    n_cameras: int
    n_points: int
    n_observations: int
    n_points_used: int
    n_observations_used: int
    n_points_skipped: int
    n_observations_skipped: int
    before: dict[str, float | int]
    after: dict[str, float | int]
    n_points_behind_camera_before: int
    n_points_behind_camera_after: int
    loss: str
    loss_scale_px: float
    loss_schedule_px: list[float]
    refine_intrinsics: bool
    iterations: int
    stage_iterations: list[int]
    points_retriangulated: list[int]
    termination: list[str]
    time_s: float
    solve_time_s: float
    gauge: str
    gauge_alignment: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        b, a = self.before, self.after
        return (
            f"bundle adjustment over {self.n_cameras} cameras, {self.n_points_used} points, "
            f"{self.n_observations_used} observations ({self.n_points_skipped} points skipped): "
            f"median {b['median_px']:.2f} -> {a['median_px']:.2f} px, "
            f"p90 {b['p90_px']:.2f} -> {a['p90_px']:.2f} px, "
            f"{self.iterations} iterations, {self.time_s:.1f} s"
        )


def measure_fit(
    cameras: Sequence[Camera], points: np.ndarray, pixels: np.ndarray, used_idx: np.ndarray
) -> tuple[dict[str, float | int], int]:
    """Error summary and behind-camera count over every observation of the points ``used_idx``.

    Measured the same way before and after the solve, so the two are comparable.
    """
    summary = error_summary(reprojection_errors(cameras, points, pixels)[:, used_idx])
    return summary, _behind_count(cameras, points[used_idx], observed_mask(pixels)[:, used_idx])


def _behind_count(cameras: Sequence[Camera], points: np.ndarray, seen: np.ndarray) -> int:
    behind = np.zeros(points.shape[0], dtype=bool)
    for c, cam in enumerate(cameras):
        with np.errstate(invalid="ignore"):
            behind |= seen[c] & (cam.depth(points) <= 0)
    return int(behind.sum())


def assemble_report(
    seen: np.ndarray,
    used_idx: np.ndarray,
    *,
    before: tuple[dict[str, float | int], int],
    after: tuple[dict[str, float | int], int],
    schedule: Sequence[float],
    refine_intrinsics: bool,
    stage_iterations: list[int],
    points_retriangulated: list[int],
    termination: list[str],
    time_s: float,
    solve_time_s: float,
    gauge_alignment: dict[str, float],
) -> BundleAdjustmentReport:
    """The report from the observation mask ``seen`` ``(C, N)``, the points used and the solve's record.

    ``before`` / ``after`` are :func:`measure_fit`'s ``(summary, behind count)``.
    """
    seen_used = seen[:, used_idx]
    n_cams, n_points = seen.shape
    return BundleAdjustmentReport(
        n_cameras=n_cams,
        n_points=n_points,
        n_observations=int(seen.sum()),
        n_points_used=int(len(used_idx)),
        n_observations_used=int(seen_used.sum()),
        n_points_skipped=int(n_points - len(used_idx)),
        n_observations_skipped=int(seen.sum() - seen_used.sum()),
        before=before[0],
        after=after[0],
        n_points_behind_camera_before=before[1],
        n_points_behind_camera_after=after[1],
        loss="cauchy",
        loss_scale_px=float(schedule[-1]),
        loss_schedule_px=[float(v) for v in schedule],
        refine_intrinsics=bool(refine_intrinsics),
        iterations=int(sum(stage_iterations)),
        stage_iterations=stage_iterations,
        points_retriangulated=points_retriangulated,
        termination=termination,
        time_s=float(time_s),
        solve_time_s=float(solve_time_s),
        gauge="free during the solve; similarity-aligned to the input camera frames afterwards",
        gauge_alignment=gauge_alignment,
    )
