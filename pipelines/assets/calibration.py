"""``camera_calibration``: the rig's cameras for a session, from its board captures.

Thin by design: the work, and the rule by which sessions with the same board
captures and camera order share one result, is ``fitting.calibration.session``
(``o2a calibrate --session`` runs the same function).
"""

import dagster as dg

from capture_schema import derived_layout as layout
from capture_schema.reuse import MissingUpstreamError
from pipelines.assets.ingest import session_manifest
from pipelines.assets.metadata_images import png_markdown
from pipelines.partitions import sessions_partitions
from pipelines.resources import CapturesResource, StorageResource


class CalibrationConfig(dg.Config):
    """Acceptance threshold for a calibration."""

    max_rmse_px: float = 1.0
    """The ``rmse_within_threshold`` check fails above this overall reprojection RMSE (pixels).

    Measured (``o2a calibrate`` on board photos the project did not make): OpenCV's stereo
    chessboard sample 0.195 / 0.199 px per camera (0.197 px overall; OpenCV's own per-camera
    calibrateCamera gives 0.41-0.46 px on it), OpenCV's ChArUco sample 0.188 px; an independently
    rendered 13-camera ChArUco rig 0.005 px; the simulator's rigs < 0.15 px
    (tests/test_calibration.py). 1.0 px is 5x the worst real calibration measured; a board.json
    that does not match the printed board, or corners numbered differently by two cameras,
    leave several pixels or fail outright."""


def _camera_table(calibration) -> str:
    lines = ["| camera | rmse px | observations | fx | fy |", "|---|---|---|---|---|"]
    for cam_id, cam in calibration.cameras.items():
        lines.append(f"| {cam_id} | {calibration.camera_rmse_px.get(cam_id, 0.0):.3f} | "
                     f"{calibration.n_observations.get(cam_id, 0)} | {cam.fx:.1f} | {cam.fy:.1f} |")
    return "\n".join(lines)


def _cameras_markdown(store, key: str, cameras) -> str:
    """The rig's picture, written with the calibration (``fitting.rig_picture.stand_in_picture``); drawn
    here only for a calibration published before pictures were."""
    picture = layout.join(layout.calibration_dir(key), layout.CALIBRATION_PICTURE_FILE)
    if store.exists(picture):
        return png_markdown(store.read_bytes(picture), "cameras")
    from fitting.rig_picture import stand_in_picture

    return png_markdown(stand_in_picture(cameras), "cameras")


@dg.asset(
    partitions_def=sessions_partitions,
    deps=[session_manifest],
    group_name="calibration",
    kinds={"pycolmap", "opencv"},
    check_specs=[dg.AssetCheckSpec("rmse_within_threshold", asset="camera_calibration", blocking=True,
                                   description="overall reprojection RMSE is at most max_rmse_px")],
)
def camera_calibration(
    context: dg.AssetExecutionContext, config: CalibrationConfig, captures: CapturesResource, storage: StorageResource
) -> dg.MaterializeResult:
    """Calibrated cameras (calibration.json, COLMAP model, transforms.json) for the session's rig."""
    from fitting.calibration.session import SessionCalibrationError, calibrate_session

    session_id = context.partition_key
    store = storage.storage()

    def progress(stage: str, done: int, total: int) -> None:
        if done == total:
            context.log.info(f"{stage}: {done}/{total}")

    try:
        made = calibrate_session(store, captures.session_dir(session_id), session_id, progress, context.log.info)
    except MissingUpstreamError as exc:
        raise dg.Failure(str(exc)) from None
    except SessionCalibrationError as exc:
        folder = {"calibration_folder": dg.MetadataValue.path(str(exc.folder))} if exc.folder else None
        raise dg.Failure(str(exc), metadata=folder) from None
    calibration = made.calibration
    check = dg.AssetCheckResult(
        check_name="rmse_within_threshold",
        passed=calibration.rmse_px <= config.max_rmse_px,
        metadata={"rmse_px": calibration.rmse_px, "max_rmse_px": config.max_rmse_px,
                  "worst_camera": max(calibration.camera_rmse_px, key=calibration.camera_rmse_px.get, default="")},
    )
    return dg.MaterializeResult(
        metadata={
            "rmse_px": round(calibration.rmse_px, 4),
            "cameras": len(calibration.cameras),
            "reused": made.reused,
            "calibration_key": made.key,
            "per_camera": dg.MetadataValue.md(_camera_table(calibration)),
            "cameras_picture": dg.MetadataValue.md(_cameras_markdown(store, made.key, calibration.cameras)),
            "calibration_json": dg.MetadataValue.path(store.uri(layout.calibration_file(made.key))),
        },
        check_results=[check],
        data_version=dg.DataVersion(made.key),
    )
