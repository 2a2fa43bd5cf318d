"""The embedded deployment's settings (run queue, pools, executors) and the captures mirror's rules,
checked without starting servers (the daemon, Celery and S3 tests start real ones)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines import pools
from pipelines.deployment import WRITTEN_BY, instance_at, pool_limits, prepare_home, set_pool_limits


@pytest.mark.parametrize("workers", [1, 2, 8])
def test_embedded_instance_queues_at_most_workers_runs(tmp_path: Path, workers: int) -> None:
    assert prepare_home(tmp_path, workers)
    instance = instance_at(tmp_path)
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == workers
    set_pool_limits(instance, workers)
    for pool, limit in pool_limits(workers).items():
        assert instance.event_log_storage.get_concurrency_info(pool).slot_count == limit
    instance.dispose()


def test_pool_limits_follow_the_workers() -> None:
    assert pool_limits(1) == {pools.LANDMARKS: 1, pools.TRAINING: 1}
    assert pool_limits(2)[pools.LANDMARKS] == 1  # mediapipe's step already uses both cores
    assert pool_limits(8)[pools.LANDMARKS] == 4 and pool_limits(8)[pools.TRAINING] == 1


def test_a_hand_written_instance_is_left_alone(tmp_path: Path) -> None:
    own = "telemetry:\n  enabled: false\n"
    (tmp_path / "dagster.yaml").write_text(own)
    assert not prepare_home(tmp_path, 4)
    assert (tmp_path / "dagster.yaml").read_text() == own
    assert prepare_home(tmp_path / "ours", 2) and prepare_home(tmp_path / "ours", 3)  # ours is rewritten
    text = (tmp_path / "ours" / "dagster.yaml").read_text()
    assert text.startswith(WRITTEN_BY) and "max_concurrent_runs: 3" in text


def test_heavy_assets_are_in_pools() -> None:
    from pipelines.definitions import defs

    expected = {"face_landmarks": pools.LANDMARKS, "avatar_prior": pools.TRAINING, "fewshot_report": pools.TRAINING,
                "ablation_prior": pools.TRAINING, "ablation_fewshot": pools.TRAINING, "session_shards": None}
    for name, pool in expected.items():
        assert defs.get_assets_def(name).op.pool == pool, name


def test_executor_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.executors import celery_settings, executor_from_environment

    monkeypatch.delenv("O2A_EXECUTOR", raising=False)
    assert executor_from_environment().name == "in_process"
    monkeypatch.setenv("O2A_EXECUTOR", "celery")
    monkeypatch.setenv("O2A_CELERY_BROKER", "redis://broker.example:6379/3")
    monkeypatch.setenv("O2A_CELERY_REDELIVER_SECONDS", "120")
    assert executor_from_environment().name == "celery"
    settings = celery_settings()
    assert settings["broker"] == settings["backend"] == "redis://broker.example:6379/3"
    source = settings["config_source"]
    assert source["task_acks_late"] and source["task_reject_on_worker_lost"]
    assert source["broker_transport_options"]["visibility_timeout"] == 120
    monkeypatch.setenv("O2A_EXECUTOR", "spark")
    with pytest.raises(ValueError, match="in_process, multiprocess, celery, k8s"):
        executor_from_environment()


def test_workers_read_the_same_celery_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/celery/dagster_celery_config.py (what the workers load) says what the runs' executor says."""
    import importlib.util

    from pipelines.executors import celery_settings

    monkeypatch.setenv("O2A_CELERY_BROKER", "redis://broker.example:6379/5")
    path = Path(__file__).resolve().parents[1] / "deploy" / "celery" / "dagster_celery_config.py"
    spec = importlib.util.spec_from_file_location("dagster_celery_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = celery_settings()
    assert module.broker_url == expected["broker"] and module.result_backend == expected["backend"]
    for key, value in expected["config_source"].items():
        assert getattr(module, key) == value, key


# ---------------------------------------------------------------- captures mirror (fsspec memory filesystem)


@pytest.fixture()
def bucket(request) -> tuple[object, str]:
    import uuid

    import fsspec

    fs, root = fsspec.filesystem("memory"), f"/captures-{uuid.uuid4().hex}"
    session = {"subject_id": "s1", "session_id": "s1_a", "calibration": "../rig_calibration"}
    fs.pipe_file(f"{root}/s1_a/session.json", json.dumps(session).encode())
    fs.pipe_file(f"{root}/s1_a/images/neutral/C00.jpg", b"jpeg-1")
    fs.pipe_file(f"{root}/rig_calibration/board/C00.jpg", b"board")
    fs.pipe_file(f"{root}/stray.txt", b"x")
    request.addfinalizer(lambda: fs.rm(root, recursive=True))
    return fs, root


def test_mirror_copies_a_session_and_its_shared_calibration(bucket, tmp_path: Path) -> None:
    from capture_schema.captures_mirror import CapturesMirror
    from capture_schema.captures_root import scan_captures_root

    fs, root = bucket
    mirror = CapturesMirror(f"memory://{root}", tmp_path)
    listing = mirror.root_listing()
    assert sorted(p.name for p in listing.iterdir()) == ["rig_calibration", "s1_a", "stray.txt"]
    assert not (listing / "s1_a" / "images").exists()  # the outline only: no image read to list the root
    kinds = {e.name: e.kind for e in scan_captures_root(listing)}
    assert kinds == {"s1_a": "session", "rig_calibration": "calibration", "stray.txt": "not_a_session"}
    folder = mirror.session("s1_a")
    assert (folder / "images" / "neutral" / "C00.jpg").read_bytes() == b"jpeg-1"
    assert (listing / "rig_calibration" / "board" / "C00.jpg").read_bytes() == b"board"


def test_mirror_follows_changes_and_fingerprints_them(bucket, tmp_path: Path) -> None:
    from capture_schema.captures_mirror import CapturesMirror

    fs, root = bucket
    mirror = CapturesMirror(f"memory://{root}", tmp_path)
    first = mirror.fingerprint("s1_a")
    assert mirror.fingerprint("s1_a") == first
    folder = mirror.session("s1_a")
    fs.pipe_file(f"{root}/s1_a/images/neutral/C00.jpg", b"jpeg-2, longer")  # another size
    fs.pipe_file(f"{root}/rig_calibration/board/C01.jpg", b"board 2")  # the shared calibration changed
    second = mirror.fingerprint("s1_a")
    assert second != first
    fs.rm(f"{root}/s1_a/images/neutral/C00.jpg")
    fs.pipe_file(f"{root}/s1_a/images/smile/C00.jpg", b"smile")
    mirror.session("s1_a")
    assert not (folder / "images" / "neutral").exists()  # removed files (and emptied folders) leave the mirror
    assert (folder / "images" / "smile" / "C00.jpg").read_bytes() == b"smile"
    assert (folder.parent / "rig_calibration" / "board" / "C01.jpg").read_bytes() == b"board 2"
    assert mirror.fingerprint("s1_a") != second
