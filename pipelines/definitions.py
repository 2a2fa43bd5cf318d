"""The Dagster code location: every asset, check, job, sensor and resource of the pipeline."""

from __future__ import annotations

import dagster as dg

from pipelines.assets.ablation import build_ablation_assets, spec_from_environment
from pipelines.assets.calibration import camera_calibration
from pipelines.assets.dataset_index import dataset_index
from pipelines.assets.export import dataset_export
from pipelines.assets.face_fits import face_fits
from pipelines.assets.fewshot import fewshot_report
from pipelines.assets.ingest import capture_folders, session_manifest
from pipelines.assets.landmarks import face_landmarks
from pipelines.assets.latent import latent_space_report
from pipelines.assets.prior import avatar_prior
from pipelines.assets.shards import session_shards
from pipelines.executors import executor_from_environment
from pipelines.resources import default_resources
from pipelines.sensors import build_automation_sensor, build_session_sensor

#: The listing of the captures root (every entry a session, a shared calibration, or not a session and why).
CAPTURES_ASSETS = [capture_folders]
#: Assets computed once per session partition, in dependency order.
SESSION_ASSETS = [session_manifest, camera_calibration, face_landmarks, face_fits, session_shards]
#: Assets over the whole dataset, materialised after the sessions.
DATASET_ASSETS = [dataset_index]
#: A configured part of the dataset exported for nerfstudio, COLMAP or as images (``o2a export`` without Dagster).
EXPORT_ASSETS = [dataset_export]
#: The avatar prior, trained on the index's train split (a new index marks it stale).
PRIOR_ASSETS = [avatar_prior]
#: Few-shot adaptation of the prior to the held-out subjects, scored and reported.
FEWSHOT_ASSETS = [fewshot_report]
#: The prior's identity latent space: interpolations, sampled identities, coverage of the few-shot codes.
LATENT_ASSETS = [latent_space_report]
#: Balance ablations: subset, prior and few-shot scores per spec configuration (partitions), then the report.
ABLATION_ASSETS = build_ablation_assets(spec_from_environment())

session_job = dg.define_asset_job(
    "process_session",
    selection=dg.AssetSelection.assets(*SESSION_ASSETS),
    description="Everything the pipeline computes for one capture session.",
)

captures_job = dg.define_asset_job(
    "scan_captures_root",
    selection=dg.AssetSelection.assets(*CAPTURES_ASSETS),
    description="List every entry of the captures root and why each one that is not a session is not.",
)

dataset_job = dg.define_asset_job(
    "build_dataset_index",
    selection=dg.AssetSelection.assets(*DATASET_ASSETS),
    description="Index every sharded session (run after new sessions are sharded).",
)

prior_job = dg.define_asset_job(
    "train_avatar_prior",
    selection=dg.AssetSelection.assets(*PRIOR_ASSETS),
    description="Train (or resume) the avatar prior on the dataset index's train split.",
)

fewshot_job = dg.define_asset_job(
    "evaluate_fewshot",
    selection=dg.AssetSelection.assets(*FEWSHOT_ASSETS),
    description="Adapt the avatar prior to each held-out subject from K images and write the report.",
)

latent_job = dg.define_asset_job(
    "report_latent_space",
    selection=dg.AssetSelection.assets(*LATENT_ASSETS),
    description="Interpolate, sample and measure the avatar prior's identity codes (after the few-shot report).",
)

export_job = dg.define_asset_job(
    "export_dataset",
    selection=dg.AssetSelection.assets(*EXPORT_ASSETS),
    description="Export the cells the run config selects (exports/<name>/ of the storage root).",
)

ablation_job = dg.define_asset_job(
    "run_ablation_configuration",
    selection=dg.AssetSelection.assets(*ABLATION_ASSETS.per_configuration),
    description="One ablation configuration (partition): its subset, its prior and its few-shot scores.",
)

#: The prior goes stale when the index changes (the UI shows it); a deployment refreshes it on request or
#: turns this on (``dagster schedule start nightly_prior``): the prior, its few-shot report, then its latent-space
#: report, at 02:00.
prior_refresh = dg.ScheduleDefinition(
    name="nightly_prior", cron_schedule="0 2 * * *", default_status=dg.DefaultScheduleStatus.STOPPED,
    target=dg.AssetSelection.assets(*PRIOR_ASSETS, *FEWSHOT_ASSETS, *LATENT_ASSETS),
    description="Retrain the avatar prior on the current index, then its few-shot and latent-space reports (off "
                "until started).")

defs = dg.Definitions(
    assets=(CAPTURES_ASSETS + SESSION_ASSETS + DATASET_ASSETS + EXPORT_ASSETS + PRIOR_ASSETS + FEWSHOT_ASSETS
            + LATENT_ASSETS + list(ABLATION_ASSETS)),
    jobs=[captures_job, session_job, dataset_job, export_job, prior_job, fewshot_job, latent_job, ablation_job],
    sensors=[build_session_sensor(session_job, captures_job), build_automation_sensor()],
    schedules=[prior_refresh],
    resources=default_resources(),
    executor=executor_from_environment(),
)
