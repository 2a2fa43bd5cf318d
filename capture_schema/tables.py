"""Every table the pipeline writes, declared once as a pyarrow schema.

Later stages add their schemas here, so a reader anywhere can check what it got.
"""

from __future__ import annotations

import pyarrow as pa

#: One row per image of a session's grid.
MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("subject_id", pa.string(), nullable=False),
        pa.field("session_id", pa.string(), nullable=False),
        pa.field("expression", pa.string(), nullable=False),
        pa.field("camera_id", pa.string(), nullable=False),
        pa.field("relative_path", pa.string(), nullable=False),
        pa.field("bytes", pa.int64(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("format", pa.string(), nullable=False),
    ],
    metadata={"description": "one row per captured image; relative_path is relative to the session folder"},
)

#: One row per validation problem of a session (empty for a valid session).
PROBLEMS_SCHEMA = pa.schema(
    [
        pa.field("session_id", pa.string(), nullable=False),
        pa.field("code", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
    ],
    metadata={"description": "validation problems; codes are capture_schema.problems.ProblemCode values"},
)

#: One row per image of a session's grid: what the face-landmark detector found there.
LANDMARK_SUMMARY_SCHEMA = pa.schema(
    [
        pa.field("session_id", pa.string(), nullable=False),
        pa.field("expression", pa.string(), nullable=False),
        pa.field("camera_id", pa.string(), nullable=False),
        pa.field("detected", pa.bool_(), nullable=False),
        pa.field("confidence", pa.float32(), nullable=False),
        pa.field("mirror_nme", pa.float32(), nullable=False),
        pa.field("n_landmarks", pa.int16(), nullable=False),
        pa.field("bbox_x0", pa.float32(), nullable=False),
        pa.field("bbox_y0", pa.float32(), nullable=False),
        pa.field("bbox_x1", pa.float32(), nullable=False),
        pa.field("bbox_y1", pa.float32(), nullable=False),
        pa.field("eye_distance_px", pa.float32(), nullable=False),
    ],
    metadata={
        "description": "face landmarks per image; pixel coordinates in the OpenCV convention (pixel centre at "
        "integer coordinates); bbox_* and eye_distance_px (outer eye corners, mediapipe ids 33 and 263) are NaN "
        "and n_landmarks 0 where no face was detected; mirror_nme is NaN where the mirrored cross-check did not run"
    },
)

#: One row per image of a session's grid: how well the fitted face model explains its landmarks.
FACE_FIT_VIEWS_SCHEMA = pa.schema(
    [
        pa.field("session_id", pa.string(), nullable=False),
        pa.field("expression", pa.string(), nullable=False),
        pa.field("camera_id", pa.string(), nullable=False),
        pa.field("view_status", pa.string(), nullable=False),
        pa.field("frame_status", pa.string(), nullable=False),
        pa.field("rmse_px", pa.float32(), nullable=False),
        pa.field("median_px", pa.float32(), nullable=False),
        pa.field("n_landmarks", pa.int16(), nullable=False),
    ],
    metadata={
        "description": "landmark reprojection error of the fitted 3DMM per view; view_status is used, not_detected, "
        "outlier (detection contradicted the other views and was left out) or frame_not_fitted; frame_status is "
        "fitted, too_few_views (fitted from fewer views than configured) or not_fitted; errors are NaN where the "
        "view has no detection"
    },
)

#: One row per sample of the dataset: where it is stored and which split its subject is in.
DATASET_INDEX_SCHEMA = pa.schema(
    [
        pa.field("shard_url", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("subject_id", pa.string(), nullable=False),
        pa.field("session_id", pa.string(), nullable=False),
        pa.field("expression", pa.string(), nullable=False),
        pa.field("camera_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("shard_bytes", pa.int64(), nullable=False),
    ],
    metadata={"description": "every sample of every session shard; key is session_id/expression/camera_id; "
              "split (train, validation, test) is a function of subject_id alone"},
)

#: One row per identity code a few-shot run adapted (``codes.parquet`` beside the few-shot scores): the
#: latent-space coverage metric (``training.latent``) measures where new subjects land among the training codes.
ADAPTED_CODES_SCHEMA = pa.schema(
    [
        pa.field("subject_id", pa.string(), nullable=False),
        pa.field("condition", pa.string(), nullable=False),
        pa.field("method", pa.string(), nullable=False),
        pa.field("k", pa.int32(), nullable=False),
        pa.field("code", pa.list_(pa.float32()), nullable=False),
        pa.field("prior_codes_sha256", pa.string(), nullable=False),
    ],
    metadata={"description": "adapted identity codes: latent_only is stage 1 (prior frozen, the prior's own code "
                             "space), prior / prior_fixed_geometry after stage 2 (weights adapted too); "
                             "prior_codes_sha256 identifies the prior's training-code table they were adapted from"},
)
