"""Where captures come from and where derived artefacts go, as Dagster resources.

All are configured per deployment (``O2A_CAPTURES_ROOT``, ``O2A_STORAGE_URL``,
``O2A_FACE_MODEL*``), never hard-coded; the defaults point under ``./workspace_data``
and use the built-in face model.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from capture_schema.captures_root import RootEntry, scan_captures_root, session_fingerprint
from capture_schema.storage import Storage, local_path_of

DEFAULT_CAPTURES_ROOT = "workspace_data/captures"
DEFAULT_STORAGE_URL = "file://workspace_data/derived"


class CapturesResource(dg.ConfigurableResource):
    """The read-only captures root: one folder per session, each with a session.json.

    A local folder (or ``file://`` URL), or a bucket (``s3://bucket/prefix``, any fsspec URL):
    then sessions are read from a local mirror (``capture_schema.captures_mirror``, kept under
    ``O2A_CAPTURES_CACHE``), downloaded once per session and never changed in the bucket.
    """

    root: str = DEFAULT_CAPTURES_ROOT

    def _mirror(self):
        from capture_schema.captures_mirror import CapturesMirror

        return CapturesMirror(self.root)

    @property
    def is_local(self) -> bool:
        return local_path_of(self.root) is not None

    def exists(self) -> bool:
        path = local_path_of(self.root)
        return path.is_dir() if path is not None else self._mirror().exists()

    def root_path(self) -> Path:
        """The folder to scan: the root itself, or a bucket's mirrored outline (folders and session.json files)."""
        path = local_path_of(self.root)
        return path if path is not None else self._mirror().root_listing()

    def session_dir(self, session_id: str) -> Path:
        """A session's folder to read: in the root itself, or its up-to-date local mirror."""
        path = local_path_of(self.root)
        return path / session_id if path is not None else self._mirror().session(session_id)

    def fingerprint(self, session_id: str) -> str:
        """What changes when a session's files (or its shared calibration's) change, without reading images."""
        path = local_path_of(self.root)
        if path is None:
            return self._mirror().fingerprint(session_id)
        return session_fingerprint(path / session_id)

    def scan(self) -> list[RootEntry]:
        """Every entry of the captures root: sessions (partition keys), shared calibrations, and the rest with reasons."""
        return scan_captures_root(self.root_path())


class StorageResource(dg.ConfigurableResource):
    """The derived-artefact root as a URL (``file://`` by default, any fsspec scheme)."""

    url: str = DEFAULT_STORAGE_URL

    def storage(self) -> Storage:
        return Storage(self.url)


class FaceModelResource(dg.ConfigurableResource):
    """Which morphable model the fitting uses: ``builtin`` (default), ``ict`` or ``flame``.

    Licensed models are read from ``path`` (the ICT-FaceKit npz folder, or a FLAME
    ``.pkl`` plus its mediapipe ``embedding`` npz) and never copied anywhere.
    """

    kind: str = "builtin"
    path: str = ""
    embedding: str = ""

    def choice(self):
        """The configuration as the library takes it (``fitting.face_models.choice.FaceModelChoice``)."""
        from fitting.face_models.choice import FaceModelChoice

        return FaceModelChoice(self.kind, self.path, self.embedding)

    def load(self):
        return self.choice().load()


def _setting(variable: str, default: str) -> str | dg.EnvVar:
    """``dg.EnvVar(variable)`` when the deployment sets it (read at launch, shown by name in the UI), else ``default``."""
    return dg.EnvVar(variable) if variable in os.environ else default


def default_resources() -> dict[str, dg.ConfigurableResource]:
    return {
        "captures": CapturesResource(root=_setting("O2A_CAPTURES_ROOT", DEFAULT_CAPTURES_ROOT)),
        "storage": StorageResource(url=_setting("O2A_STORAGE_URL", DEFAULT_STORAGE_URL)),
        "face_model": FaceModelResource(kind=_setting("O2A_FACE_MODEL", "builtin"),
                                        path=_setting("O2A_FACE_MODEL_PATH", ""),
                                        embedding=_setting("O2A_FACE_MODEL_EMBEDDING", "")),
    }
