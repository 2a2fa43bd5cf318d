"""``session_shards``: a session's images, cameras, landmarks and fit as webdataset shards.

Thin by design: the work is ``training.shards.write``. Shards are written to a
temporary folder and published whole into ``derived_layout.shards_dir(session_id)``
(tars plus ``shards.json``), so a reader sees the previous set or the new one, never a mix.
"""

import hashlib
import io
import tempfile
from dataclasses import asdict
from pathlib import Path

import dagster as dg

from capture_schema import derived_layout as layout
from pipelines.assets.calibration import camera_calibration, read_session_calibration, session_calibration_digest
from pipelines.assets.face_fits import face_fits, face_model_identity
from pipelines.assets.ingest import session_manifest
from pipelines.assets.landmarks import face_landmarks
from pipelines.assets.reuse import (CODE_VERSIONS, fingerprint, library_version, recorded_fingerprint,
                                    recorded_outcome, stored_digest, write_record)
from pipelines.partitions import sessions_partitions
from pipelines.resources import CapturesResource, FaceModelResource, StorageResource
from pipelines.run_config import from_run_config
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
    session_id = context.partition_key
    store = storage.storage()
    if store.exists(layout.quarantine(session_id)):
        raise dg.Failure(f"session {session_id} is quarantined (see {store.uri(layout.quarantine(session_id))}); "
                         "fix it and re-materialise session_manifest first")
    shard_config = from_run_config(ShardConfig(), {"max_bytes": int(config.max_mb * 2**20), "masks": config.masks,
                                                   "max_samples": config.max_samples,
                                                   "train_resolution": config.train_resolution or None}, "session_shards")
    target = layout.shards_dir(session_id)
    upstream = [recorded_fingerprint(store, layout.landmarks_dir(session_id)),
                recorded_fingerprint(store, layout.face_fits_dir(session_id))]
    try:
        inputs = {"manifest": stored_digest(store, layout.manifest(session_id)), "landmarks": upstream[0],
                  "fit": upstream[1], "calibration": session_calibration_digest(store, session_id),
                  "config": asdict(shard_config), "opencv": library_version("opencv-contrib-python"),
                  "face_model": face_model_identity(face_model) if shard_config.masks else None}
    except FileNotFoundError as exc:
        raise dg.Failure(f"session {session_id}: an input is missing ({exc}); materialise session_manifest "
                         "first") from None
    fp = fingerprint("session_shards", inputs)
    outcome = recorded_outcome(store, target, fp) if all(upstream) else None
    reused = outcome is not None
    if reused:
        context.log.info(f"{session_id}: manifest, landmarks, fit, calibration and settings unchanged since the "
                         f"shards at {store.uri(target)} were written: reusing them")
    else:
        outcome = _write_shards(context, captures, store, face_model, shard_config, session_id, target, fp, inputs)
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
            "reused": reused,
        },
        data_version=dg.DataVersion(outcome["data_version"]),
    )


def _write_shards(context: dg.AssetExecutionContext, captures: CapturesResource, store,
                  face_model: FaceModelResource, shard_config, session_id: str, target: str, fp: str,
                  inputs: dict) -> dict:
    """Write the shards, publish them with ``shards.json`` and ``inputs.json`` as one folder; the outcome."""
    import pyarrow.parquet as pq

    from fitting.face_fit.session import read_session_fit
    from fitting.landmarks.store import read_landmarks_zarr
    from training.shards.write import ShardInputError, session_samples, write_session_shards

    try:
        manifest = pq.read_table(io.BytesIO(store.read_bytes(layout.manifest(session_id))))
        with store.local_directory(layout.landmarks_zarr(session_id)) as path:
            landmarks = read_landmarks_zarr(path)
        with store.local_directory(layout.fit_zarr(session_id)) as path:
            fit = read_session_fit(path)
    except FileNotFoundError as exc:
        raise dg.Failure(f"session {session_id}: an input is missing ({exc}); materialise session_manifest, "
                         "face_landmarks and face_fits first") from None
    calibration = read_session_calibration(store, session_id)
    faces = None
    if shard_config.train_resolution and shard_config.masks:
        try:
            model = face_model.load()
        except (OSError, ValueError) as exc:
            raise dg.Failure(f"face model {face_model.kind!r} could not be loaded: {exc}") from None
        if model.name != fit.fit.model_name:
            raise dg.Failure(f"the fit was made with model {fit.fit.model_name!r} but the face_model resource is "
                             f"{model.name!r}; configure the same model for both")
        faces = model.faces

    def progress(done: int) -> None:
        if done % 50 == 0:
            context.log.info(f"{session_id}: {done} samples written")

    try:
        samples = session_samples(captures.session_dir(session_id), calibration, landmarks, fit, manifest,
                                  config=shard_config, faces=faces)
        with tempfile.TemporaryDirectory() as tmp:
            shard_set = write_session_shards(samples, Path(tmp), session_id, shard_config, progress=progress)
            outcome = {
                "shards": len(shard_set.shards), "samples": shard_set.n_samples, "total_bytes": shard_set.total_bytes,
                "skipped": [[s.key, s.reason] for s in shard_set.skipped],
                "data_version": hashlib.sha256("".join(s.sha256 for s in shard_set.shards).encode()).hexdigest()[:16],
            }
            write_record(Path(tmp), fp, inputs, outcome)
            store.put_directory(tmp, target)
    except ShardInputError as exc:
        raise dg.Failure(f"session {session_id}: {exc}") from None
    return outcome
