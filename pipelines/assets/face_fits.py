"""``face_fits``: the morphable model fitted to a session's landmarks through its calibrated cameras.

Thin by design: the work is ``fitting.face_fit.session``. The zarr store, the
per-view error table and an overlay picture go into ``derived_layout.face_fits_dir(session_id)``.
"""

import tempfile
from pathlib import Path

import cv2
import dagster as dg
import numpy as np

from capture_schema import derived_layout as layout
from capture_schema.manifest import parquet_bytes
from capture_schema.reuse import (CODE_VERSIONS, MissingUpstreamError, fingerprint, library_version,
                                  recorded_fingerprint, recorded_outcome, write_record)
from fitting.calibration.session import read_session_calibration, session_calibration_digest
from pipelines.assets.calibration import camera_calibration
from pipelines.assets.landmarks import face_landmarks
from pipelines.assets.metadata_images import thumbnail_markdown
from pipelines.assets.store_io import load_face_model
from training.stage_io import finite
from fitting.face_fit.quality import CAMERA_CONSISTENCY_MAX, FIT_QUALITY_MAX, MIN_CAMERA_VIEWS
from pipelines.partitions import sessions_partitions
from pipelines.resources import CapturesResource, FaceModelResource, StorageResource


class FaceFitConfig(dg.Config):
    """Acceptance thresholds of a fit, as residuals relative to the detector's expected noise
    at each view's angle (``fitting.face_fit.quality``: what they measure and the measured distributions)."""

    max_fit_residual: float = FIT_QUALITY_MAX
    """``fit_within_detector_noise`` fails when the median over the used views of (landmark residual /
    mediapipe's expected error at that view angle) exceeds this."""
    max_camera_residual: float = CAMERA_CONSISTENCY_MAX
    """``cameras_agree_with_fit`` fails naming every camera whose median of that ratio over all its
    detected views (those the fit dropped as outliers included) exceeds this."""


@dg.asset(
    partitions_def=sessions_partitions,
    deps=[face_landmarks, camera_calibration],
    group_name="fitting",
    kinds={"torch", "zarr"},
    code_version=CODE_VERSIONS["face_fits"],
    check_specs=[
        dg.AssetCheckSpec("fit_within_detector_noise", asset="face_fits", blocking=True,
                          description="median over the used views of landmark residual / the detector's expected "
                                      "error at that view angle <= max_fit_residual"),
        dg.AssetCheckSpec("cameras_agree_with_fit", asset="face_fits", blocking=True,
                          description="for every camera, the median of that ratio over its detected views "
                                      "(outliers included) <= max_camera_residual: catches a moved or swapped camera"),
    ],
)
def face_fits(
    context: dg.AssetExecutionContext, config: FaceFitConfig, captures: CapturesResource,
    storage: StorageResource, face_model: FaceModelResource,
) -> dg.MaterializeResult:
    """Identity, per-frame expression and head pose, posed vertices, and per-view reprojection error."""
    session_id = context.partition_key
    store = storage.storage()
    target = layout.face_fits_dir(session_id)
    landmarks_fp = recorded_fingerprint(store, layout.landmarks_dir(session_id))
    try:
        calibration_digest = session_calibration_digest(store, session_id)
    except MissingUpstreamError as exc:
        raise dg.Failure(str(exc)) from None
    inputs = {"landmarks": landmarks_fp, "calibration": calibration_digest,
              "face_model": face_model.choice().identity(), "torch": library_version("torch")}
    fp = fingerprint("face_fits", inputs)
    outcome = recorded_outcome(store, target, fp) if landmarks_fp else None
    reused = outcome is not None
    if reused:
        context.log.info(f"{session_id}: landmarks, calibration and face model unchanged since the fit at "
                         f"{store.uri(target)}: reusing it")
    else:
        outcome = _fit(context, captures, store, face_model, session_id, target, fp, inputs)
    if outcome["flagged_frames"]:
        context.log.warning(f"frames fitted from fewer than 2 views or not at all: {outcome['flagged_frames']}")
    fit_quality, cameras = _gate_checks(outcome, config)
    median_rmse = outcome["median_view_rmse_px"]
    return dg.MaterializeResult(
        metadata={
            "model": outcome["model"],
            "median_view_rmse_px": round(median_rmse, 3) if median_rmse is not None else float("nan"),
            "max_view_rmse_px": outcome["max_view_rmse_px"] if outcome["max_view_rmse_px"] is not None
            else float("nan"),
            "views": dg.MetadataValue.json(outcome["views"]),
            "flagged_frames": dg.MetadataValue.json(outcome["flagged_frames"]),
            "overlay": dg.MetadataValue.md(_overlay_markdown(store, session_id, outcome["overlay_caption"])),
            "fit_zarr": dg.MetadataValue.path(store.uri(layout.fit_zarr(session_id))),
            "views_table": dg.MetadataValue.path(store.uri(layout.fit_views(session_id))),
            "reused": reused,
        },
        check_results=[fit_quality, cameras],
        data_version=dg.DataVersion(fp),
    )


def _gate_checks(outcome: dict, config: FaceFitConfig) -> tuple[dg.AssetCheckResult, dg.AssetCheckResult]:
    """Both fit gates from the outcome's numbers under the current thresholds (so a reused fit is
    judged by today's settings, and a threshold change needs no refit)."""
    median = outcome["fit_quality_median"]
    fit_quality = dg.AssetCheckResult(
        check_name="fit_within_detector_noise",
        passed=median is not None and median <= config.max_fit_residual,
        metadata={"median_normalised_residual": median if median is not None else float("nan"),
                  "max_fit_residual": config.max_fit_residual, "used_views": outcome["fit_quality_views"]})
    per_camera = outcome["camera_median"]
    judged = {c: v for c, v in per_camera.items() if v is not None}
    failing = sorted((c for c, v in judged.items() if v > config.max_camera_residual), key=lambda c: -judged[c])
    table = ["| camera | median normalised residual | detected views |", "|---|---|---|"] + [
        f"| {c} | {'-' if v is None else f'{v:.2f}'} | {outcome['camera_views'][c]} |" for c, v in per_camera.items()]
    cameras = dg.AssetCheckResult(
        check_name="cameras_agree_with_fit", passed=not failing,
        description=(f"camera(s) {', '.join(failing)} disagree with the fit in most frames: check their calibration "
                     "(moved, rotated or swapped camera)" if failing else None),
        metadata={"failing_cameras": dg.MetadataValue.json(failing),
                  "worst_camera_residual": max(judged.values()) if judged else float("nan"),
                  "max_camera_residual": config.max_camera_residual,
                  "unjudged_cameras": dg.MetadataValue.json(
                      [c for c, v in per_camera.items() if v is None]),  # < MIN_CAMERA_VIEWS detections
                  "min_camera_views": MIN_CAMERA_VIEWS,
                  "per_camera": dg.MetadataValue.md("\n".join(table))})
    return fit_quality, cameras


def _overlay_markdown(store, session_id: str, caption: str | None) -> str:
    if caption is None or not store.exists(layout.fit_overlay(session_id)):
        return "capture image missing"
    png = np.frombuffer(store.read_bytes(layout.fit_overlay(session_id)), np.uint8)
    overlay = cv2.cvtColor(cv2.imdecode(png, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return f"{caption}\n\n{thumbnail_markdown(overlay, 'fit overlay')}"


def _fit(context: dg.AssetExecutionContext, captures: CapturesResource, store, face_model: FaceModelResource,
         session_id: str, target: str, fp: str, inputs: dict) -> dict:
    """Fit, publish the fit zarr, the views table, the overlay and ``inputs.json`` together; the outcome summary."""
    from fitting.face_fit.overlay import session_overlay
    from fitting.face_fit.quality import evaluate_fit
    from fitting.face_fit.session import FitInputError, fit_session, fit_views_table, write_session_fit
    from fitting.landmarks.store import read_landmarks_zarr

    calibration = read_session_calibration(store, session_id)
    with store.local_directory(layout.landmarks_zarr(session_id)) as path:
        landmarks = read_landmarks_zarr(path)
    model = load_face_model(face_model)
    context.log.info(f"fitting {model.name} ({model.n_identity} identity, {model.n_expression} expression "
                     f"coefficients) to {int(landmarks.detected.sum())} views")
    try:
        result = fit_session(model, landmarks, calibration)
    except FitInputError as exc:
        raise dg.Failure(f"session {session_id}: {exc}") from None
    fit = result.fit
    overlay, e, c = session_overlay(result, captures.session_dir(session_id), calibration.cameras, landmarks,
                                    model.faces)
    used = fit.view_status == "used"
    gates = evaluate_fit(result, calibration)
    outcome = finite({
        "fit_quality_median": gates.fit_quality.median_normalised,
        "fit_quality_views": gates.fit_quality.n_views,
        "camera_median": gates.camera_consistency.camera_median,
        "camera_views": gates.camera_consistency.camera_views,
        "model": model.name,
        "median_view_rmse_px": float(np.median(fit.view_rmse_px[used])) if used.any() else None,
        "max_view_rmse_px": round(float(np.max(fit.view_rmse_px[used])), 3) if used.any() else None,
        "views": {str(s): int((fit.view_status == s).sum()) for s in np.unique(fit.view_status)},
        "flagged_frames": result.flagged_frames,
        "overlay_caption": (f"{result.expressions[e]} / {result.cameras[c]} (green: detected, red: fitted)"
                            if overlay is not None else None),
    })
    with tempfile.TemporaryDirectory() as tmp:
        write_session_fit(result, Path(tmp) / layout.FIT_ZARR)
        (Path(tmp) / layout.FIT_VIEWS_FILE).write_bytes(parquet_bytes(fit_views_table(result)))
        if overlay is not None:
            cv2.imwrite(str(Path(tmp) / layout.FIT_OVERLAY_FILE), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
        write_record(Path(tmp), fp, inputs, outcome)
        store.put_directory(tmp, target)
    return outcome
