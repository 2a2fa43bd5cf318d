"""The embedded Dagster deployment: an instance whose run queue and daemon launch the session runs.

``o2a pipeline run`` does what a studio's deployment does, on one machine: the session
partitions are submitted as a real backfill of ``process_session`` (``dagster job backfill``),
the instance's run queue (``QueuedRunCoordinator``) lets at most ``workers`` runs go at once,
the ``dagster-daemon`` dequeues them and the run launcher starts each in its own process,
and the concurrency pools declared on the heavy assets (``pipelines.pools``) bound those
steps across runs. A deployment with its own ``dagster.yaml`` (Postgres, Celery, k8s: see
``deploy/``) is used as it is; this module writes one only into a Dagster home that has none
or one it wrote itself.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import dagster as dg

from pipelines import pools

#: The code location every process of the deployment loads (the daemon, each run, the backfill command).
CODE_LOCATION = ("-m", "pipelines.definitions")
#: The first line of a ``dagster.yaml`` this module wrote (and may rewrite).
WRITTEN_BY = "# written by o2a pipeline run: the embedded deployment (SQLite in this folder)"


def pool_limits(workers: int) -> dict[str, int]:
    """Slots per pool for a machine running ``workers`` runs at once: the landmark step already runs one
    detector per core, so one at a time per two runs; training takes every core, so one."""
    return {pools.LANDMARKS: max(1, workers // 2), pools.TRAINING: 1}


def instance_yaml(workers: int) -> str:
    """The ``dagster.yaml`` of the embedded deployment: a run queue of ``workers`` runs, pools by operation."""
    return (f"{WRITTEN_BY}\n"
            "run_coordinator:\n"
            "  module: dagster._core.run_coordinator\n"
            "  class: QueuedRunCoordinator\n"
            "  config:\n"
            "    dequeue_interval_seconds: 1\n"
            "concurrency:\n"
            "  runs:\n"
            f"    max_concurrent_runs: {workers}\n"
            "  pools:\n"
            "    granularity: op\n"
            "    default_limit: 1\n"
            "telemetry:\n"
            "  enabled: false\n")


def prepare_home(home: Path, workers: int) -> bool:
    """Write the embedded ``dagster.yaml`` into ``home`` unless a hand-written one is there; True if written."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if config.exists() and not config.read_text().startswith(WRITTEN_BY):
        return False
    if not config.exists() or config.read_text() != instance_yaml(workers):
        config.write_text(instance_yaml(workers))
    return True


def instance_at(home: Path) -> dg.DagsterInstance:
    """The Dagster instance configured by ``home``'s ``dagster.yaml`` (without setting ``DAGSTER_HOME`` here)."""
    from dagster._core.instance.ref import InstanceRef

    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


def thread_env(workers: int) -> dict[str, str]:
    """Thread counts for the numeric libraries of ``workers`` processes sharing the cores (no spinning threads)."""
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    return {variable: threads for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENCV_FOR_THREADS_NUM")}


def set_pool_limits(instance: dg.DagsterInstance, workers: int) -> None:
    """Give each pool its slots in the instance (what ``dagster instance concurrency set`` does)."""
    for pool, limit in pool_limits(workers).items():
        instance.event_log_storage.set_concurrency_slots(pool, limit)


def _dagster_bin(name: str) -> str:
    found = Path(sys.executable).parent / name
    return str(found) if found.exists() else name


def daemon_alive(instance: dg.DagsterInstance, within_seconds: float = 60.0) -> bool:
    """Whether a ``dagster-daemon`` of this instance has sent a heartbeat lately (a deployment's own)."""
    now = time.time()
    return any(now - beat.timestamp < within_seconds for beat in instance.get_daemon_heartbeats().values())


@contextmanager
def running_daemon(env: dict[str, str], log_file: Path) -> Iterator[subprocess.Popen]:
    """``dagster-daemon run`` on the code location, for the duration of the block (then SIGTERM, SIGKILL)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        proc = subprocess.Popen([_dagster_bin("dagster-daemon"), "run", *CODE_LOCATION], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def submit_backfill(job_name: str, partitions: list[str], env: dict[str, str]) -> str:
    """``dagster job backfill`` of ``job_name`` over ``partitions``; the backfill id (its runs carry it as a tag)."""
    proc = subprocess.run([_dagster_bin("dagster"), "job", "backfill", *CODE_LOCATION, "-j", job_name,
                           "--partitions", ",".join(partitions), "--noprompt"],
                          env=env, capture_output=True, text=True)
    found = re.search(r"Launched backfill job `([^`]+)`", proc.stdout)
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"dagster job backfill failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    return found.group(1)


@dataclass(frozen=True)
class RunOutcome:
    partition: str
    run_id: str
    status: str  # SUCCESS, FAILURE or CANCELED
    failed_checks: tuple[str, ...]
    seconds: float


def failed_checks(instance: dg.DagsterInstance, run_id: str) -> tuple[str, ...]:
    """The asset checks that did not pass in a run, by name, sorted."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
    return tuple(sorted(r.event_log_entry.dagster_event.event_specific_data.check_name for r in records
                        if not r.event_log_entry.dagster_event.event_specific_data.passed))


def wait_for_backfill(instance: dg.DagsterInstance, backfill_id: str, expected: int,
                      on_done: Callable[[RunOutcome], None], poll: float = 1.0,
                      daemon: subprocess.Popen | None = None) -> list[RunOutcome]:
    """Poll the backfill's runs until ``expected`` of them have finished; report each as it finishes."""
    done: dict[str, RunOutcome] = {}
    finished = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
    while len(done) < expected:
        if daemon is not None and daemon.poll() is not None:
            raise RuntimeError(f"dagster-daemon exited with {daemon.returncode} before the backfill finished")
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
        for run in runs:
            if run.run_id in done or run.status not in finished:
                continue
            stats = instance.get_run_stats(run.run_id)
            outcome = RunOutcome(run.tags.get("dagster/partition", ""), run.run_id, run.status.value,
                                 failed_checks(instance, run.run_id),
                                 (stats.end_time or 0) - (stats.launch_time or stats.start_time or 0))
            done[run.run_id] = outcome
            on_done(outcome)
        if len(done) < expected:
            time.sleep(poll)
    return sorted(done.values(), key=lambda o: o.partition)
