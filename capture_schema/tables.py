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
