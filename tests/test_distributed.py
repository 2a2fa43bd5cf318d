"""The distributed deployment of ``deploy/celery``, for real, on loopback: a Dagster instance on
PostgreSQL, a Redis broker, two Celery workers started by ``deploy/celery/worker.sh``, derived data
in S3 (SeaweedFS), and the ``dagster-daemon`` launching a backfill of session partitions.

One worker is killed (SIGKILL, the whole worker) while a step runs on it: late acknowledgement puts
the step back on the queue, the other worker runs it, and every partition still materialises every
session asset exactly once, byte for byte what the embedded run wrote.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from capture_schema import derived_layout as layout
from pipelines.definitions import SESSION_ASSETS, session_job
from pipelines.deployment import instance_at, running_daemon, submit_backfill, wait_for_backfill

REPO = Path(__file__).resolve().parents[1]
N_SESSIONS = 3
#: How long an unacknowledged step waits in Redis before another worker gets it: longer than any step
#: of a 384 px session takes here (the slowest, shards, ~20 s), or a live worker's step would be re-sent too.
REDELIVER_SECONDS = 45


def _start_worker(name: str, env: dict[str, str], folder: Path) -> subprocess.Popen:
    log = folder / f"{name}.log"
    with open(log, "wb") as out:
        return subprocess.Popen([str(REPO / "deploy" / "celery" / "worker.sh"), name, "1"], env=env, cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _celery_hosts(instance: dg.DagsterInstance, run_ids: list[str]) -> dict[str, str]:
    """step key (of a running step) -> the Celery worker it was sent to, from the runs' engine events."""
    out = {}
    for run_id in run_ids:
        for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records:
            entry = record.event_log_entry
            meta = entry.dagster_event.engine_event_data.metadata if entry.dagster_event else {}
            if "Celery worker" in meta:
                out[f"{run_id}:{entry.step_key}"] = meta["Celery worker"].value
    return out


def test_backfill_on_postgres_celery_and_s3_survives_a_killed_worker(prior_pipeline, s3_store, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from services import postgres, redis

    sessions = prior_pipeline["sessions"][1:1 + N_SESSIONS]
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "celery" / "dagster.yaml", home / "dagster.yaml")
    bucket_prefix = "o2a/distributed"
    with postgres(tmp_path / "postgres") as pg, redis(tmp_path / "redis") as broker:
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # as an activated venv
        env = {**os.environ, **pg, "PATH": path, "DAGSTER_HOME": str(home), "O2A_EXECUTOR": "celery",
               "O2A_CELERY_BROKER": broker,
               "O2A_CELERY_REDELIVER_SECONDS": str(REDELIVER_SECONDS),
               "O2A_CAPTURES_ROOT": str(prior_pipeline["captures"]), "O2A_STORAGE_URL": f"s3://{bucket_prefix}"}
        for key, value in pg.items():  # this process reads the instance too
            monkeypatch.setenv(key, value)
        instance = instance_at(home)
        instance.add_dynamic_partitions("sessions", sessions)
        workers = {name: _start_worker(name, env, tmp_path) for name in ("w1", "w2")}
        try:
            with running_daemon(env, tmp_path / "daemon.log") as daemon:
                backfill = submit_backfill(session_job.name, sessions, env)
                killed, step = _kill_a_worker_mid_step(instance, backfill, workers, daemon, tmp_path)
                outcomes = wait_for_backfill(instance, backfill, N_SESSIONS, lambda _: None, daemon=daemon)
        finally:
            for proc in workers.values():
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(30)
        assert [(o.partition, o.status) for o in outcomes] == [(s, "SUCCESS") for s in sorted(sessions)], \
            (tmp_path / "daemon.log").read_text()[-3000:]
        assert workers[killed].returncode is not None
        # exactly once: one materialisation per asset and partition, across every run of the backfill
        for asset in SESSION_ASSETS:
            key = asset.key
            records = instance.fetch_materializations(key, limit=100).records
            per_partition = sorted(r.partition_key for r in records)
            assert per_partition == sorted(sessions), (key, per_partition)
        # the step the dead worker held ran again, on the other worker
        hosts = _celery_hosts(instance, [o.run_id for o in outcomes])
        assert not hosts[step].startswith(f"{killed}@"), (step, hosts[step])
        instance.dispose()

    import s3fs

    fs, local = s3fs.S3FileSystem(skip_instance_cache=True), Path(prior_pipeline["storage"].removeprefix("file://"))
    remote = sorted(p[len(bucket_prefix) + 1:] for p in fs.find(bucket_prefix))
    assert any(p.startswith(f"{layout.SHARDS}/{sessions[0]}/") for p in remote)
    for relpath in remote:
        assert fs.cat_file(f"{bucket_prefix}/{relpath}") == (local / relpath).read_bytes(), relpath


def _kill_a_worker_mid_step(instance: dg.DagsterInstance, backfill: str, workers: dict[str, subprocess.Popen],
                            daemon: subprocess.Popen, folder: Path) -> tuple[str, str]:
    """Wait until a Celery worker holds a session's landmark step, SIGKILL that whole worker; its name
    and the step (``run_id:step_key``)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert daemon.poll() is None, (folder / "daemon.log").read_text()[-3000:]
        for name, proc in workers.items():
            assert proc.poll() is None, f"worker {name} exited early:\n{(folder / f'{name}.log').read_text()[-3000:]}"
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill}))
        for step, host in _celery_hosts(instance, [r.run_id for r in runs]).items():
            if step.endswith(":face_landmarks"):
                name = host.split("@", 1)[0]
                os.killpg(workers[name].pid, signal.SIGKILL)
                workers[name].wait(30)
                return name, step
        time.sleep(0.5)
    pytest.fail("no landmark step reached a Celery worker within 300 s:\n"
                + "\n".join((folder / f"{n}.log").read_text()[-1500:] for n in workers))
