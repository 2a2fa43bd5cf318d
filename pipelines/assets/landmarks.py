"""``face_landmarks``: mediapipe's 478 landmarks in every image of a session.

Thin by design: the work is ``fitting.landmarks``. The zarr store and the
per-image Parquet summary go under ``landmarks/<session_id>/``.
"""

import tempfile
from pathlib import Path

import dagster as dg

from capture_schema.manifest import parquet_bytes
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
    """The ``faces_found`` check fails when fewer images than this have a face."""


def landmarks_relpath(session_id: str) -> str:
    return f"landmarks/{session_id}"


@dg.asset(
    partitions_def=sessions_partitions,
    deps=[session_manifest],
    group_name="fitting",
    kinds={"mediapipe", "zarr"},
    check_specs=[dg.AssetCheckSpec("faces_found", asset="face_landmarks", blocking=True,
                                   description="a face was found in at least min_detected_fraction of the images")],
)
def face_landmarks(
    context: dg.AssetExecutionContext, config: LandmarksConfig, captures: CapturesResource, storage: StorageResource
) -> dg.MaterializeResult:
    """478 mediapipe landmarks per image ([expression, camera, 478, 2] pixels), detection mask and confidence."""
    from fitting.landmarks import detect_session, landmark_summary_table, write_landmarks_zarr

    session_id = context.partition_key
    step = {"next": 0}

    def progress(done: int, total: int) -> None:
        if done * 4 >= step["next"] * total:
            context.log.info(f"landmarks: {done}/{total} images")
            step["next"] += 1

    found = detect_session(captures.session_dir(session_id), workers=config.workers or None,
                           mirror=config.mirror_check, progress=progress)
    store = storage.storage()
    target = landmarks_relpath(session_id)
    with tempfile.TemporaryDirectory() as tmp:
        write_landmarks_zarr(found, Path(tmp) / "landmarks.zarr")
        (Path(tmp) / "summary.parquet").write_bytes(parquet_bytes(landmark_summary_table(found)))
        store.put_directory(tmp, target)
    n_images = found.detected.size
    n_found = int(found.detected.sum())
    low = int((found.detected & (found.confidence < 0.5)).sum())
    missing = [f"{found.expressions[e]}/{found.cameras[c]}" for e, c in zip(*(~found.detected).nonzero())]
    fraction = n_found / max(n_images, 1)
    check = dg.AssetCheckResult(
        check_name="faces_found", passed=fraction >= config.min_detected_fraction,
        metadata={"detected_fraction": round(fraction, 4), "min_detected_fraction": config.min_detected_fraction},
    )
    return dg.MaterializeResult(
        metadata={
            "images": n_images,
            "faces_found": n_found,
            "low_confidence": low,
            "no_face": dg.MetadataValue.md("\n".join(f"- {m}" for m in missing) or "none"),
            "landmarks_zarr": dg.MetadataValue.path(store.uri(f"{target}/landmarks.zarr")),
            "summary": dg.MetadataValue.path(store.uri(f"{target}/summary.parquet")),
        },
        check_results=[check],
    )
