"""Calibrate a rig from a calibration folder and write the results atomically.

``calibrate_folder`` = detect (``detect``) -> initialise (``initialize``) -> one
joint bundle adjustment (``refine``). Everything a user must know to trust or
distrust the cameras travels with the result: per-camera detection counts (what
was skipped and why), per-camera inlier RMSE / observation / outlier counts, the
initial RMSE, the solver's termination and timings.

``write_calibration_outputs`` builds ``calibration.json`` (the contract in
``capture_schema.calibration_file``), ``colmap/`` (a COLMAP text model: one image
per camera holding that camera's inlier corner detections of every board moment,
linked to the board corners in world coordinates; a camera does not move, so
that is geometrically exact), ``transforms.json`` and ``calibration_report.json``
(detections, residual statistics, lens-model coverage warnings, solver summary)
in a temporary sibling folder and renames it into place: a failure leaves nothing
half written. All four are byte-identical when re-run on the same input.

Known limit, measured on the simulator: with boards held at the head position the
corners cover only the central ~50 % of each image, so the five distortion terms
are fitted there and extrapolated outside (k3 reached +-100s, moving the image
corner by tens of pixels while the head volume still projects within 0.02 px).
The report's ``corner_radius_fraction``, ``distortion_at_image_corner_px`` and
``warnings`` say so per camera.
"""

from __future__ import annotations

import errno
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from capture_schema import derived_layout as layout
from capture_schema.atomic import atomic_directory, atomic_write_bytes, atomic_write_json
from capture_schema.board import BoardSpec, board_to_dict
from capture_schema.calibration_file import Calibration, write_calibration
from capture_schema.cameras import Camera
from capture_schema.converters import write_colmap_model, write_transforms
from capture_schema.layout import BOARD_FILE
from fitting.calibration.boards import board_object_points
from fitting.calibration.detect import (
    CameraDetections,
    ProgressCallback,
    detect_folder,
    list_calibration_images,
    load_board,
)
from fitting.calibration.errors import CalibrationError
from fitting.calibration.initialize import InitialRig, initialize_rig
from fitting.calibration.refine import LOSS_SCALE_PX, CameraResiduals, RefinedRig, refine_rig
from fitting.rig_picture import stand_in_picture

__all__ = [
    "CalibrationError",
    "CalibrationResult",
    "calibrate_folder",
    "calibration_input_hash",
    "write_calibration_outputs",
]

#: A camera whose inlier RMSE exceeds this, or with more than this fraction of outlier
#: observations, is not trusted: the result is refused with an error naming it.
MAX_CAMERA_RMSE_PX = 2.0
MAX_OUTLIER_FRACTION = 0.2
#: Below this corner_radius_fraction the report warns that the lens model is extrapolated.
COVERAGE_WARNING = 0.7


@dataclass
class CalibrationResult:
    """A calibrated rig with the evidence behind it."""

    calibration: Calibration  # cameras (world = first camera, metres) + inlier RMSE per camera
    board: BoardSpec
    detections: dict[str, CameraDetections]  # per camera: views found, files skipped and why
    residuals: dict[str, CameraResiduals]  # per camera, after refinement
    board_poses: dict[str, np.ndarray]  # moment -> T_world_board (4x4)
    rmse_all_px: float
    camera_rmse_all_px: dict[str, float]
    n_outliers: dict[str, int]
    initial_rmse_px: float
    rejected_views: dict[str, dict[str, str]]  # camera -> moment -> why left out of the adjustment
    n_reordered_views: int
    solver: dict
    outlier_threshold_px: float
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def cameras(self) -> dict[str, Camera]:
        return self.calibration.cameras

    @property
    def rmse_px(self) -> float:
        return self.calibration.rmse_px

    def report(self, timings: bool = True) -> dict:
        """JSON-ready summary: detection counts, residual statistics, lens-model coverage, solver.

        ``timings=False`` leaves out ``timings_s`` (wall-clock seconds per stage), which is
        how ``calibration_report.json`` is written: derived files are byte-identical on reruns.
        """
        cams = {}
        warnings = []
        for cam_id, det in self.detections.items():
            coverage = _coverage(self.residuals[cam_id].observed, det.image_size)
            corner_shift = _distortion_at_image_corner(self.cameras[cam_id])
            if coverage is not None and coverage < COVERAGE_WARNING:
                warnings.append(
                    f"camera {cam_id!r}: board corners reach only {coverage:.0%} of the way to the image corners; "
                    f"the lens model is extrapolated beyond (it moves the image corner by {corner_shift:.1f} px): "
                    "trust these cameras inside the board-covered region, or shoot boards nearer the image edges"
                )
            norms = self.residuals[cam_id].norms
            cams[cam_id] = {
                "detection": det.summary(),
                "views_used": len(set(self.residuals[cam_id].frames)),
                "rejected_views": dict(sorted(self.rejected_views.get(cam_id, {}).items())),
                "rmse_px": _finite(self.calibration.camera_rmse_px[cam_id]),
                "rmse_all_px": _finite(self.camera_rmse_all_px[cam_id]),
                "median_error_px": _finite(float(np.median(norms)) if norms.size else float("nan")),
                "max_error_px": _finite(float(norms.max()) if norms.size else float("nan")),
                "n_observations": int(self.calibration.n_observations[cam_id]),
                "n_outliers": int(self.n_outliers[cam_id]),
                # How far from the image centre the corners reach (1 = image corner): the lens model
                # is fitted inside this radius and only extrapolated beyond it.
                "corner_radius_fraction": coverage,
                # How far the fitted distortion moves the image corner (pixels), for spotting wild k2/k3.
                "distortion_at_image_corner_px": round(corner_shift, 3),
            }
        return {
            "board": board_to_dict(self.board),
            "rmse_px": _finite(self.rmse_px),
            "rmse_all_px": _finite(self.rmse_all_px),
            "initial_rmse_px": _finite(self.initial_rmse_px),
            "rmse_definition": (
                "sqrt(mean |observed - projected|^2) over observations with error <= "
                f"{self.outlier_threshold_px:g} px (inliers); rmse_all_px over every observation"
            ),
            "n_board_moments": len(self.board_poses),
            "n_reordered_views": self.n_reordered_views,
            "solver": self.solver,
            "warnings": warnings,
            "cameras": cams,
        } | ({"timings_s": {k: round(v, 3) for k, v in self.timings_s.items()}} if timings else {})


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _distortion_at_image_corner(cam: Camera) -> float:
    """Pixels between where the pinhole model and the full lens model put the image corner's ray."""
    xy = np.array([(0.0 - cam.cx) / cam.fx, (0.0 - cam.cy) / cam.fy])
    shift = cam.distort_normalized(xy) - xy
    return float(np.hypot(shift[0] * cam.fx, shift[1] * cam.fy))


def _coverage(pixels: np.ndarray, size: tuple[int, int] | None) -> float | None:
    if size is None or len(pixels) == 0:
        return None
    centre = (np.asarray(size, dtype=np.float64) - 1.0) / 2.0
    return round(float(np.linalg.norm(pixels - centre, axis=1).max() / np.hypot(*size) * 2.0), 3)


def calibration_input_hash(calib_dir: str | os.PathLike[str]) -> str:
    """sha256 over ``board.json`` and every calibration image (relative path + bytes, sorted).

    Two folders with the same board file and the same images under the same names
    hash alike wherever they live, so sessions sharing a calibration can reuse a result.
    Lengths are framed into the digest, so no two different inputs can collide by
    concatenation.
    """
    root = Path(calib_dir)
    board = root / BOARD_FILE
    try:
        has_board = board.is_file()
    except OSError as exc:
        raise CalibrationError(f"cannot read calibration folder {str(root)!r}: {exc.strerror or exc}") from None
    if not has_board:
        raise CalibrationError(f"calibration folder {str(root)!r} has no {BOARD_FILE}", field="")
    listing = list_calibration_images(root, skip_empty=True)  # an empty folder adds nothing to hash
    files = [board] + [p for frames in listing.values() for p in frames.values()]
    entries = sorted((p.relative_to(root).as_posix(), p) for p in files)
    digest = hashlib.sha256(b"o2a-calibration-input-v1\0")
    for rel, path in entries:
        name = rel.encode("utf-8")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CalibrationError(f"cannot read {str(path)!r}: {exc.strerror or exc}",
                                   camera=None if rel == BOARD_FILE else rel.split("/")[0]) from None
        digest.update(len(name).to_bytes(8, "little") + name + len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def calibrate_folder(
    calib_dir: str | os.PathLike[str],
    cameras: Sequence[str] | None = None,
    progress: ProgressCallback | None = None,
    *,
    subpix_half_window: int | None = None,
    loss_scale_px: float = LOSS_SCALE_PX,
) -> CalibrationResult:
    """Calibrate the rig in ``calib_dir`` (``board.json`` + ``<camera_id>/<NNN>.png|jpg``).

    ``cameras`` fixes which cameras and in which order (the first defines the world
    frame); ``None`` takes every camera folder, sorted by name. ``progress(stage,
    done, total)`` is called per image during detection and per step afterwards.
    ``subpix_half_window`` fixes the chessboard ``cornerSubPix`` half-window (default:
    sized to the squares, see ``detect``); ``loss_scale_px`` is the Cauchy scale of the
    bundle adjustment (see ``refine``). Raises ``CalibrationError`` (naming the
    camera or board field) for input that cannot give a trustworthy rig, including
    a camera whose residuals exceed ``MAX_CAMERA_RMSE_PX`` / ``MAX_OUTLIER_FRACTION``.
    """
    start = time.perf_counter()
    spec = load_board(calib_dir)
    detections = detect_folder(calib_dir, cameras, spec=spec, progress=progress,
                               subpix_half_window=subpix_half_window)
    if not detections.cameras:
        raise CalibrationError(f"no cameras to calibrate in {str(calib_dir)!r}")
    t_detect = time.perf_counter()
    nothing = [c for c, d in detections.cameras.items() if d.n_detected == 0]
    if len(nothing) == len(detections.cameras):
        raise CalibrationError(
            f"the board described by {BOARD_FILE} ({board_to_dict(spec)}) was found in none of the "
            f"{sum(d.n_images for d in detections.cameras.values())} images: check the board type, "
            "its size (squares or inner corners) and the dictionary",
        )
    initial: InitialRig = initialize_rig(detections, progress)
    t_init = time.perf_counter()
    refined: RefinedRig = refine_rig(initial, progress, loss_scale_px=loss_scale_px)
    t_refine = time.perf_counter()
    for cam_id, rmse in refined.camera_rmse_px.items():
        n_all = refined.n_observations[cam_id] + refined.n_outliers[cam_id]
        outlier_share = refined.n_outliers[cam_id] / max(n_all, 1)
        if not rmse <= MAX_CAMERA_RMSE_PX or outlier_share > MAX_OUTLIER_FRACTION:
            raise CalibrationError(
                f"camera {cam_id!r} does not fit the rig: inlier RMSE {rmse:.2f} px (limit {MAX_CAMERA_RMSE_PX}), "
                f"{refined.n_outliers[cam_id]} of {n_all} observations beyond {refined.outlier_threshold_px:g} px "
                f"(limit {MAX_OUTLIER_FRACTION:.0%}); check board.json (board size, square length), that its "
                "images are synchronised with the other cameras', and that the lens is not refocused between shots",
                camera=cam_id,
            )
    calibration = Calibration(
        cameras=refined.cameras,
        rmse_px=refined.rmse_px,
        camera_rmse_px=refined.camera_rmse_px,
        n_observations=refined.n_observations,
    )
    return CalibrationResult(
        calibration=calibration,
        board=spec,
        detections=dict(detections.cameras),
        residuals=refined.residuals,
        board_poses=refined.board_poses,
        rmse_all_px=refined.rmse_all_px,
        camera_rmse_all_px=refined.camera_rmse_all_px,
        n_outliers=refined.n_outliers,
        initial_rmse_px=refined.initial_rmse_px,
        rejected_views=initial.rejected_views,
        n_reordered_views=initial.n_reordered_views,
        solver=dict(refined.solver, colmap_mean_error_px=refined.colmap_mean_error_px),
        outlier_threshold_px=refined.outlier_threshold_px,
        timings_s={"detect": t_detect - start, "initialize": t_init - t_detect, "refine": t_refine - t_init},
    )


def _colmap_points(result: CalibrationResult) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Board corners of every moment in world coordinates, and each camera's inlier pixels of them."""
    obj = board_object_points(result.board)
    keys = list(result.board_poses)
    row = {key: i * len(obj) for i, key in enumerate(keys)}
    points = np.zeros((0, 3))
    if keys:
        points = np.concatenate([obj @ T[:3, :3].T + T[:3, 3] for T in result.board_poses.values()])
    observations = {}
    for cam_id, res in result.residuals.items():
        uv = np.full((len(points), 2), np.nan)
        keep = res.norms <= result.outlier_threshold_px
        for key, j, xy, ok in zip(res.frames, res.ids, res.observed, keep):
            if ok and key in row:
                uv[row[key] + int(j)] = xy
        observations[cam_id] = uv
    return points, observations


def write_calibration_outputs(result: CalibrationResult, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``calibration.json``, ``colmap/``, ``transforms.json``, ``calibration_report.json`` and the
    camera picture (``cameras.png``).

    Built in a temporary sibling of ``out_dir`` and renamed into place (an existing
    ``out_dir`` is replaced whole only once the new one is complete). An ``out_dir``
    that is an existing file, or a failed write (disk full, file size limit, read-only
    or unwritable folder), raises ``OSError`` naming the path; nothing is replaced then.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder (calibration writes a folder)",
                                 str(out_dir))
    points, observations = _colmap_points(result)
    with atomic_directory(out_dir) as tmp:
        write_calibration(tmp / layout.CALIBRATION_FILE, result.calibration)
        write_colmap_model(result.cameras, tmp / layout.COLMAP_DIR, points3d=points, observations=observations)
        check_colmap_written(tmp / layout.COLMAP_DIR, len(result.cameras), len(points))
        write_transforms(tmp / layout.TRANSFORMS_FILE, result.cameras)
        atomic_write_json(tmp / layout.CALIBRATION_REPORT_FILE, result.report(timings=False))
        atomic_write_bytes(tmp / layout.CALIBRATION_PICTURE_FILE, stand_in_picture(result.cameras))
    return out_dir


def check_colmap_written(model_dir: Path, n_images: int, n_points: int) -> None:
    """Read the COLMAP model back: pycolmap's writer does not report a failed write.

    Measured under a file-size limit (EFBIG): its C++ streams stop writing and return
    normally, leaving a truncated ``images.txt`` / ``points3D.txt`` (a full disk goes
    through the same unchecked streams).
    """
    import pycolmap

    try:
        rec = pycolmap.Reconstruction(str(model_dir))
        complete = rec.num_images() == n_images and rec.num_points3D() == n_points
    except Exception:  # a truncated file fails to parse (pycolmap raises IndexError, ValueError, ...)
        complete = False
    if not complete:
        raise OSError(errno.EIO, "the COLMAP model was written incompletely (disk full or file size limit?)",
                      str(model_dir))
