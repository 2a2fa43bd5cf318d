"""Materialise every asset for every session, from Python or ``o2a pipeline run``.

This is what ``make demo`` drives: it registers each session found under the
captures root as a partition of the given Dagster instance (so the runs show up
in ``dagster dev`` afterwards) and materialises the session assets per partition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import dagster as dg

from pipelines.definitions import DATASET_ASSETS, SESSION_ASSETS, dataset_job, session_job
from pipelines.partitions import SESSIONS_PARTITION, unregistered_sessions
from pipelines.resources import CapturesResource, FaceModelResource, StorageResource, default_resources


@dataclass(frozen=True)
class SessionRun:
    session_id: str
    success: bool
    failed_checks: tuple[str, ...]


def sync_partitions(instance: dg.DagsterInstance, captures: CapturesResource) -> list[str]:
    """Add a partition for every valid session folder; return all session ids found."""
    good, _bad = captures.scan()
    new = unregistered_sessions(instance, good)
    if new:
        instance.add_dynamic_partitions(SESSIONS_PARTITION, new)
    return good


def run_all_sessions(
    instance: dg.DagsterInstance,
    captures: CapturesResource,
    storage: StorageResource,
    session_ids: list[str] | None = None,
    log: Callable[[str], None] = print,
    log_level: str = "INFO",
    face_model: FaceModelResource | None = None,
) -> list[SessionRun]:
    """Materialise ``SESSION_ASSETS`` for each session; invalid sessions are reported, not fatal."""
    found = sync_partitions(instance, captures)
    job = dg.Definitions(
        assets=SESSION_ASSETS, jobs=[session_job], resources={"captures": captures, "storage": storage,
                                                      "face_model": face_model or default_resources()["face_model"]}
    ).resolve_job_def(session_job.name)
    runs = []
    for sid in session_ids or found:
        result = job.execute_in_process(
            partition_key=sid,
            instance=instance,
            run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
            raise_on_error=False,
        )
        failed = tuple(sorted(e.check_name for e in result.get_asset_check_evaluations() if not e.passed))
        runs.append(SessionRun(sid, result.success, failed))
        status = "ok" if result.success and not failed else f"QUARANTINED (failed checks: {', '.join(failed)})" if failed else "FAILED"
        log(f"  {sid}: {status}")
    return runs


def build_dataset_index(instance: dg.DagsterInstance, storage: StorageResource,
                        log: Callable[[str], None] = print, log_level: str = "INFO") -> bool:
    """Materialise the dataset-wide assets (the index over every sharded session)."""
    job = dg.Definitions(assets=DATASET_ASSETS, jobs=[dataset_job],
                         resources={"storage": storage}).resolve_job_def(dataset_job.name)
    result = job.execute_in_process(instance=instance, raise_on_error=False,
                                    run_config={"loggers": {"console": {"config": {"log_level": log_level}}}})
    if result.success:
        meta = result.asset_materializations_for_node("dataset_index")[0].metadata
        log(f"  dataset index: {meta['images'].value} images of {meta['identities'].value} identities, "
            f"{meta['shards'].value} shards -> {meta['index'].value}")
    else:
        log("  dataset index: FAILED (see the run's log)")
    return result.success
