"""Shard one ingested, calibrated and fitted session from the storage root: the ``session_shards`` step.

``write`` turns samples into tars; this module is the step around it, shared by the
Dagster asset and ``o2a shard``: refuse a quarantined session, fingerprint the inputs
(manifest, the landmark and fit steps' fingerprints, the calibration, the settings,
OpenCV and, with masks, the face model) and reuse the published shards when they
match (``capture_schema.reuse``), else read the upstream artefacts, write the set in a
temporary folder and publish it whole with its ``inputs.json`` into
``derived_layout.shards_dir``, so a reader sees the previous set or the new one.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from capture_schema import derived_layout as layout
from capture_schema.reuse import (MissingUpstreamError, fingerprint, library_version, recorded_fingerprint,
                                  recorded_outcome, require_not_quarantined, stored_digest, write_record)
from capture_schema.storage import Storage
from fitting.calibration.session import read_session_calibration, session_calibration_digest
from fitting.face_models.choice import FaceModelChoice
from training.shards.write import ShardConfig, ShardInputError

STEP = "session_shards"
#: The step logs progress every this many samples.
PROGRESS_EVERY = 50


def shard_config(max_mb: float, max_samples: int, train_resolution: int, masks: bool,
                 source: str = "settings") -> ShardConfig:
    """The ``ShardConfig`` of the step's settings as the asset and the CLI take them (0 px: no training image).

    Validated by ``training.settings`` like every override; raises its ``SettingsError`` (a ``ValueError``)
    naming ``source`` and the field for settings no shard set can have."""
    from training.settings import apply_overrides

    return apply_overrides(ShardConfig(), {"max_bytes": int(max_mb * 2**20), "max_samples": max_samples,
                                           "train_resolution": train_resolution or None, "masks": masks}, source)


def _quiet(_: str) -> None:
    pass


def shard_session(store: Storage, session_dir: str | os.PathLike[str], session_id: str, config: ShardConfig,
                  face_model: FaceModelChoice = FaceModelChoice(), log: Callable[[str], None] = _quiet
                  ) -> dict[str, Any]:
    """Publish the session's shards (or keep them, when made from the same inputs); the outcome.

    The outcome has ``shards``, ``samples``, ``total_bytes``, ``skipped`` ([key, reason]
    pairs), ``data_version`` (a digest of the shards' sha256s) and ``reused``. Raises
    ``MissingUpstreamError`` (quarantined session, or an upstream artefact absent, naming
    the steps to run first) or ``ShardInputError`` (the face model, or the captures since
    ingest), with the message the asset fails with.
    """
    require_not_quarantined(store, session_id)
    target = layout.shards_dir(session_id)
    upstream = [recorded_fingerprint(store, layout.landmarks_dir(session_id)),
                recorded_fingerprint(store, layout.face_fits_dir(session_id))]
    try:
        inputs = {"manifest": stored_digest(store, layout.manifest(session_id)), "landmarks": upstream[0],
                  "fit": upstream[1], "calibration": session_calibration_digest(store, session_id),
                  "config": asdict(config), "opencv": library_version("opencv-contrib-python"),
                  "face_model": face_model.identity() if config.masks else None}
    except FileNotFoundError as exc:
        # the manifest, or the calibration.json the session's pointer names (removed since calibration ran)
        step = "session_manifest" if not store.exists(layout.manifest(session_id)) else "camera_calibration"
        raise MissingUpstreamError(f"session {session_id}: an input is missing ({exc}); materialise "
                                   f"{step} first", (step,)) from None
    fp = fingerprint(STEP, inputs)
    outcome = recorded_outcome(store, target, fp) if all(upstream) else None
    if outcome is not None:
        log(f"{session_id}: manifest, landmarks, fit, calibration and settings unchanged since the "
            f"shards at {store.uri(target)} were written: reusing them")
        return {**outcome, "reused": True}
    outcome = _write_shards(store, Path(session_dir), session_id, config, face_model, fp, inputs, log)
    return {**outcome, "reused": False}


def _write_shards(store: Storage, session_dir: Path, session_id: str, config: ShardConfig,
                  face_model: FaceModelChoice, fp: str, inputs: dict, log: Callable[[str], None]) -> dict:
    """Write the shards, publish them with ``shards.json`` and ``inputs.json`` as one folder; the outcome."""
    import pyarrow.parquet as pq

    from fitting.landmarks.store import read_landmarks_zarr
    from fitting.face_fit.session import read_session_fit
    from training.shards.write import session_samples, write_session_shards

    try:
        manifest = pq.read_table(io.BytesIO(store.read_bytes(layout.manifest(session_id))))
        with store.local_directory(layout.landmarks_zarr(session_id)) as path:
            landmarks = read_landmarks_zarr(path)
        with store.local_directory(layout.fit_zarr(session_id)) as path:
            fit = read_session_fit(path)
    except FileNotFoundError as exc:
        raise MissingUpstreamError(f"session {session_id}: an input is missing ({exc}); materialise session_manifest, "
                                   "face_landmarks and face_fits first",
                                   ("session_manifest", "face_landmarks", "face_fits")) from None
    calibration = read_session_calibration(store, session_id)
    faces = None
    if config.train_resolution and config.masks:
        try:
            model = face_model.load()
        except (OSError, ValueError) as exc:
            raise ShardInputError(f"face model {face_model.kind!r} could not be loaded: {exc}") from None
        if model.name != fit.fit.model_name:
            raise ShardInputError(f"the fit was made with model {fit.fit.model_name!r} but the face_model resource "
                                  f"is {model.name!r}; configure the same model for both")
        faces = model.faces

    def progress(done: int) -> None:
        if done % PROGRESS_EVERY == 0:
            log(f"{session_id}: {done} samples written")

    try:
        samples = session_samples(session_dir, calibration, landmarks, fit, manifest, config=config, faces=faces)
        with tempfile.TemporaryDirectory() as tmp:
            shard_set = write_session_shards(samples, Path(tmp), session_id, config, progress=progress)
            outcome = {
                "shards": len(shard_set.shards), "samples": shard_set.n_samples, "total_bytes": shard_set.total_bytes,
                "skipped": [[s.key, s.reason] for s in shard_set.skipped],
                "data_version": hashlib.sha256("".join(s.sha256 for s in shard_set.shards).encode()).hexdigest()[:16],
            }
            write_record(Path(tmp), fp, inputs, outcome)
            store.put_directory(tmp, layout.shards_dir(session_id))
    except ShardInputError as exc:
        raise type(exc)(f"session {session_id}: {exc}") from None
    return outcome
