"""``camera_calibration``: the rig's cameras for a session, from its board captures.

Thin by design: the work is ``fitting.calibration``. Sessions that share one
calibration folder (same content hash and the same camera order, which fixes the
world frame) share one result (``derived_layout.calibration_dir(key)``); each session
gets a small pointer file (``derived_layout.calibration_pointer``) naming the result.
"""

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Sequence

import dagster as dg

from capture_schema import derived_layout as layout
from capture_schema.atomic import canonical_json
from capture_schema.session import read_session
from pipelines.assets.ingest import session_manifest
from pipelines.assets.reuse import stored_digest
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


def calibration_key(input_hash: str, cameras: Sequence[str]) -> str:
    """Board captures plus camera order: the first camera defines the world frame."""
    return hashlib.sha256(f"{input_hash}\n{','.join(cameras)}".encode()).hexdigest()[:16]


def _session_calibration_file(store, session_id: str) -> str:
    pointer = layout.calibration_pointer(session_id)
    if not store.exists(pointer):
        raise dg.Failure(f"session {session_id} has no calibration yet: materialise camera_calibration first")
    return layout.calibration_file(json.loads(store.read_bytes(pointer))["calibration_key"])


def read_session_calibration(store, session_id: str):
    """The ``Calibration`` that ``camera_calibration`` chose for a session (via its pointer file)."""
    from capture_schema.calibration_file import Calibration

    return Calibration.from_dict(json.loads(store.read_bytes(_session_calibration_file(store, session_id))))


def session_calibration_digest(store, session_id: str) -> str:
    """sha256 of the calibration.json a session uses: its cameras' identity as an input of later steps."""
    return stored_digest(store, _session_calibration_file(store, session_id))


def _camera_table(calibration) -> str:
    lines = ["| camera | rmse px | observations | fx | fy |", "|---|---|---|---|---|"]
    for cam_id, cam in calibration.cameras.items():
        lines.append(f"| {cam_id} | {calibration.camera_rmse_px.get(cam_id, 0.0):.3f} | "
                     f"{calibration.n_observations.get(cam_id, 0)} | {cam.fx:.1f} | {cam.fy:.1f} |")
    return "\n".join(lines)


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
    from capture_schema.calibration_file import Calibration
    from fitting.calibration import (
        CalibrationError,
        calibrate_folder,
        calibration_input_hash,
        write_calibration_outputs,
    )

    session_id = context.partition_key
    store = storage.storage()
    if store.exists(layout.quarantine(session_id)):
        raise dg.Failure(f"session {session_id} is quarantined (see {store.uri(layout.quarantine(session_id))}); "
                         "fix it and re-materialise session_manifest first")
    session_dir = captures.session_dir(session_id)
    info, problems = read_session(session_dir)
    if info is None:
        raise dg.Failure(f"session {session_id}: {problems[0].message}")
    calib_dir = (session_dir / info.calibration).resolve()
    if not calib_dir.is_dir():
        raise dg.Failure(f"session {session_id}: calibration folder {calib_dir} not found")
    try:
        key = calibration_key(calibration_input_hash(calib_dir), info.cameras)
    except CalibrationError as exc:
        raise dg.Failure(f"session {session_id}: {exc}") from None
    target = layout.calibration_dir(key)
    reused = store.exists(layout.calibration_file(key))
    if reused:
        context.log.info(f"reusing calibration {target} (same board captures as an earlier session)")
    else:
        context.log.info(f"calibrating {calib_dir}")
        def progress(stage: str, done: int, total: int) -> None:
            if done == total:
                context.log.info(f"{stage}: {done}/{total}")

        try:
            result = calibrate_folder(calib_dir, cameras=info.cameras, progress=progress)
        except CalibrationError as exc:
            raise dg.Failure(f"session {session_id}: calibration impossible: {exc}",
                             metadata={"calibration_folder": dg.MetadataValue.path(str(calib_dir))}) from None
        context.log.info(f"calibrated: rmse {result.rmse_px:.3f} px, timings {result.report()['timings_s']}")
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "calibration"
            write_calibration_outputs(result, out)
            store.put_directory(out, target)
    calibration = Calibration.from_dict(json.loads(store.read_bytes(layout.calibration_file(key))))
    store.write_if_changed(layout.calibration_pointer(session_id), canonical_json(
        {"session_id": session_id, "calibration_key": key, "calibration": target}).encode())
    passed = calibration.rmse_px <= config.max_rmse_px
    check = dg.AssetCheckResult(
        check_name="rmse_within_threshold",
        passed=passed,
        metadata={"rmse_px": calibration.rmse_px, "max_rmse_px": config.max_rmse_px,
                  "worst_camera": max(calibration.camera_rmse_px, key=calibration.camera_rmse_px.get, default="")},
    )
    return dg.MaterializeResult(
        metadata={
            "rmse_px": round(calibration.rmse_px, 4),
            "cameras": len(calibration.cameras),
            "reused": reused,
            "calibration_key": key,
            "per_camera": dg.MetadataValue.md(_camera_table(calibration)),
            "calibration_json": dg.MetadataValue.path(store.uri(layout.calibration_file(key))),
        },
        check_results=[check],
        data_version=dg.DataVersion(key),
    )
