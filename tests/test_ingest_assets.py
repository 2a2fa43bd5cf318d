"""simulate -> validate -> materialise ``session_manifest`` in an in-process Dagster instance."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from capture_schema import derived_layout as layout
from capture_schema.tables import MANIFEST_SCHEMA
from conftest import SIM_SIZE, tree_hashes
from pipelines.assets.ingest import session_manifest
from pipelines.definitions import captures_job, defs, session_job
from pipelines.partitions import SESSIONS_PARTITION
from pipelines.resources import CapturesResource, StorageResource
from pipelines.runner import run_all_sessions
from pipelines.sensors import build_session_sensor


@pytest.fixture()
def captures_root(sim_dataset, tmp_path: Path) -> Path:
    root = tmp_path / "captures"
    shutil.copytree(sim_dataset.captures_root, root)
    return root


def _materialize(instance, root: Path, storage: Path, key: str):
    return dg.materialize(
        [session_manifest],
        partition_key=key,
        instance=instance,
        resources={"captures": CapturesResource(root=str(root)), "storage": StorageResource(url=f"file://{storage}")},
        raise_on_error=False,
    )


def test_definitions_load() -> None:
    job = defs.resolve_job_def("process_session")
    assert "session_manifest" in {n.name for n in job.nodes_in_topological_order}


def test_valid_session_manifest(captures_root: Path, tmp_path: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    key = sorted(p.name for p in captures_root.iterdir())[0]
    instance.add_dynamic_partitions(SESSIONS_PARTITION, [key])
    storage = tmp_path / "derived"
    before = tree_hashes(captures_root)
    result = _materialize(instance, captures_root, storage, key)
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"grid_complete": True, "images_intact": True, "calibration_present": True}

    table = pq.read_table(storage / layout.manifest(key))
    assert table.schema.equals(MANIFEST_SCHEMA, check_metadata=False)
    assert table.num_rows == 169
    row = table.slice(0, 1).to_pylist()[0]
    raw = (captures_root / key / row["relative_path"]).read_bytes()
    assert row["sha256"] == hashlib.sha256(raw).hexdigest() and row["bytes"] == len(raw)
    assert (row["width"], row["height"], row["format"]) == (SIM_SIZE, SIM_SIZE, "jpeg")
    assert not (storage / layout.quarantine(key)).exists()

    mat = result.asset_materializations_for_node("session_manifest")[0]
    assert mat.metadata["images"].value == 169 and mat.metadata["valid"].value is True

    # Re-running on unchanged input is a no-op in effect: same bytes, files not rewritten.
    manifest = storage / layout.manifest(key)
    first_bytes, first_mtime = manifest.read_bytes(), manifest.stat().st_mtime_ns
    assert _materialize(instance, captures_root, storage, key).success
    assert manifest.read_bytes() == first_bytes and manifest.stat().st_mtime_ns == first_mtime
    assert tree_hashes(captures_root) == before


def test_invalid_session_is_quarantined_not_dropped(captures_root: Path, tmp_path: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    key = sorted(p.name for p in captures_root.iterdir())[0]
    instance.add_dynamic_partitions(SESSIONS_PARTITION, [key])
    victim = captures_root / key / "images" / "smile" / "mid_C00.jpg"
    missing = captures_root / key / "images" / "neutral" / "up_L30.jpg"
    originals = {victim: victim.read_bytes(), missing: missing.read_bytes()}
    victim.write_bytes(originals[victim][:500])
    missing.unlink()
    storage = tmp_path / "derived"
    result = _materialize(instance, captures_root, storage, key)
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"grid_complete": False, "images_intact": False, "calibration_present": True}
    quarantine = storage / layout.quarantine(key)
    assert quarantine.exists()
    text = quarantine.read_text()
    assert "image_corrupt" in text and "image_missing" in text
    assert pq.read_table(storage / layout.manifest(key)).num_rows == 167  # the good images stay recorded

    # Fixing the session releases it from quarantine.
    for path, data in originals.items():
        path.write_bytes(data)
    result = _materialize(instance, captures_root, storage, key)
    assert all(e.passed for e in result.get_asset_check_evaluations())
    assert not quarantine.exists()
    assert pq.read_table(storage / layout.manifest(key)).num_rows == 169


def _sensor_context(instance, root: Path, cursor: str | None = None):
    return dg.build_sensor_context(instance=instance, cursor=cursor,
                                   resources={"captures": CapturesResource(root=str(root))})


def test_sensor_adds_partitions_and_is_idempotent(captures_root: Path, tmp_path: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    sensor = build_session_sensor(session_job, captures_job)
    (captures_root / "bad.name").mkdir()
    (captures_root / "bad.name" / "session.json").write_text("{}")
    result = sensor(_sensor_context(instance, captures_root))
    keys = sorted(p.name for p in captures_root.iterdir() if p.name != "bad.name")
    session_runs = [r for r in result.run_requests if r.job_name == "process_session"]
    assert sorted(r.partition_key for r in session_runs) == keys
    assert result.dynamic_partitions_requests[0].partition_keys == keys
    # The folder that is not a session is not dropped silently: the root's listing is (re)built.
    assert [r.job_name for r in result.run_requests if r.job_name != "process_session"] == ["scan_captures_root"]
    instance.add_dynamic_partitions(SESSIONS_PARTITION, keys)
    again = sensor(_sensor_context(instance, captures_root, result.cursor))
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in session_runs]  # no second scan run
    assert not again.dynamic_partitions_requests
    # A changed session gets a new run key.
    (captures_root / keys[0] / "images" / "neutral" / "mid_C00.jpg").write_bytes(b"changed")
    changed = sensor(_sensor_context(instance, captures_root, result.cursor))
    assert changed.run_requests[0].run_key != session_runs[0].run_key
    assert changed.run_requests[1].run_key == session_runs[1].run_key


def test_sensor_fingerprints_a_shared_calibration(captures_root: Path) -> None:
    """A session whose calibration folder is shared from beside it re-runs when that folder changes."""
    import json

    keys = sorted(p.name for p in captures_root.iterdir())
    shutil.move(captures_root / keys[0] / "calibration", captures_root / "shared_calib")
    session_file = captures_root / keys[0] / "session.json"
    session_file.write_text(json.dumps({**json.loads(session_file.read_text()), "calibration": "../shared_calib"}))
    instance = dg.DagsterInstance.ephemeral()
    sensor = build_session_sensor(session_job, captures_job)
    first = sensor(_sensor_context(instance, captures_root))
    keyed = {r.partition_key: r.run_key for r in first.run_requests if r.partition_key}
    assert set(keyed) == set(keys)  # the shared folder is not taken for a session
    board_image = sorted((captures_root / "shared_calib").glob("*/*.png"))[0]
    st = board_image.stat()
    os.utime(board_image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # re-exported: new mtime
    second = sensor(_sensor_context(instance, captures_root, first.cursor))
    rekeyed = {r.partition_key: r.run_key for r in second.run_requests if r.partition_key}
    assert rekeyed[keys[0]] != keyed[keys[0]]
    assert rekeyed[keys[1]] == keyed[keys[1]]


def test_run_all_sessions(captures_root: Path, tmp_path: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    runs = run_all_sessions(instance, CapturesResource(root=str(captures_root)),
                            StorageResource(url=f"file://{tmp_path / 'derived'}"), log=lambda _: None)
    assert [r.session_id for r in runs] == sorted(p.name for p in captures_root.iterdir())
    assert all(r.success and not r.failed_checks for r in runs)
    assert set(instance.get_dynamic_partitions(SESSIONS_PARTITION)) == {r.session_id for r in runs}

    # The dataset index then covers every sharded session, split by subject.
    import pyarrow.parquet as pq

    from pipelines.runner import build_dataset_index
    from training.dataset_index import SplitRule

    logged: list[str] = []
    assert build_dataset_index(instance, StorageResource(url=f"file://{tmp_path / 'derived'}"), log=logged.append)
    index = pq.read_table(tmp_path / "derived" / layout.INDEX).to_pandas()
    assert len(index) == 169 * len(runs) and index.key.is_unique
    assert set(index.session_id) == {r.session_id for r in runs}
    for subject, split in index.groupby("subject_id").split.unique().items():
        assert list(split) == [SplitRule().split_of(subject)]
    assert all(Path(url).is_file() for url in index.shard_url.unique())
    assert "338 images of 2 identities" in logged[0]


def test_workspace_code_location_loads() -> None:
    """``dagster dev -w workspace.yaml`` loads the code location the README points at."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    dagster = Path(sys.executable).parent / "dagster"
    proc = subprocess.run([str(dagster), "definitions", "validate", "-w", "workspace.yaml"], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Validation successful" in proc.stdout + proc.stderr
