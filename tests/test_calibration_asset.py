"""``camera_calibration`` in an in-process Dagster instance: shared results, the RMSE check, quarantine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from capture_schema import derived_layout as layout
from capture_schema.calibration_file import read_calibration
from pipelines.assets.calibration import camera_calibration
from pipelines.assets.ingest import session_manifest
from capture_schema.layout import BOARD_FILE
from pipelines.cli import main
from pipelines.partitions import SESSIONS_PARTITION
from pipelines.resources import CapturesResource, StorageResource

@pytest.fixture()
def captures_root(sim_dataset, tmp_path: Path) -> Path:
    root = tmp_path / "captures"
    shutil.copytree(sim_dataset.captures_root, root)
    return root


def _run(instance, root: Path, storage: Path, key: str, max_rmse_px: float = 1.0):
    return dg.materialize(
        [session_manifest, camera_calibration],
        partition_key=key,
        instance=instance,
        resources={"captures": CapturesResource(root=str(root)), "storage": StorageResource(url=f"file://{storage}")},
        run_config={"ops": {"camera_calibration": {"config": {"max_rmse_px": max_rmse_px}}}},
        raise_on_error=False,
    )


def test_shared_calibration_is_computed_once(captures_root: Path, sim_dataset, tmp_path: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    keys = sorted(p.name for p in captures_root.iterdir())
    instance.add_dynamic_partitions(SESSIONS_PARTITION, keys)
    storage = tmp_path / "derived"
    reused, pointers = [], []
    for key in keys:
        result = _run(instance, captures_root, storage, key)
        assert result.success
        mat = result.asset_materializations_for_node("camera_calibration")[0]
        reused.append(mat.metadata["reused"].value)
        assert mat.metadata["rmse_px"].value < 0.3
        assert "| mid_C00 |" in mat.metadata["per_camera"].value
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert checks["rmse_within_threshold"] is True
        pointers.append(json.loads((storage / layout.calibration_pointer(key)).read_text()))
    assert reused == [False, True]
    assert pointers[0]["calibration"] == pointers[1]["calibration"]
    assert pointers[0]["calibration"] == layout.calibration_dir(pointers[0]["calibration_key"])
    calib_dir = storage / layout.calibration_dir(pointers[0]["calibration_key"])
    assert {layout.CALIBRATION_FILE, layout.TRANSFORMS_FILE, layout.COLMAP_DIR} <= {p.name for p in calib_dir.iterdir()}
    calibration = read_calibration(storage / layout.calibration_file(pointers[0]["calibration_key"]))
    # The session's camera order is the rig order: its first camera is the world frame.
    assert list(calibration.cameras)[0] == "mid_C00"
    assert np.allclose(calibration.cameras["mid_C00"].R, np.eye(3)) and np.allclose(calibration.cameras["mid_C00"].t, 0)
    true = read_calibration(sim_dataset.ground_truth_root / keys[0] / "calibration.json").cameras["mid_L30"]
    assert abs(calibration.cameras["mid_L30"].fx / true.fx - 1) < 0.01


def test_rmse_check_blocks_when_over_threshold(captures_root: Path, tmp_path: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    key = sorted(p.name for p in captures_root.iterdir())[0]
    instance.add_dynamic_partitions(SESSIONS_PARTITION, [key])
    result = _run(instance, captures_root, tmp_path / "derived", key, max_rmse_px=0.001)
    evaluation = [e for e in result.get_asset_check_evaluations() if e.check_name == "rmse_within_threshold"][0]
    assert evaluation.passed is False
    assert evaluation.metadata["max_rmse_px"].value == 0.001


def test_quarantined_session_is_not_calibrated(captures_root: Path, tmp_path: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    key = sorted(p.name for p in captures_root.iterdir())[0]
    instance.add_dynamic_partitions(SESSIONS_PARTITION, [key])
    (captures_root / key / "images" / "smile" / "mid_C00.jpg").unlink()
    storage = tmp_path / "derived"
    result = _run(instance, captures_root, storage, key)
    assert not result.success or not all(e.passed for e in result.get_asset_check_evaluations())
    assert not (storage / layout.calibration_pointer(key)).exists()
    # Asked for on its own, the calibration refuses with a clear failure instead of using a bad session.
    alone = dg.materialize([camera_calibration], partition_key=key, instance=instance, raise_on_error=False,
                           resources={"captures": CapturesResource(root=str(captures_root)),
                                      "storage": StorageResource(url=f"file://{storage}")})
    assert not alone.success
    failure = [e for e in alone.all_events if e.is_step_failure][0]
    assert "quarantined" in str(failure.step_failure_data.error.message)


def test_cli_calibrate(captures_root: Path, tmp_path: Path, capsys) -> None:
    calib = sorted(captures_root.iterdir())[0] / "calibration"
    out = tmp_path / "out"
    assert main(["calibrate", str(calib), "--out", str(out)]) == 0
    assert (out / layout.CALIBRATION_FILE).is_file() and "rmse" in capsys.readouterr().out
    broken = tmp_path / "broken"
    shutil.copytree(calib, broken)
    (broken / BOARD_FILE).write_text('{"type": "charuco", "squares_x": 7}')
    assert main(["calibrate", str(broken), "--out", str(tmp_path / "out2")]) == 1
    assert "squares_y" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


def test_impossible_calibration_fails_with_a_clear_message(captures_root: Path, tmp_path: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    key = sorted(p.name for p in captures_root.iterdir())[0]
    instance.add_dynamic_partitions(SESSIONS_PARTITION, [key])
    calib = captures_root / key / "calibration"
    for shot in sorted((calib / "mid_L30").iterdir())[2:]:
        shot.unlink()  # two board views left: too few for this camera
    result = _run(instance, captures_root, tmp_path / "derived", key)
    assert not result.success
    failure = [e for e in result.all_events if e.is_step_failure][0]
    message = str(failure.step_failure_data.error.message)
    assert "calibration impossible" in message and "mid_L30" in message
