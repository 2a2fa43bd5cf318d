"""``face_landmarks``: mediapipe's 478 landmarks in every image of a session.

Thin by design: the work is ``fitting.landmarks``. The zarr store and the
per-image Parquet summary go into ``derived_layout.landmarks_dir(session_id)``.
"""

import hashlib
import tempfile
from pathlib import Path

import dagster as dg

from capture_schema import derived_layout as layout
from capture_schema.layout import SESSION_FILE
from capture_schema.manifest import parquet_bytes
from capture_schema.reuse import (CODE_VERSIONS, fingerprint, library_version, recorded_outcome, stored_digest,
                                  write_record)
from pipelines import pools
from pipelines.assets.ingest import session_manifest
from pipelines.partitions import sessions_partitions
from pipelines.resources import CapturesResource, StorageResource


class LandmarksConfig(dg.Config):
    """How to run the detector."""

    workers: int = 0
    """Detector processes (one FaceMesh each); 0 = one per core, at most 4."""
    mirror_check: bool = True
    """Also detect on the mirrored image: gives the confidence and fixes one-sided failures."""
    min_detected_fraction: float = 0.5
    """The ``faces_found`` check fails when fewer images than this have a face.

    Measured: mediapipe returns a face in 160-169 of 169 images of simulated sessions
    (built-in and ICT-FaceKit faces; tests/test_face_assets.py) and, per PITFALLS, in every
    view from -70 to +70 degrees even where its landmarks are wrong, so on a real session
    the fraction sits near 1 and wrong landmarks are the fit gates' business. This check is
    for sessions that hold no face in most images (lens caps, an empty chair, a board
    folder copied as captures): below one half, nothing downstream is meaningful."""


@dg.asset(
    partitions_def=sessions_partitions,
    deps=[session_manifest],
    group_name="fitting",
    kinds={"mediapipe", "zarr"},
    pool=pools.LANDMARKS,
    code_version=CODE_VERSIONS["face_landmarks"],
    check_specs=[dg.AssetCheckSpec("faces_found", asset="face_landmarks", blocking=True,
                                   description="a face was found in at least min_detected_fraction of the images")],
)
def face_landmarks(
    context: dg.AssetExecutionContext, config: LandmarksConfig, captures: CapturesResource, storage: StorageResource
) -> dg.MaterializeResult:
    """478 mediapipe landmarks per image ([expression, camera, 478, 2] pixels), detection mask and confidence."""
    session_id = context.partition_key
    store = storage.storage()
    target = layout.landmarks_dir(session_id)
    inputs = {"manifest": stored_digest(store, layout.manifest(session_id)),
              "session_json": hashlib.sha256((captures.session_dir(session_id) / SESSION_FILE).read_bytes()).hexdigest(),
              "mirror_check": config.mirror_check, "mediapipe": library_version("mediapipe")}
    fp = fingerprint("face_landmarks", inputs)
    outcome = recorded_outcome(store, target, fp)
    reused = outcome is not None
    if reused:
        context.log.info(f"{session_id}: images and settings unchanged since the landmarks at {store.uri(target)} "
                         "were detected: reusing them")
    else:
        outcome = _detect(context, config, captures, store, session_id, target, fp, inputs)
    fraction = outcome["faces_found"] / max(outcome["images"], 1)
    check = dg.AssetCheckResult(
        check_name="faces_found", passed=fraction >= config.min_detected_fraction,
        metadata={"detected_fraction": round(fraction, 4), "min_detected_fraction": config.min_detected_fraction},
    )
    return dg.MaterializeResult(
        metadata={
            "images": outcome["images"],
            "faces_found": outcome["faces_found"],
            "low_confidence": outcome["low_confidence"],
            "no_face": dg.MetadataValue.md("\n".join(f"- {m}" for m in outcome["no_face"]) or "none"),
            "landmarks_zarr": dg.MetadataValue.path(store.uri(layout.landmarks_zarr(session_id))),
            "summary": dg.MetadataValue.path(store.uri(layout.landmarks_summary(session_id))),
            "reused": reused,
        },
        check_results=[check],
        data_version=dg.DataVersion(fp),
    )


def _detect(context: dg.AssetExecutionContext, config: LandmarksConfig, captures: CapturesResource, store,
            session_id: str, target: str, fp: str, inputs: dict) -> dict:
    """Detect, publish the zarr store, the summary and ``inputs.json`` together; the outcome summary."""
    from fitting.landmarks.detect import detect_session, landmark_summary_table
    from fitting.landmarks.store import write_landmarks_zarr

    step = {"next": 0}

    def progress(done: int, total: int) -> None:
        if done * 4 >= step["next"] * total:
            context.log.info(f"landmarks: {done}/{total} images")
            step["next"] += 1

    found = detect_session(captures.session_dir(session_id), workers=config.workers or None,
                           mirror=config.mirror_check, progress=progress)
    outcome = {
        "images": int(found.detected.size),
        "faces_found": int(found.detected.sum()),
        "low_confidence": int((found.detected & (found.confidence < 0.5)).sum()),
        "no_face": [f"{found.expressions[e]}/{found.cameras[c]}" for e, c in zip(*(~found.detected).nonzero())],
    }
    with tempfile.TemporaryDirectory() as tmp:
        write_landmarks_zarr(found, Path(tmp) / layout.LANDMARKS_ZARR)
        (Path(tmp) / layout.LANDMARKS_SUMMARY_FILE).write_bytes(parquet_bytes(landmark_summary_table(found)))
        write_record(Path(tmp), fp, inputs, outcome)
        store.put_directory(tmp, target)
    return outcome
