"""``o2a calibrate --session``, ``o2a shard`` and ``o2a index``: the session steps without Dagster.

Fast tests run on tiny inputs: OpenCV's stereo chessboard sample (2 cameras, ~2 s a
calibration) as the board captures of hand-made sessions, hand-written storage files
for the errors, and small ``shards.json`` files for the index. The slow test runs
``o2a shard`` and ``o2a index`` on sessions the Dagster path already processed
(``prior_pipeline``) in a new storage root holding copies of the upstream folders, and
compares the files with the assets' byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest

from capture_schema import derived_layout as layout
from capture_schema.layout import is_valid_id
from capture_schema.manifest import parquet_bytes, table_from_columns
from capture_schema.storage import Storage
from capture_schema.tables import MANIFEST_SCHEMA
from conftest import need_reference_data, tree_hashes
from pipelines.cli import main

STEREO = Path(__file__).resolve().parent / "data" / "opencv_stereo_chessboard"


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, out + err
    return code, out, err


def _stereo_session(root: Path, name: str, cameras: list[str]) -> Path:
    """A session folder whose calibration folder is a copy of the stereo sample (no images: calibration
    reads only session.json and the board captures)."""
    need_reference_data(STEREO, "real reference data (copied from the shared data into tests/data)")
    session = root / name
    shutil.copytree(STEREO, session / "calibration")
    (session / "session.json").write_text(json.dumps({
        "subject_id": "subj", "session_id": name, "rig_id": "stereo", "captured_at": "2024-01-01T00:00:00Z",
        "expressions": ["neutral"], "cameras": cameras}))
    return session


def test_cli_defaults_are_the_assets_defaults() -> None:
    """``o2a shard``/``index``/``calibrate --session`` without settings make what the assets make by default."""
    from pipelines.assets.calibration import CalibrationConfig
    from pipelines.assets.dataset_index import DatasetIndexConfig
    from pipelines.assets.shards import ShardsConfig
    from pipelines.cli import build_parser

    shard = build_parser().parse_args(["shard", "s1", "--captures", "c", "--storage", "u"])
    assets = ShardsConfig()
    assert (shard.max_mb, shard.max_samples, shard.train_resolution, not shard.no_masks) == (
        assets.max_mb, assets.max_samples, assets.train_resolution, assets.masks)
    index = build_parser().parse_args(["index", "--storage", "u"])
    split = DatasetIndexConfig()
    assert (index.train, index.validation, index.test) == (split.train, split.validation, split.test)
    from pipelines.cli_stages import MAX_RMSE_PX

    assert MAX_RMSE_PX == CalibrationConfig().max_rmse_px


# ---------------------------------------------------------------- calibration reuse policy


def test_calibration_is_shared_by_board_captures_and_camera_order(capsys, tmp_path: Path) -> None:
    """Same board captures (a copy, elsewhere) and camera order: reused. Another camera order: another
    world frame, so a calibration of its own."""
    from fitting.calibration.session import calibrate_session, read_session_calibration

    captures, store = tmp_path / "captures", Storage(f"file://{tmp_path / 'derived'}")
    first = calibrate_session(store, _stereo_session(captures, "a", ["left", "right"]), "a")
    assert first.reused is False
    assert list(first.calibration.cameras) == ["left", "right"]
    calibrations = tmp_path / "derived" / layout.CALIBRATIONS
    assert [p.name for p in calibrations.iterdir()] == [first.key]
    made = {p: p.stat().st_mtime_ns for p in calibrations.rglob("*")}

    # The CLI, on a second session with a copy of the same captures: reused, nothing recalibrated.
    code, out, _ = _run(capsys, ["calibrate", "--session", str(_stereo_session(captures, "b", ["left", "right"])),
                                 "--storage", f"file://{tmp_path / 'derived'}"])
    assert code == 0 and "reused" in out, out
    assert {p: p.stat().st_mtime_ns for p in calibrations.rglob("*")} == made
    pointer = json.loads((tmp_path / "derived" / layout.calibration_pointer("b")).read_text())
    assert pointer == {"session_id": "b", "calibration_key": first.key, "calibration": f"calibrations/{first.key}"}
    assert read_session_calibration(store, "b").rmse_px == first.calibration.rmse_px

    swapped = calibrate_session(store, _stereo_session(captures, "c", ["right", "left"]), "c")
    assert swapped.reused is False and swapped.key != first.key
    assert sorted(p.name for p in calibrations.iterdir()) == sorted([first.key, swapped.key])
    assert list(swapped.calibration.cameras) == ["right", "left"]
    right = swapped.calibration.cameras["right"]
    assert np.allclose(right.R, np.eye(3)) and np.allclose(right.t, 0)  # the world frame now

    # The asset's threshold as a flag: above it, exit 1 (the outputs stay, as the asset's do).
    code, _, err = _run(capsys, ["calibrate", "--session", str(captures / "b"), "--storage",
                                 f"file://{tmp_path / 'derived'}", "--max-rmse", "0.001"])
    assert code == 1 and "rmse_within_threshold" in err, err


def test_calibrate_session_refusals(capsys, tmp_path: Path) -> None:
    derived = tmp_path / "derived"
    session = tmp_path / "captures" / "q1"
    session.mkdir(parents=True)
    (derived / layout.QUARANTINE).mkdir(parents=True)
    (derived / layout.quarantine("q1")).write_text("{}")
    code, _, err = _run(capsys, ["calibrate", "--session", str(session), "--storage", f"file://{derived}"])
    assert code == 1 and "session q1 is quarantined" in err and f"o2a ingest {session} --storage" in err, err
    (derived / layout.quarantine("q1")).unlink()
    code, _, err = _run(capsys, ["calibrate", "--session", str(session), "--storage", f"file://{derived}"])
    assert code == 1 and "session q1: session.json not found" in err, err
    for argv in (["--session", str(session)], ["--session", str(session), "--storage", "x", "--cameras", "a,b"],
                 ["--session", str(tmp_path / "nowhere"), "--storage", "x"], [str(session)],
                 [str(session), "--out", str(tmp_path / "out"), "--storage", "x"]):
        code, _, err = _run(capsys, ["calibrate", *argv])
        assert code == 2 and err.startswith("o2a calibrate: "), (argv, err)
    assert not (derived / layout.CALIBRATION_BY_SESSION).exists() and not (tmp_path / "out").exists()


# ---------------------------------------------------------------- o2a shard: refusals


def test_shard_names_the_missing_upstream_step_and_its_command(capsys, tmp_path: Path) -> None:
    """Each artefact the step reads, absent in turn: exit 1 naming the step and the command; nothing written."""
    captures, derived = tmp_path / "captures", tmp_path / "derived"
    (captures / "s1").mkdir(parents=True)
    url = f"file://{derived}"
    argv = ["shard", "s1", "--captures", str(captures), "--storage", url]

    code, _, err = _run(capsys, argv)
    assert code == 1 and "session s1: an input is missing" in err and "materialise session_manifest first" in err
    assert f"session_manifest: o2a ingest {captures / 's1'} --storage {url}" in err, err

    store = Storage(url)
    empty_manifest = table_from_columns({name: [] for name in MANIFEST_SCHEMA.names}, MANIFEST_SCHEMA)
    store.write_bytes(layout.manifest("s1"), parquet_bytes(empty_manifest))
    code, _, err = _run(capsys, argv)
    assert code == 1 and "session s1 has no calibration yet: materialise camera_calibration first" in err
    assert f"camera_calibration: o2a calibrate --session {captures / 's1'} --storage {url}" in err, err

    store.write_bytes(layout.calibration_pointer("s1"), json.dumps({"calibration_key": "k1"}).encode())
    code, _, err = _run(capsys, argv)  # the pointer names a calibration.json that is gone
    assert code == 1 and "an input is missing" in err and "materialise camera_calibration first" in err, err
    assert f"camera_calibration: o2a calibrate --session {captures / 's1'} --storage {url}" in err, err

    store.write_bytes(layout.calibration_file("k1"), b"{}")
    code, _, err = _run(capsys, argv)
    assert code == 1 and "materialise session_manifest, face_landmarks and face_fits first" in err, err
    assert f"face_landmarks: o2a pipeline run --captures {captures} --storage {url}" in err, err
    assert "face_fits: o2a pipeline run" in err

    store.write_bytes(layout.quarantine("s1"), b"{}")
    code, _, err = _run(capsys, argv)
    assert code == 1 and "session s1 is quarantined" in err and "o2a ingest" in err, err
    assert not (derived / layout.SHARDS).exists()


@pytest.mark.parametrize("extra, message", [
    (["--max-samples", "0"], "--max-samples must be at least 1"),
    (["--max-mb", "0"], "--max-mb must be a positive number"),
    (["--max-mb", "inf"], "--max-mb must be a positive number"),
    (["--train-resolution", "5"], "--train-resolution must be 0"),
    (["--train-resolution", "-1"], "--train-resolution must be 0"),
    (["--storage", ""], "storage URL is empty"),
])
def test_shard_bad_settings_are_usage_errors(capsys, tmp_path: Path, extra: list[str], message: str) -> None:
    (tmp_path / "captures" / "s1").mkdir(parents=True)
    code, _, err = _run(capsys, ["shard", "s1", "--captures", str(tmp_path / "captures"), "--storage",
                                 f"file://{tmp_path / 'derived'}", *extra])
    assert code == 2 and err.startswith("o2a shard: ") and message in err, err
    assert not (tmp_path / "derived").exists()


def test_shard_unknown_session_or_captures_root(capsys, tmp_path: Path) -> None:
    (tmp_path / "captures" / "s1").mkdir(parents=True)
    url = f"file://{tmp_path / 'derived'}"
    for argv, message in ((["s2", "--captures", str(tmp_path / "captures")], "no session 's2' under"),
                          (["s1", "--captures", str(tmp_path / "nowhere")], "does not exist"),
                          (["../s1", "--captures", str(tmp_path / "captures")], "is not a session id")):
        code, _, err = _run(capsys, ["shard", *argv, "--storage", url])
        assert code == 2 and message in err, err


# ---------------------------------------------------------------- o2a index on small shards.json files


def _fake_shards(store: Storage, session_id: str, subject_id: str, n_keys: int) -> list[str]:
    keys = [f"{session_id}/neutral/cam{c}" for c in range(n_keys)]
    store.write_bytes(layout.shards_index(session_id), json.dumps({
        "session_id": session_id, "subject_id": subject_id, "expressions": ["neutral"],
        "cameras": [f"cam{c}" for c in range(3)],
        "shards": [{"name": layout.shard_name(session_id, 0), "n_samples": n_keys, "bytes": 10240 * n_keys,
                    "sha256": "0" * 64, "keys": keys}]}).encode())
    return keys


def test_index_cli_writes_the_assets_bytes(capsys, tmp_path: Path) -> None:
    """``o2a index`` over the storage root's sessions, then the asset over the same sessions as partitions:
    the same files (the asset rewrites nothing), sessions without shards listed."""
    from pipelines.assets.dataset_index import dataset_index
    from pipelines.partitions import SESSIONS_PARTITION
    from pipelines.resources import StorageResource

    derived = tmp_path / "derived"
    store = Storage(f"file://{derived}")
    keys = _fake_shards(store, "s1", "subjA", 3) + _fake_shards(store, "s2", "subjB", 2)
    (derived / layout.ingest_dir("s3")).mkdir(parents=True)  # ingested (e.g. quarantined), never sharded
    (derived / layout.ingest_dir("not a session")).mkdir()
    code, out, err = _run(capsys, ["index", "--storage", f"file://{derived}"])
    assert code == 0, err
    assert "5 images of 2 identities in 2 shards" in out and "not indexed (no shards): s3" in out, out
    assert "sessions without shards (not indexed): s3" in err
    index = pq.read_table(derived / layout.INDEX).to_pandas()
    assert list(index.key) == keys
    assert set(index.shard_url) == {str(derived / layout.shards_dir(s) / layout.shard_name(s, 0)) for s in ("s1", "s2")}
    coverage = json.loads((derived / layout.COVERAGE).read_text())
    assert coverage["sessions_without_shards"] == ["s3"] and coverage["missing_cells"] == ["s2/neutral/cam2"]
    written = tree_hashes(derived / layout.DATASET)
    mtimes = {p: p.stat().st_mtime_ns for p in (derived / layout.DATASET).iterdir()}

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(SESSIONS_PARTITION, ["s1", "s2", "s3"])
    result = dg.materialize([dataset_index], instance=instance,
                            resources={"storage": StorageResource(url=f"file://{derived}")})
    assert result.success
    assert tree_hashes(derived / layout.DATASET) == written
    assert {p: p.stat().st_mtime_ns for p in (derived / layout.DATASET).iterdir()} == mtimes


def test_index_refusals(capsys, tmp_path: Path) -> None:
    derived = tmp_path / "derived"
    code, _, err = _run(capsys, ["index", "--storage", f"file://{derived}", "--train", "0.9"])
    assert code == 2 and "sum to 1" in err, err
    code, _, err = _run(capsys, ["index", "--storage", f"file://{derived}"])
    assert code == 1 and "no session has shards yet: materialise session_shards first" in err, err
    assert "the storage root holds no session" in err and "o2a shard SESSION_ID --captures ROOT --storage" in err
    for sid in ("s1", "s2"):
        (derived / layout.ingest_dir(sid)).mkdir(parents=True)
    code, _, err = _run(capsys, ["index", "--storage", f"file://{derived}"])
    assert code == 1 and "none of the 2 sessions in the storage root" in err, err
    assert not (derived / layout.DATASET).exists()


def test_stored_session_ids_are_ingested_or_sharded_folders(tmp_path: Path) -> None:
    from training.dataset_index import stored_session_ids

    store = Storage(f"file://{tmp_path}")
    assert stored_session_ids(store) == []
    for folder in (layout.ingest_dir("b"), layout.ingest_dir("a"), layout.shards_dir("c"), layout.shards_dir("a"),
                   layout.ingest_dir("bad id")):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / layout.INGEST / "stray.txt").write_text("a file, not a session")
    assert stored_session_ids(store) == ["a", "b", "c"]
    assert all(is_valid_id(s) for s in stored_session_ids(store))


# ---------------------------------------------------------------- against the Dagster path


#: What a session's shard step reads from the storage root (everything but its own and later outputs).
UPSTREAM = (layout.INGEST, layout.CALIBRATIONS, layout.CALIBRATION_BY_SESSION, layout.LANDMARKS, layout.FACE_FITS)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_shard_and_index_reproduce_the_assets(prior_pipeline, capsys, tmp_path: Path) -> None:
    """A new storage root gets copies of the upstream folders of 12 sessions the Dagster path processed,
    and of the shards of all but one; ``o2a shard`` writes that one, ``o2a index`` indexes them all.
    The shard folder (tars, shards.json, inputs.json) is the asset's byte for byte, a rerun reuses it,
    and the index is the asset's with only the storage root in the shard URLs changed."""
    source = Path(prior_pipeline["storage"].removeprefix("file://")).resolve()
    derived = tmp_path / "derived"
    for folder in UPSTREAM:
        shutil.copytree(source / folder, derived / folder)
    sessions = sorted(p.name for p in (source / layout.SHARDS).iterdir())
    assert len(sessions) == 12
    target = sessions[0]
    for sid in sessions[1:]:
        shutil.copytree(source / layout.shards_dir(sid), derived / layout.shards_dir(sid))
    url = f"file://{derived}"
    argv = ["shard", target, "--captures", str(prior_pipeline["captures"]), "--storage", url]

    code, out, err = _run(capsys, argv)
    assert code == 0, err
    assert "169 samples" in out and "reused" not in out, out
    ours, theirs = derived / layout.shards_dir(target), source / layout.shards_dir(target)
    names = sorted(p.name for p in theirs.iterdir())
    assert sorted(p.name for p in ours.iterdir()) == names
    assert layout.INPUTS_FILE in names and layout.SHARDS_INDEX_FILE in names and len(names) >= 3
    for name in names:
        assert _sha(ours / name) == _sha(theirs / name), name

    mtimes = {p.name: p.stat().st_mtime_ns for p in ours.iterdir()}
    code, out, _ = _run(capsys, argv)
    assert code == 0 and "reused" in out, out
    assert {p.name: p.stat().st_mtime_ns for p in ours.iterdir()} == mtimes

    code, out, err = _run(capsys, ["index", "--storage", url])
    assert code == 0, err
    assert "images of 12 identities" in out, out
    assert (derived / layout.COVERAGE).read_bytes() == (source / layout.COVERAGE).read_bytes()
    index = pq.read_table(derived / layout.INDEX).to_pandas()
    expected = pq.read_table(source / layout.INDEX).to_pandas()
    assert expected.shard_url.str.startswith(str(source)).all()
    expected["shard_url"] = str(derived) + expected.shard_url.str.slice(len(str(source)))
    assert index.equals(expected)
