"""``face_fits``: the morphable model fitted to a session's landmarks through its calibrated cameras.

Thin by design: the work is ``fitting.session_fit``. The zarr store, the
per-view error table and an overlay picture go under ``face_fits/<session_id>/``.
"""

import base64
import tempfile
from pathlib import Path

import cv2
import dagster as dg
import numpy as np

from capture_schema.manifest import parquet_bytes
from pipelines.assets.calibration import camera_calibration, read_session_calibration
from pipelines.assets.landmarks import face_landmarks, landmarks_relpath
from pipelines.partitions import sessions_partitions
from pipelines.resources import CapturesResource, FaceModelResource, StorageResource

THUMBNAIL_PX = 320


class FaceFitConfig(dg.Config):
    """Acceptance threshold of a fit."""

    max_rmse_px: float = 4.0
    """The ``reprojection_within_threshold`` check fails when the median per-view RMSE of the
    used views exceeds this (pixels; mediapipe itself errs ~1.5 px frontal, 6-9 px at 60 degrees)."""


def face_fits_relpath(session_id: str) -> str:
    return f"face_fits/{session_id}"


def _thumbnail_markdown(image_rgb: np.ndarray) -> str:
    scale = THUMBNAIL_PX / max(image_rgb.shape[:2])
    small = cv2.resize(image_rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else image_rgb
    ok, png = cv2.imencode(".png", cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    return f"![fit overlay](data:image/png;base64,{base64.b64encode(png.tobytes()).decode()})"


@dg.asset(
    partitions_def=sessions_partitions,
    deps=[face_landmarks, camera_calibration],
    group_name="fitting",
    kinds={"torch", "zarr"},
    check_specs=[dg.AssetCheckSpec("reprojection_within_threshold", asset="face_fits", blocking=True,
                                   description="median per-view landmark RMSE of the used views <= max_rmse_px")],
)
def face_fits(
    context: dg.AssetExecutionContext, config: FaceFitConfig, captures: CapturesResource,
    storage: StorageResource, face_model: FaceModelResource,
) -> dg.MaterializeResult:
    """Identity, per-frame expression and head pose, posed vertices, and per-view reprojection error."""
    from fitting.fit_overlay import session_overlay
    from fitting.landmarks import read_landmarks_zarr
    from fitting.session_fit import FitInputError, fit_session, fit_views_table, write_session_fit

    session_id = context.partition_key
    store = storage.storage()
    calibration = read_session_calibration(store, session_id)
    with store.local_directory(f"{landmarks_relpath(session_id)}/landmarks.zarr") as path:
        landmarks = read_landmarks_zarr(path)
    try:
        model = face_model.load()
    except (OSError, ValueError) as exc:
        raise dg.Failure(f"face model {face_model.kind!r} could not be loaded: {exc}") from None
    context.log.info(f"fitting {model.name} ({model.n_identity} identity, {model.n_expression} expression "
                     f"coefficients) to {int(landmarks.detected.sum())} views")
    try:
        result = fit_session(model, landmarks, calibration)
    except FitInputError as exc:
        raise dg.Failure(f"session {session_id}: {exc}") from None
    fit = result.fit
    overlay, e, c = session_overlay(result, captures.session_dir(session_id), calibration.cameras, landmarks,
                                    model.faces)
    target = face_fits_relpath(session_id)
    with tempfile.TemporaryDirectory() as tmp:
        write_session_fit(result, Path(tmp) / "fit.zarr")
        (Path(tmp) / "views.parquet").write_bytes(parquet_bytes(fit_views_table(result)))
        if overlay is not None:
            cv2.imwrite(str(Path(tmp) / "overlay.png"), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
        store.put_directory(tmp, target)

    used = fit.view_status == "used"
    median_rmse = float(np.median(fit.view_rmse_px[used])) if used.any() else float("nan")
    passed = bool(used.any()) and median_rmse <= config.max_rmse_px
    status_counts = {s: int((fit.view_status == s).sum()) for s in np.unique(fit.view_status)}
    if result.flagged_frames:
        context.log.warning(f"frames fitted from fewer than 2 views or not at all: {result.flagged_frames}")
    return dg.MaterializeResult(
        metadata={
            "model": model.name,
            "median_view_rmse_px": round(median_rmse, 3),
            "max_view_rmse_px": round(float(np.max(fit.view_rmse_px[used])), 3) if used.any() else float("nan"),
            "views": dg.MetadataValue.json(status_counts),
            "flagged_frames": dg.MetadataValue.json(result.flagged_frames),
            "overlay": dg.MetadataValue.md(f"{result.expressions[e]} / {result.cameras[c]} (green: detected, "
                                           f"red: fitted)\n\n{_thumbnail_markdown(overlay)}"
                                           if overlay is not None else "capture image missing"),
            "fit_zarr": dg.MetadataValue.path(store.uri(f"{target}/fit.zarr")),
            "views_table": dg.MetadataValue.path(store.uri(f"{target}/views.parquet")),
        },
        check_results=[dg.AssetCheckResult(
            check_name="reprojection_within_threshold", passed=passed,
            metadata={"median_view_rmse_px": median_rmse, "max_rmse_px": config.max_rmse_px})],
    )
