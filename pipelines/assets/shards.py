"""``session_shards``: a session's images, cameras, landmarks and fit as webdataset shards.

Thin by design: the step (quarantine gate, reuse, reading the upstream artefacts,
publishing the set whole into ``derived_layout.shards_dir(session_id)``) is
``training.shards.stage.shard_session``, which ``o2a shard`` runs too.
"""

import dagster as dg

from capture_schema import derived_layout as layout
from capture_schema.reuse import CODE_VERSIONS, MissingUpstreamError
from pipelines.assets.calibration import camera_calibration
from pipelines.assets.face_fits import face_fits
from pipelines.assets.ingest import session_manifest
from pipelines.assets.landmarks import face_landmarks
from pipelines.partitions import sessions_partitions
from pipelines.resources import CapturesResource, FaceModelResource, StorageResource
from training.prior.config import PRESETS as PRIOR_PRESETS
from training.settings import default_of
from training.shards.write import ShardConfig

SKIPPED_SHOWN = 20


class ShardsConfig(dg.Config):
    """How shards are cut and what each sample carries."""

    max_mb: float = default_of(ShardConfig, "max_bytes") / 2**20
    """A new shard starts before a sample would push the tar past this many MiB."""
    max_samples: int = default_of(ShardConfig, "max_samples")
    """... or past this many samples."""
    train_resolution: int = PRIOR_PRESETS["cpu"].load_resolution
    """Longer side of the training image (train.png) in pixels; 0 = no training image and no mask.
    The default is the avatar prior's CPU preset ``load_resolution``: the prior then never decodes originals."""
    masks: bool = default_of(ShardConfig, "masks")
    """With a training image, add a grabCut head mask (mask.png) where the frame has a fit."""


@dg.asset(
    partitions_def=sessions_partitions,
    deps=[session_manifest, camera_calibration, face_landmarks, face_fits],
    group_name="training_data",
    kinds={"webdataset"},
    code_version=CODE_VERSIONS["session_shards"],
)
def session_shards(
    context: dg.AssetExecutionContext, config: ShardsConfig, captures: CapturesResource,
    storage: StorageResource, face_model: FaceModelResource,
) -> dg.MaterializeResult:
    """One webdataset sample per image (original bytes + camera, landmarks and 3DMM fit as JSON)."""
    from training.shards.stage import shard_config, shard_session
    from training.shards.write import ShardInputError

    session_id = context.partition_key
    store = storage.storage()
    try:
        settings = shard_config(config.max_mb, config.max_samples, config.train_resolution, config.masks,
                                "session_shards run config")
    except ValueError as exc:
        raise dg.Failure(str(exc)) from None
    try:
        outcome = shard_session(store, captures.session_dir(session_id), session_id, settings,
                                face_model.choice(), context.log.info)
    except (MissingUpstreamError, ShardInputError) as exc:
        raise dg.Failure(str(exc)) from None
    skipped = [f"- {key}: {reason}" for key, reason in outcome["skipped"]]
    if skipped:
        context.log.warning(f"{session_id}: {len(skipped)} image(s) left out of the shards")
    if len(skipped) > SKIPPED_SHOWN:
        skipped = skipped[:SKIPPED_SHOWN] + [f"- ... and {len(skipped) - SKIPPED_SHOWN} more (see shards.json)"]
    return dg.MaterializeResult(
        metadata={
            "shards": outcome["shards"],
            "samples": outcome["samples"],
            "total_mb": round(outcome["total_bytes"] / 1e6, 3),
            "skipped_samples": len(outcome["skipped"]),
            "skipped": dg.MetadataValue.md("\n".join(skipped) or "none"),
            "shards_json": dg.MetadataValue.path(store.uri(layout.shards_index(session_id))),
            "train_resolution": config.train_resolution,
            "reused": outcome["reused"],
        },
        data_version=dg.DataVersion(outcome["data_version"]),
    )
