"""The storage root: one rule for local paths, folders published whole and never nested, env settings."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import dagster as dg
import fsspec
import pytest

from capture_schema.atomic import write_if_changed
from capture_schema.storage import Storage, local_path_of
from pipelines.resources import DEFAULT_STORAGE_URL, FaceModelResource, StorageResource, default_resources


def _folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_local_path_of_tells_local_from_remote(tmp_path: Path) -> None:
    assert local_path_of(f"file://{tmp_path}/a") == tmp_path / "a"
    assert local_path_of(str(tmp_path / "b")) == tmp_path / "b"
    assert local_path_of("relative/dir") == Path.cwd() / "relative" / "dir"
    assert local_path_of("file://~/x") == Path.home() / "x"
    for remote in ("s3://bucket/prefix", "memory://root/x", "gs://b"):
        assert local_path_of(remote) is None


def test_remote_folder_published_twice_is_not_nested(tmp_path: Path) -> None:
    url = f"memory://o2a-storage-{uuid.uuid4().hex}"
    store = Storage(url)
    first = _folder(tmp_path / "one", {"x.txt": b"1", "sub/y.txt": b"2"})
    store.put_directory(first, "prior/anchored")
    second = _folder(tmp_path / "two", {"x.txt": b"3", "sub/y.txt": b"4"})
    store.put_directory(second, "prior/anchored")
    fs = fsspec.filesystem("memory")
    root = fsspec.core.url_to_fs(url)[1]
    found = sorted(p[len(root) + 1:] for p in fs.find(root))
    assert found == ["prior/anchored/sub/y.txt", "prior/anchored/x.txt"]
    assert store.read_bytes("prior/anchored/x.txt") == b"3"
    store.write_bytes("prior/other.txt", b"a neighbour, not part of the folder")
    third = _folder(tmp_path / "three", {"z.txt": b"5"})  # x.txt and sub/ are gone from the new folder
    store.put_directory(third, "prior/anchored")
    found = sorted(p[len(root) + 1:] for p in fs.find(root))
    assert found == ["prior/anchored/z.txt", "prior/other.txt"]


def test_local_folder_is_replaced_whole_and_left_alone_when_built_in_place(tmp_path: Path) -> None:
    store = Storage(f"file://{tmp_path / 'derived'}")
    store.put_directory(_folder(tmp_path / "old", {"a.txt": b"a", "stale.txt": b"s"}), "f")
    store.put_directory(_folder(tmp_path / "new", {"a.txt": b"b"}), "f")
    assert sorted(p.name for p in (tmp_path / "derived" / "f").iterdir()) == ["a.txt"]
    in_place = store.local_path("f")
    (in_place / "c.txt").write_bytes(b"c")
    store.put_directory(in_place, "f")
    assert sorted(p.name for p in in_place.iterdir()) == ["a.txt", "c.txt"]


@pytest.mark.parametrize("remote", [False, True])
def test_write_if_changed_leaves_an_equal_file_alone(tmp_path: Path, remote: bool) -> None:
    store = Storage(f"memory://o2a-storage-{uuid.uuid4().hex}" if remote else f"file://{tmp_path}")
    assert store.write_if_changed("d/x.json", b"{}") is True
    assert store.write_if_changed("d/x.json", b"{}") is False
    assert store.write_if_changed("d/x.json", b"[]") is True and store.read_bytes("d/x.json") == b"[]"
    path = tmp_path / "y.bin"
    assert write_if_changed(path, b"1") is True
    os.utime(path, ns=(1, 1))
    assert write_if_changed(path, b"1") is False and path.stat().st_mtime_ns == 1


def test_default_resources_read_the_deployment_settings_at_launch(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    monkeypatch.delenv("O2A_STORAGE_URL", raising=False)
    assert default_resources()["storage"].url == DEFAULT_STORAGE_URL
    monkeypatch.setenv("O2A_STORAGE_URL", f"file://{tmp_path}")
    monkeypatch.setenv("O2A_FACE_MODEL", "builtin")
    resources = default_resources()
    assert isinstance(resources["storage"].url, dg.EnvVar)  # shown by name in the UI, read at launch

    @dg.asset
    def seen(storage: StorageResource, face_model: FaceModelResource) -> dict:
        return {"url": storage.url, "kind": face_model.kind}

    result = dg.materialize([seen], resources={k: resources[k] for k in ("storage", "face_model")})
    assert result.output_for_node("seen") == {"url": f"file://{tmp_path}", "kind": "builtin"}


@pytest.mark.parametrize("remote", [False, True])
def test_staged_folder_replaces_whole_on_success_and_leaves_the_old_one_on_failure(tmp_path: Path,
                                                                                  remote: bool) -> None:
    url = f"memory://o2a-staged-{uuid.uuid4().hex}" if remote else f"file://{tmp_path / 'derived'}"
    store = Storage(url)
    with store.staged_directory("fewshot/anchored") as work:
        _folder(work, {"report.html": b"old", "adapted/s1/k1/checkpoint.pt": b"c1"})
    with pytest.raises(RuntimeError):
        with store.staged_directory("fewshot/anchored") as work:
            _folder(work, {"report.html": b"half"})
            raise RuntimeError("crash mid-way")
    assert store.read_bytes("fewshot/anchored/report.html") == b"old"
    assert store.exists("fewshot/anchored/adapted/s1/k1/checkpoint.pt")
    with store.staged_directory("fewshot/anchored") as work:
        _folder(work, {"report.html": b"new"})
    assert store.read_bytes("fewshot/anchored/report.html") == b"new"
    if not remote:  # locally the new folder is all there is: no stale avatar, no temporary left
        root = tmp_path / "derived" / "fewshot"
        assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == ["anchored", "anchored/report.html"]


def test_resumable_folder_keeps_unfinished_work_apart_and_resumes_from_it(tmp_path: Path) -> None:
    store = Storage(f"file://{tmp_path / 'derived'}")
    published = tmp_path / "derived" / "prior" / "anchored"
    with store.resumable_directory("prior/anchored") as work:
        (work / "checkpoint.pt").write_bytes(b"step 10")
    assert (published / "checkpoint.pt").read_bytes() == b"step 10"
    with pytest.raises(KeyboardInterrupt):
        with store.resumable_directory("prior/anchored") as work:
            assert (work / "checkpoint.pt").read_bytes() == b"step 10"  # continues the finished run
            (work / "checkpoint.pt").write_bytes(b"step 15")
            raise KeyboardInterrupt
    assert (published / "checkpoint.pt").read_bytes() == b"step 10"  # readers still see the finished prior
    staging = tmp_path / "derived" / "prior" / ".anchored.partial"
    assert (staging / "checkpoint.pt").read_bytes() == b"step 15"
    with store.resumable_directory("prior/anchored") as work:
        assert (work / "checkpoint.pt").read_bytes() == b"step 15"  # the interrupted run, not the published one
        (work / "checkpoint.pt").write_bytes(b"step 20")
    assert (published / "checkpoint.pt").read_bytes() == b"step 20"
    assert sorted(p.name for p in published.parent.iterdir()) == ["anchored"]


def test_resumable_folder_on_a_remote_root_round_trips(tmp_path: Path) -> None:
    store = Storage(f"memory://o2a-resume-{uuid.uuid4().hex}")
    with store.resumable_directory("prior/anchored", first=("checkpoint.pt",)) as work:
        _folder(work, {"checkpoint.pt": b"a", "report.json": b"{}"})
    with store.resumable_directory("prior/anchored") as work:
        assert (work / "checkpoint.pt").read_bytes() == b"a"
        (work / "checkpoint.pt").write_bytes(b"b")
    assert store.read_bytes("prior/anchored/checkpoint.pt") == b"b"
    assert store.read_bytes("prior/anchored/report.json") == b"{}"
