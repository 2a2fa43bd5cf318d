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
from pipelines.assets.calibration import camera_calibration, read_session_calibration, session_calibration_digest
from pipelines.assets.landmarks import face_landmarks, landmarks_relpath
from pipelines.assets.reuse import (CODE_VERSIONS, fingerprint, library_version, local_file_identity,
                                    recorded_fingerprint, recorded_outcome, write_record)
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


def face_model_identity(face_model: FaceModelResource) -> dict:
    """What names the face model as an input: its kind and the files it is read from."""
    return {"kind": face_model.kind, "path": local_file_identity(face_model.path),
            "embedding": local_file_identity(face_model.embedding)}


@dg.asset(
    partitions_def=sessions_partitions,
    deps=[face_landmarks, camera_calibration],
    group_name="fitting",
    kinds={"torch", "zarr"},
    code_version=CODE_VERSIONS["face_fits"],
    check_specs=[dg.AssetCheckSpec("reprojection_within_threshold", asset="face_fits", blocking=True,
                                   description="median per-view landmark RMSE of the used views <= max_rmse_px")],
)
def face_fits(
    context: dg.AssetExecutionContext, config: FaceFitConfig, captures: CapturesResource,
    storage: StorageResource, face_model: FaceModelResource,
) -> dg.MaterializeResult:
    """Identity, per-frame expression and head pose, posed vertices, and per-view reprojection error."""
    session_id = context.partition_key
    store = storage.storage()
    target = face_fits_relpath(session_id)
    landmarks_fp = recorded_fingerprint(store, landmarks_relpath(session_id))
    inputs = {"landmarks": landmarks_fp, "calibration": session_calibration_digest(store, session_id),
              "face_model": face_model_identity(face_model), "torch": library_version("torch")}
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
    median_rmse = outcome["median_view_rmse_px"]
    passed = median_rmse is not None and median_rmse <= config.max_rmse_px
    overlay = _overlay_markdown(store, target, outcome["overlay_caption"])
    return dg.MaterializeResult(
        metadata={
            "model": outcome["model"],
            "median_view_rmse_px": round(median_rmse, 3) if median_rmse is not None else float("nan"),
            "max_view_rmse_px": outcome["max_view_rmse_px"] if outcome["max_view_rmse_px"] is not None
            else float("nan"),
            "views": dg.MetadataValue.json(outcome["views"]),
            "flagged_frames": dg.MetadataValue.json(outcome["flagged_frames"]),
            "overlay": dg.MetadataValue.md(overlay),
            "fit_zarr": dg.MetadataValue.path(store.uri(f"{target}/fit.zarr")),
            "views_table": dg.MetadataValue.path(store.uri(f"{target}/views.parquet")),
            "reused": reused,
        },
        check_results=[dg.AssetCheckResult(
            check_name="reprojection_within_threshold", passed=passed,
            metadata={"median_view_rmse_px": median_rmse if median_rmse is not None else float("nan"),
                      "max_rmse_px": config.max_rmse_px})],
        data_version=dg.DataVersion(fp),
    )


def _overlay_markdown(store, target: str, caption: str | None) -> str:
    if caption is None or not store.exists(f"{target}/overlay.png"):
        return "capture image missing"
    png = np.frombuffer(store.read_bytes(f"{target}/overlay.png"), np.uint8)
    overlay = cv2.cvtColor(cv2.imdecode(png, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return f"{caption}\n\n{_thumbnail_markdown(overlay)}"


def _fit(context: dg.AssetExecutionContext, captures: CapturesResource, store, face_model: FaceModelResource,
         session_id: str, target: str, fp: str, inputs: dict) -> dict:
    """Fit, publish fit.zarr, views.parquet, overlay.png and ``inputs.json`` together; the outcome summary."""
    from fitting.fit_overlay import session_overlay
    from fitting.landmarks import read_landmarks_zarr
    from fitting.session_fit import FitInputError, fit_session, fit_views_table, write_session_fit
    from pipelines.assets.store_io import finite, load_face_model  # store_io imports this module's dependants

    calibration = read_session_calibration(store, session_id)
    with store.local_directory(f"{landmarks_relpath(session_id)}/landmarks.zarr") as path:
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
    outcome = finite({
        "model": model.name,
        "median_view_rmse_px": float(np.median(fit.view_rmse_px[used])) if used.any() else None,
        "max_view_rmse_px": round(float(np.max(fit.view_rmse_px[used])), 3) if used.any() else None,
        "views": {str(s): int((fit.view_status == s).sum()) for s in np.unique(fit.view_status)},
        "flagged_frames": result.flagged_frames,
        "overlay_caption": (f"{result.expressions[e]} / {result.cameras[c]} (green: detected, red: fitted)"
                            if overlay is not None else None),
    })
    with tempfile.TemporaryDirectory() as tmp:
        write_session_fit(result, Path(tmp) / "fit.zarr")
        (Path(tmp) / "views.parquet").write_bytes(parquet_bytes(fit_views_table(result)))
        if overlay is not None:
            cv2.imwrite(str(Path(tmp) / "overlay.png"), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
        write_record(Path(tmp), fp, inputs, outcome)
        store.put_directory(tmp, target)
    return outcome
