"""``face_landmarks`` and ``face_fits`` in an in-process Dagster instance, and their CLI twins."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow.parquet as pq

from capture_schema import derived_layout as layout
from conftest import FIT_OVER_FLOOR_PX, best_in_span, mean_reprojection_px, sim_ground_truth
from fitting.face_fit.session import read_session_fit
from fitting.face_models.builtin import builtin_face_model
from fitting.landmarks.store import read_landmarks_zarr
from pipelines.assets.calibration import camera_calibration
from pipelines.assets.face_fits import face_fits
from pipelines.assets.ingest import session_manifest
from pipelines.assets.landmarks import face_landmarks
from pipelines.cli import main
from pipelines.partitions import SESSIONS_PARTITION
from pipelines.resources import CapturesResource, FaceModelResource, StorageResource


def _materialize(instance, sim_dataset, storage: Path, key: str, max_fit_residual: float | None = None):
    return dg.materialize(
        [session_manifest, camera_calibration, face_landmarks, face_fits],
        partition_key=key,
        instance=instance,
        resources={"captures": CapturesResource(root=str(sim_dataset.captures_root)),
                   "storage": StorageResource(url=f"file://{storage}"),
                   "face_model": FaceModelResource()},
        run_config={"ops": {"face_fits": {"config": {} if max_fit_residual is None
                                          else {"max_fit_residual": max_fit_residual}},
                            "face_landmarks": {"config": {"workers": 2}}}},
        raise_on_error=False,
    )


def test_landmark_and_fit_assets_materialise_with_checks(sim_dataset, tmp_path: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    key = sim_dataset.session_ids[1]
    instance.add_dynamic_partitions(SESSIONS_PARTITION, [key])
    storage = tmp_path / "derived"
    result = _materialize(instance, sim_dataset, storage, key)
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["faces_found"] is True and checks["fit_within_detector_noise"] is True
    assert checks["cameras_agree_with_fit"] is True

    lm_meta = result.asset_materializations_for_node("face_landmarks")[0].metadata
    assert lm_meta["images"].value == 169 and lm_meta["faces_found"].value >= 160
    landmarks = read_landmarks_zarr(storage / layout.landmarks_zarr(key))
    assert landmarks.landmarks.shape == (13, 13, 478, 2)
    assert pq.read_table(storage / layout.landmarks_summary(key)).num_rows == 169

    meta = result.asset_materializations_for_node("face_fits")[0].metadata
    assert meta["model"].value == "builtin" and meta["median_view_rmse_px"].value < 4.0
    png = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", meta["overlay"].value).group(1)
    assert base64.b64decode(png).startswith(b"\x89PNG")
    fit = read_session_fit(storage / layout.fit_zarr(key))
    truth = sim_ground_truth(sim_dataset, 1)
    floor_px = mean_reprojection_px(truth, best_in_span(builtin_face_model(), truth))  # the model's own limit
    assert np.linalg.norm(fit.fit.projected - truth["landmarks_2d"], axis=-1).mean() < floor_px + FIT_OVER_FLOOR_PX
    views = pq.read_table(storage / layout.fit_views(key))
    assert views.num_rows == 169 and set(views.column("view_status").to_pylist()) <= {
        "used", "outlier", "not_detected", "frame_not_fitted"}
    assert (storage / layout.fit_overlay(key)).stat().st_size > 1000

    # A face model that cannot be loaded fails the step with the reason, not a traceback.
    broken = dg.materialize(
        [face_fits], partition_key=key, instance=instance, raise_on_error=False,
        resources={"captures": CapturesResource(root=str(sim_dataset.captures_root)),
                   "storage": StorageResource(url=f"file://{storage}"),
                   "face_model": FaceModelResource(kind="ict", path=str(tmp_path / "no_ict_here"))})
    assert not broken.success
    failure = next(e for e in broken.all_events if e.event_type_value == "STEP_FAILURE")
    assert "could not be loaded" in failure.step_failure_data.error.message

    # A threshold no fit can meet fails the blocking check (and so stops downstream assets).
    strict = _materialize(instance, sim_dataset, tmp_path / "strict", key, max_fit_residual=0.01)
    checks = {e.check_name: e.passed for e in strict.get_asset_check_evaluations()}
    assert checks["fit_within_detector_noise"] is False


def test_cli_landmarks_on_one_image_and_on_a_face_free_image(tmp_path: Path, capsys) -> None:
    import cv2
    from skimage import data

    photo = tmp_path / "astronaut.png"
    cv2.imwrite(str(photo), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    out = tmp_path / "astronaut.json"
    assert main(["landmarks", str(photo), "--out", str(out)]) == 0
    found = json.loads(out.read_text())
    assert found["image_size"] == [512, 512] and len(found["landmarks"]) == 478
    assert all(0 <= x < 512 and 0 <= y < 512 for x, y in found["landmarks"])

    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((256, 256, 3), 200, np.uint8))
    assert main(["landmarks", str(blank), "--out", str(tmp_path / "wall.json")]) == 1
    assert "no face found" in capsys.readouterr().err
    assert not (tmp_path / "wall.json").exists()
    assert main(["landmarks", str(tmp_path / "nope"), "--out", str(tmp_path / "x.json")]) == 2


def test_cli_fit_writes_the_fit_and_reports_bad_input(sim_dataset, sim_landmarks, tmp_path: Path) -> None:
    from fitting.landmarks.store import write_landmarks_zarr

    sid = sim_dataset.session_ids[0]
    calib = sim_dataset.ground_truth_root / sid / "calibration.json"
    write_landmarks_zarr(sim_landmarks, tmp_path / "lm.zarr")
    out = tmp_path / "fit"
    assert main(["fit", str(sim_dataset.captures_root / sid), "--calibration", str(calib),
                 "--landmarks", str(tmp_path / "lm.zarr"), "--out", str(out)]) == 0
    assert {layout.FIT_ZARR, layout.FIT_VIEWS_FILE, layout.FIT_OVERLAY_FILE} <= {p.name for p in out.iterdir()}
    assert main(["fit", str(sim_dataset.captures_root / sid), "--calibration", str(tmp_path / "missing.json"),
                 "--landmarks", str(tmp_path / "lm.zarr"), "--out", str(tmp_path / "fit2")]) == 1
    assert main(["fit", str(sim_dataset.captures_root / sid), "--calibration", str(calib), "--model", "ict",
                 "--landmarks", str(tmp_path / "lm.zarr"), "--out", str(tmp_path / "fit3")]) == 1
