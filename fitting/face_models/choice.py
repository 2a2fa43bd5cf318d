"""A face model as configured (kind and files), apart from the loaded model.

A step needs two things from the configuration: the model, and what names it as an
input of the step's reuse fingerprint (``capture_schema.reuse``). The second must
not load or read the files (ICT-FaceKit is hundreds of MB), so it is their size
and mtime. Both the Dagster resource and the CLI flags become one of these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from capture_schema.reuse import local_file_identity
from fitting.face_models import load_face_model
from fitting.face_models.base import FaceModel


def face_model_identity(kind: str, path: str | None = "", embedding: str | None = "") -> dict[str, Any]:
    """What names the face model as an input: its kind and the files it is read from."""
    return {"kind": kind, "path": local_file_identity(path), "embedding": local_file_identity(embedding)}


@dataclass(frozen=True)
class FaceModelChoice:
    """``kind`` (builtin, ict, flame) and, for licensed models, the files it is read from ("" = none)."""

    kind: str = "builtin"
    path: str = ""
    embedding: str = ""

    def load(self) -> FaceModel:
        return load_face_model(self.kind, self.path or None, self.embedding or None)

    def identity(self) -> dict[str, Any]:
        return face_model_identity(self.kind, self.path, self.embedding)
