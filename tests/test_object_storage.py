"""Object storage end to end, against a real S3 server (SeaweedFS on loopback, no mocks).

Two sessions of the 12-subject simulated captures are uploaded to a bucket, as a studio
would; the session assets read them there (``O2A_CAPTURES_ROOT=s3://...``) and write every
derived artefact to the bucket (``O2A_STORAGE_URL=s3://...``). What lands must be the
embedded run's files byte for byte, and the loader and ``o2a inspect`` must read the same
samples from ``s3://`` as from the local tree.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from capture_schema import derived_layout as layout
from capture_schema.captures_root import scan_captures_root

BUCKET_PREFIX = "o2a"  # the bucket s3_store makes
#: The per-session parts of the derived layout (``<top>/<session>/...`` or ``<top>/<session>.json``).
SESSION_TOPS = (layout.INGEST, layout.CALIBRATION_BY_SESSION, layout.LANDMARKS, layout.FACE_FITS, layout.SHARDS)


def _s3():
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True)


@pytest.fixture(scope="module")
def s3_run(prior_pipeline, s3_store, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two sessions uploaded to ``s3://o2a/captures`` (plus a stray file and a folder that is not a
    session), taken through every session asset and the dataset index into ``s3://o2a/derived``."""
    from pipelines.resources import CapturesResource, StorageResource
    from pipelines.runner import build_dataset_index, run_all_sessions

    sessions = [prior_pipeline["sessions"][0], prior_pipeline["sessions"][-1]]
    fs = _s3()
    for sid in sessions:
        fs.put(f"{prior_pipeline['captures'] / sid}/", f"{BUCKET_PREFIX}/captures/{sid}", recursive=True)
    fs.pipe_file(f"{BUCKET_PREFIX}/captures/notes.txt", b"left here by someone")
    fs.pipe_file(f"{BUCKET_PREFIX}/captures/old_stuff/readme.txt", b"not a session")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("O2A_CAPTURES_CACHE", str(tmp_path_factory.mktemp("captures_cache")))
        captures = CapturesResource(root=f"{s3_store['bucket']}/captures")
        storage = StorageResource(url=f"{s3_store['bucket']}/derived")
        instance = dg.DagsterInstance.ephemeral()
        runs = run_all_sessions(instance, captures, storage, log_level="WARNING", log=lambda _: None)
        assert [(r.session_id, r.success, r.failed_checks) for r in runs] == [(s, True, ()) for s in sessions]
        assert build_dataset_index(instance, storage, log_level="WARNING", log=lambda _: None)
        return {"sessions": sessions, "captures": captures, "storage": storage.storage(),
                "local": Path(prior_pipeline["storage"].removeprefix("file://")), "cache": captures.root_path().parent}


def test_every_derived_file_in_the_bucket_is_the_embedded_runs(s3_run) -> None:
    fs, local = _s3(), s3_run["local"]
    prefix = f"{BUCKET_PREFIX}/derived/"
    remote = {path[len(prefix):] for path in fs.find(prefix)}
    expected = {p.relative_to(local).as_posix() for top in SESSION_TOPS for p in (local / top).rglob("*")
                if p.is_file() and p.relative_to(local / top).parts[0].split(".")[0] in s3_run["sessions"]}
    shared = {p for p in remote if p.startswith(layout.CALIBRATIONS + "/")}
    assert len(expected) > 100 and shared  # manifests, calibrations, landmark and fit zarrs, shards
    assert remote == expected | shared | {layout.INDEX, layout.COVERAGE}
    for relpath in sorted(expected | shared):
        assert fs.cat_file(prefix + relpath) == (local / relpath).read_bytes(), relpath


def test_index_in_the_bucket_points_at_shards_in_the_bucket(s3_run) -> None:
    import io

    remote = pd.read_parquet(io.BytesIO(_s3().cat_file(f"{BUCKET_PREFIX}/derived/{layout.INDEX}")))
    local = pd.read_parquet(s3_run["local"] / layout.INDEX)
    local = local[local.session_id.isin(s3_run["sessions"])].reset_index(drop=True)
    assert len(remote) == 169 * 2
    assert remote.shard_url.str.startswith("s3://o2a/derived/shards/").all()
    as_local = remote.shard_url.str.replace("s3://o2a/derived/", f"{s3_run['local']}/", regex=False)
    pd.testing.assert_frame_equal(remote.assign(shard_url=as_local), local)


def _samples(urls: list[str]) -> list[dict]:
    from training.loader import build_dataset

    return list(build_dataset(urls, resolution=64, split_by_node=False, split_by_worker=False))


def test_loader_streams_the_same_samples_from_the_bucket(s3_run) -> None:
    import io

    import torch

    index = pd.read_parquet(io.BytesIO(_s3().cat_file(f"{BUCKET_PREFIX}/derived/{layout.INDEX}")))
    remote_urls = sorted(index.shard_url.unique())
    local_urls = [u.replace("s3://o2a/derived/", f"{s3_run['local']}/") for u in remote_urls]
    remote, local = _samples(remote_urls), _samples(local_urls)
    assert len(remote) == len(local) == 169 * 2
    for a, b in zip(remote, local):
        assert a["key"] == b["key"] and a["meta"] == b["meta"]
        assert torch.equal(a["image"], b["image"])
        assert (a["mask"] is None) == (b["mask"] is None) and (a["mask"] is None or torch.equal(a["mask"], b["mask"]))


def test_inspect_reads_a_shard_in_the_bucket(s3_run, capsys) -> None:
    from pipelines.cli import main

    shard = _s3().find(f"{BUCKET_PREFIX}/derived/{layout.SHARDS}/{s3_run['sessions'][0]}")
    url = "s3://" + next(p for p in shard if p.endswith(layout.SHARD_SUFFIX))
    reports = []
    for where in (url, str(s3_run["local"] / url.removeprefix("s3://o2a/derived/"))):
        assert main(["inspect", where, "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report.pop("path") == where and report["ok"]
        reports.append(report)
    assert reports[0] == reports[1] and len(reports[0]["samples"]) > 10
    assert main(["inspect", url]) == 0  # the human-readable listing names the shard too
    assert f"{url.rsplit('/', 1)[-1]}: {len(reports[0]['samples'])} samples" in capsys.readouterr().out
    assert main(["inspect", url + ".missing"]) == 2
    assert "no such shard" in capsys.readouterr().err


def test_scan_of_a_bucket_is_the_scan_of_the_same_folder(s3_run, tmp_path: Path) -> None:
    """The bucket's root is accounted for exactly as the same tree on disk would be."""
    same = tmp_path / "captures"
    for sid in s3_run["sessions"]:
        (same / sid).mkdir(parents=True)
        (same / sid / "session.json").write_bytes((s3_run["captures"].session_dir(sid) / "session.json").read_bytes())
    (same / "notes.txt").write_text("x")
    (same / "old_stuff").mkdir()
    (same / "old_stuff" / "readme.txt").write_text("x")
    assert s3_run["captures"].scan() == scan_captures_root(same)
    assert [e.kind for e in s3_run["captures"].scan()] == ["not_a_session", "not_a_session", "session", "session"]


def test_mirror_follows_the_bucket(s3_run, tmp_path: Path) -> None:
    """A file changed in the bucket changes the sensor's fingerprint and is downloaded again; one
    removed leaves the mirror; an unchanged session keeps its fingerprint."""
    from capture_schema.captures_mirror import CapturesMirror

    fs, sid = _s3(), s3_run["sessions"][0]
    fs.put(f"{s3_run['captures'].session_dir(sid)}/", f"{BUCKET_PREFIX}/copy/{sid}", recursive=True)
    mirror = CapturesMirror(f"s3://{BUCKET_PREFIX}/copy", tmp_path / "cache")
    before = mirror.fingerprint(sid)
    folder = mirror.session(sid)
    images = sorted(p for p in folder.rglob("*.jpg"))
    assert len(images) == 169 and mirror.fingerprint(sid) == before
    fs.pipe_file(f"{BUCKET_PREFIX}/copy/{sid}/{images[0].relative_to(folder).as_posix()}", b"replaced")
    fs.rm_file(f"{BUCKET_PREFIX}/copy/{sid}/{images[1].relative_to(folder).as_posix()}")
    assert mirror.fingerprint(sid) != before
    mirror.session(sid)
    assert images[0].read_bytes() == b"replaced" and not images[1].exists()


def test_export_from_the_bucket_equals_the_export_from_disk(s3_run, tmp_path: Path) -> None:
    """``o2a export`` reads the index and only the shards it needs from ``s3://``; every exported file
    equals the local export's, and export.json differs only in naming its source."""
    from pipelines.cli import main

    session = s3_run["sessions"][0]
    for name, storage in (("bucket", s3_run["storage"].url), ("disk", f"file://{s3_run['local']}")):
        assert main(["export", str(tmp_path / name), "--format", "nerfstudio", "--storage", storage,
                     "--sessions", session, "--expressions", "neutral,smile"]) == 0
    files = {p.relative_to(tmp_path / "disk") for p in (tmp_path / "disk").rglob("*") if p.is_file()}
    assert files == {p.relative_to(tmp_path / "bucket") for p in (tmp_path / "bucket").rglob("*") if p.is_file()}
    assert len(files) > 2 * 13 * 2
    for rel in files - {Path("export.json")}:
        assert (tmp_path / "disk" / rel).read_bytes() == (tmp_path / "bucket" / rel).read_bytes(), rel
    summaries = [json.loads((tmp_path / name / "export.json").read_text()) for name in ("bucket", "disk")]
    assert summaries[0].pop("source") == f"{s3_run['storage'].url}/{layout.INDEX}"
    assert summaries[1].pop("source") == str(s3_run["local"] / layout.INDEX)
    assert summaries[0] == summaries[1] and summaries[0]["cells"] == 26
