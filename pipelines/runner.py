"""Materialise every asset for every session, from Python or ``o2a pipeline run``.

This is what ``make demo`` drives: it registers each session found under the
captures root as a partition of the given Dagster instance (so the runs show up
in ``dagster dev`` afterwards), materialises the session assets per partition,
then the dataset index and the avatar prior.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import dagster as dg

from capture_schema.captures_root import RootEntry, session_ids
from pipelines.definitions import (CAPTURES_ASSETS, DATASET_ASSETS, FEWSHOT_ASSETS, LATENT_ASSETS, PRIOR_ASSETS,
                                   SESSION_ASSETS, captures_job, dataset_job, fewshot_job, latent_job, prior_job,
                                   session_job)
from pipelines.partitions import SESSIONS_PARTITION, unregistered_sessions
from pipelines.resources import CapturesResource, FaceModelResource, StorageResource, default_resources

if TYPE_CHECKING:
    from training.ablation.spec import AblationSpec


@dataclass(frozen=True)
class SessionRun:
    session_id: str
    success: bool
    failed_checks: tuple[str, ...]


def sync_partitions(instance: dg.DagsterInstance, captures: CapturesResource) -> list[str]:
    """Add a partition for every session folder; return all session ids found."""
    good = session_ids(captures.scan())
    new = unregistered_sessions(instance, good)
    if new:
        instance.add_dynamic_partitions(SESSIONS_PARTITION, new)
    return good


def scan_captures(instance: dg.DagsterInstance, captures: CapturesResource, storage: StorageResource,
                  log: Callable[[str], None] = print, log_level: str = "INFO") -> list[RootEntry]:
    """Materialise ``capture_folders`` (so the listing is in Dagster too) and return the entries."""
    job = dg.Definitions(assets=CAPTURES_ASSETS, jobs=[captures_job],
                         resources={"captures": captures, "storage": storage}).resolve_job_def(captures_job.name)
    job.execute_in_process(instance=instance, raise_on_error=False,
                           run_config={"loggers": {"console": {"config": {"log_level": log_level}}}})
    entries = captures.scan()
    for entry in entries:
        if entry.kind != "session":
            log(f"  {entry.name}: {'calibration' if entry.kind == 'calibration' else 'NOT A SESSION'} ({entry.reason})")
    return entries


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
        log(f"  {sid}: {_status(result.success, failed)}")
    return runs


def _status(success: bool, failed_checks: tuple[str, ...], failure_detail: str = "") -> str:
    """How a session run is reported: ok, quarantined (by which checks) or failed."""
    if failed_checks:
        return f"QUARANTINED (failed checks: {', '.join(failed_checks)})"
    return "ok" if success else f"FAILED{failure_detail}"


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


def _execute_with_models(assets: list, job: Any, instance: dg.DagsterInstance, storage: StorageResource,
                         face_model: FaceModelResource | None, log_level: str,
                         run_config: dict[str, Any] | None) -> dg.ExecuteInProcessResult:
    """Run ``job`` over ``assets`` in process, with the storage and face-model resources."""
    job_def = dg.Definitions(assets=assets, jobs=[job],
                             resources={"storage": storage,
                                        "face_model": face_model or default_resources()["face_model"]}
                             ).resolve_job_def(job.name)
    config = {"loggers": {"console": {"config": {"log_level": log_level}}}, **(run_config or {})}
    return job_def.execute_in_process(instance=instance, raise_on_error=False, run_config=config)


def train_avatar_prior(instance: dg.DagsterInstance, storage: StorageResource,
                       face_model: FaceModelResource | None = None, log: Callable[[str], None] = print,
                       log_level: str = "INFO", run_config: dict[str, Any] | None = None) -> bool:
    """Materialise ``PRIOR_ASSETS`` (train or resume the avatar prior on the index's train split).

    ``run_config`` is merged into the job's run config, e.g.
    ``{"ops": {"avatar_prior": {"config": {"iterations": 100}}}}``.
    """
    result = _execute_with_models(PRIOR_ASSETS, prior_job, instance, storage, face_model, log_level, run_config)
    if result.success:
        meta = result.asset_materializations_for_node("avatar_prior")[0].metadata
        log(f"  avatar prior ({meta['backbone'].value}): held-in PSNR {meta['psnr_heldin_frames'].value:.2f} dB, "
            f"{meta['steps'].value} steps on {meta['subjects'].value} subjects -> {meta['checkpoint'].value}")
    else:
        log(f"  avatar prior: FAILED: {_failure_reason(result)}")
    return result.success


def evaluate_fewshot(instance: dg.DagsterInstance, storage: StorageResource,
                     face_model: FaceModelResource | None = None, log: Callable[[str], None] = print,
                     log_level: str = "INFO", run_config: dict[str, Any] | None = None) -> str | None:
    """Materialise ``FEWSHOT_ASSETS`` (adapt the prior to the held-out subjects); the report's URI, or None."""
    result = _execute_with_models(FEWSHOT_ASSETS, fewshot_job, instance, storage, face_model, log_level,
                                  run_config)
    if not result.success:
        log(f"  few-shot report: FAILED: {_failure_reason(result)}")
        return None
    meta = result.asset_materializations_for_node("fewshot_report")[0].metadata
    log(f"  few-shot report: {meta['frames_scored'].value} frames scored on {meta['subjects'].value} held-out "
        f"subject(s) -> {meta['report'].value}")
    return str(meta["report"].value)


def report_latent_space(instance: dg.DagsterInstance, storage: StorageResource,
                        face_model: FaceModelResource | None = None, log: Callable[[str], None] = print,
                        log_level: str = "INFO", run_config: dict[str, Any] | None = None) -> str | None:
    """Materialise ``LATENT_ASSETS`` (the prior's latent-space report); the report's URI, or None."""
    result = _execute_with_models(LATENT_ASSETS, latent_job, instance, storage, face_model, log_level, run_config)
    if not result.success:
        log(f"  latent-space report: FAILED: {_failure_reason(result)}")
        return None
    meta = result.asset_materializations_for_node("latent_space_report")[0].metadata
    log(f"  latent-space report: smoothness {meta['smoothness'].value:.3f}, plausible samples "
        f"{meta['plausible_share'].value:.0%}, coverage {meta['coverage_mean'].value:.2f} -> {meta['report'].value}")
    return str(meta["report"].value)


def run_ablation(instance: dg.DagsterInstance, storage: StorageResource, spec: "AblationSpec",
                 names: list[str] | None = None, report: bool = True, face_model: FaceModelResource | None = None,
                 log: Callable[[str], None] = print, log_level: str = "INFO") -> bool:
    """Materialise the ablation assets of ``spec``: subset, prior, few-shot scores and latent space of each
    configuration in ``names`` (default: all), then ``ablation_report`` when ``report`` (it needs every
    configuration done)."""
    from pipelines.assets.ablation import build_ablation_assets

    assets = build_ablation_assets(spec)
    resources = {"storage": storage, "face_model": face_model or default_resources()["face_model"]}
    config = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    for name in names or spec.names():
        spec.get(name)  # an unknown name fails here, listing the known ones
        log(f"  ablation configuration {name}: subset, prior, few-shot, latent space")
        result = dg.materialize(assets.per_configuration, instance=instance, partition_key=name, resources=resources,
                                raise_on_error=False, run_config=config)
        if not result.success:
            log(f"  ablation configuration {name}: FAILED: {_failure_reason(result)}")
            return False
        meta = result.asset_materializations_for_node("ablation_fewshot")[0].metadata
        log(f"    mean over seeds {meta['seeds'].value}: " + ", ".join(
            f"{k}: {v.value:.2f} dB" for k, v in meta.items() if k.startswith("psnr_k") and "_seed" not in k))
    if report:
        result = dg.materialize([assets.report], instance=instance, resources=resources, raise_on_error=False,
                                run_config=config)
        if not result.success:
            log(f"  ablation report: FAILED: {_failure_reason(result)}")
            return False
        log(f"  ablation report -> {result.asset_materializations_for_node('ablation_report')[0].metadata['report'].value}")
    return True


def _failure_reason(result: dg.ExecuteInProcessResult) -> str:
    """The first failed step's message (a ``dg.Failure``'s description or the error), else a pointer to the log."""
    for event in result.get_step_failure_events():
        data = event.step_failure_data
        if data.user_failure_data is not None and data.user_failure_data.description:
            return data.user_failure_data.description
        if data.error is not None:
            return data.error.message.strip()
    return "see the run's log"


def backfill_all_sessions(instance: dg.DagsterInstance, home: Path, captures: CapturesResource,
                          storage: StorageResource, workers: int, log: Callable[[str], None] = print) -> list[SessionRun]:
    """Every session under the captures root as one Dagster backfill of ``process_session``, at most
    ``workers`` runs at once (the instance's run queue; ``pipelines.deployment``); each run is reported as
    it finishes. The instance lives in ``home``; unless its deployment's daemon is running, one runs for
    the duration of the call. ``workers`` also sets how many threads each run's libraries use."""
    import os

    from pipelines.deployment import daemon_alive, running_daemon, submit_backfill, thread_env, wait_for_backfill

    found = sync_partitions(instance, captures)
    if not found:
        return []
    root = str(captures.root_path()) if captures.is_local else captures.root  # every process, whatever its cwd
    env = {**os.environ, "DAGSTER_HOME": str(home), "O2A_CAPTURES_ROOT": root, "O2A_STORAGE_URL": storage.url}
    env = {**thread_env(workers), **env}  # the runs share the cores; a setting of the caller's wins

    def report(outcome) -> None:
        status = _status(outcome.status == "SUCCESS", outcome.failed_checks, f" (run {outcome.run_id}: see its log)")
        log(f"  {outcome.partition}: {status} [{outcome.seconds:.0f} s]")

    if daemon_alive(instance):  # a deployment's own daemon dequeues the runs; never start a second one
        log("  the instance's dagster-daemon is running: it launches the backfill's runs")
        backfill_id = submit_backfill(session_job.name, found, env)
        outcomes = wait_for_backfill(instance, backfill_id, len(found), report)
    else:
        with running_daemon(env, home / "logs" / "daemon.log") as daemon:
            backfill_id = submit_backfill(session_job.name, found, env)
            outcomes = wait_for_backfill(instance, backfill_id, len(found), report, daemon=daemon)
    return [SessionRun(o.partition, o.status == "SUCCESS", o.failed_checks) for o in outcomes]
