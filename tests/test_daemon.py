"""The real ``dagster-daemon`` on a temporary Dagster home: a session dropped into the captures root is
ingested, processed and indexed with no command in between (the sensor adds its partition and
requests its run, the run queue launches it, the eager ``dataset_index`` refreshes itself)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from capture_schema import derived_layout as layout
from pipelines.deployment import CODE_LOCATION, instance_at, prepare_home, running_daemon

SENSOR_SECONDS = 3  # O2A_SENSOR_INTERVAL_SECONDS: the deployment default is 60


def _wait(what: str, condition, timeout: float, daemon: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        assert daemon.poll() is None, f"dagster-daemon exited: {log.read_text()[-3000:]}"
        time.sleep(1)
    pytest.fail(f"no {what} within {timeout:.0f} s; daemon log:\n{log.read_text()[-4000:]}")


def _successful_runs(instance: dg.DagsterInstance, job: str, **tags: str) -> list[dg.DagsterRun]:
    return list(instance.get_runs(dg.RunsFilter(job_name=job, statuses=[dg.DagsterRunStatus.SUCCESS], tags=tags)))


def test_a_session_dropped_in_is_ingested_and_indexed_by_the_daemon(prior_pipeline, tmp_path: Path) -> None:
    home, captures, derived = tmp_path / "dagster_home", tmp_path / "captures", tmp_path / "derived"
    captures.mkdir()
    prepare_home(home, workers=2)
    env = {**os.environ, "DAGSTER_HOME": str(home), "O2A_CAPTURES_ROOT": str(captures),
           "O2A_STORAGE_URL": f"file://{derived}", "O2A_SENSOR_INTERVAL_SECONDS": str(SENSOR_SECONDS)}
    dagster = str(Path(sys.executable).parent / "dagster")
    # what a deployment does once: turn the sensors on (they ship stopped)
    started = subprocess.run([dagster, "sensor", "start", *CODE_LOCATION, "--start-all"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    instance, log = instance_at(home), home / "daemon.log"

    with running_daemon(env, log) as daemon:
        # the sensor's first tick lists the (empty) root: a scan run
        _wait("scan of the empty root", lambda: _successful_runs(instance, "scan_captures_root"), 120, daemon, log)
        sid = prior_pipeline["sessions"][0]
        staging = tmp_path / "incoming" / sid
        shutil.copytree(prior_pipeline["captures"] / sid, staging)
        os.rename(staging, captures / sid)  # the session appears whole, as a studio's upload tool would leave it

        run = _wait("session run", lambda: _successful_runs(instance, "process_session", **{"dagster/partition": sid}),
                    300, daemon, log)[0]
        assert sid in instance.get_dynamic_partitions("sessions")

        def index_after_the_session():
            event = instance.get_latest_materialization_event(dg.AssetKey("dataset_index"))
            return event if event and event.timestamp > instance.get_run_stats(run.run_id).end_time else None

        _wait("dataset index refresh", index_after_the_session, 180, daemon, log)

    index = pd.read_parquet(derived / layout.INDEX)
    assert list(index.session_id.unique()) == [sid] and len(index) == 169
    local = Path(prior_pipeline["storage"].removeprefix("file://"))
    shards = sorted((derived / layout.SHARDS / sid).iterdir())
    assert shards and all(p.read_bytes() == (local / layout.SHARDS / sid / p.name).read_bytes() for p in shards)
