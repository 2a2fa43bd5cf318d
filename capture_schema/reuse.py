"""Skip a session step whose inputs have not changed since it last ran.

Re-materialising unchanged sessions must not spend ~40 s each recomputing
landmarks, fits and shards into identical bytes. Each expensive step fingerprints
what its output depends on (the digests of its input files, its config, the code
version below and the versions of the libraries that shape the result) and
publishes ``inputs.json`` *inside* its output folder, with a small summary of the
outcome it reports. Because the folder is published whole, ``inputs.json`` can
never describe other outputs than the ones beside it. When the fingerprint of a
new run matches, the step rebuilds its result from that summary and computes
nothing. The fingerprint is also the step's Dagster data version, so downstream
lineage changes exactly when the bytes can.

The rule lives here, below every step, so a step gives the same answer whether
Dagster or the ``o2a`` CLI runs it. ``MissingUpstreamError`` and
``require_not_quarantined`` are what a session step raises when it cannot start.

Bump a step's entry in ``CODE_VERSIONS`` whenever a change to its code changes its output.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

from capture_schema import derived_layout as layout
from capture_schema.atomic import canonical_json
from capture_schema.storage import Storage

#: Also the assets' Dagster ``code_version``: bumping one marks that step stale everywhere.
CODE_VERSIONS = {"face_landmarks": "1", "face_fits": "1", "session_shards": "2"}  # shards 2: head proxy in the mask seed


class MissingUpstreamError(ValueError):
    """A session step cannot start: what an earlier step writes is absent (or the session is quarantined).

    ``steps`` names the steps (Dagster asset names) to run first, so a caller can add how
    to run them (the CLI names its commands) without parsing the message.
    """

    def __init__(self, message: str, steps: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.steps = tuple(steps)


def require_not_quarantined(store: Storage, session_id: str) -> None:
    """Refuse to work on a session whose ingest found it invalid (its quarantine record is present)."""
    if store.exists(layout.quarantine(session_id)):
        record = store.uri(layout.quarantine(session_id))
        raise MissingUpstreamError(f"session {session_id} is quarantined (see {record}); fix it and re-materialise "
                                   "session_manifest first", ("session_manifest",))


def library_version(name: str) -> str:
    """The installed version of a distribution that shapes a step's output (e.g. mediapipe)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def fingerprint(step: str, inputs: Mapping[str, Any]) -> str:
    """A digest of everything ``step``'s output depends on (``inputs`` must be JSON-serialisable)."""
    document = canonical_json({"step": step, "code_version": CODE_VERSIONS[step], "inputs": dict(inputs)})
    return hashlib.sha256(document.encode()).hexdigest()[:24]


def stored_digest(store: Storage, relpath: str) -> str:
    """sha256 of one stored file (a manifest, a calibration.json): the identity of an input."""
    return hashlib.sha256(store.read_bytes(relpath)).hexdigest()


def local_file_identity(path: str | os.PathLike[str] | None) -> Any:
    """Size and mtime of a model file, or of every file in a model folder (no reads: models are large)."""
    if not path:
        return None
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    out = []
    for p in files:
        try:
            st = p.stat()
        except OSError:
            continue
        out.append([p.name, st.st_size, st.st_mtime_ns])
    return out


def _read_record(store: Storage, target: str) -> dict | None:
    rel = layout.inputs_record(target)
    try:
        if not store.exists(rel):
            return None
        record = json.loads(store.read_bytes(rel))
    except (OSError, ValueError):
        return None  # unreadable: recompute
    return record if isinstance(record, dict) else None


def recorded_outcome(store: Storage, target: str, fp: str) -> dict | None:
    """The outcome summary published with ``target`` when it was made from the same inputs, else None."""
    record = _read_record(store, target)
    if record is None or record.get("fingerprint") != fp or not isinstance(record.get("outcome"), dict):
        return None
    return record["outcome"]


def recorded_fingerprint(store: Storage, target: str) -> str | None:
    """The fingerprint ``target`` was made with (an upstream step's identity as an input), or None."""
    record = _read_record(store, target)
    return None if record is None else record.get("fingerprint")


def write_record(folder: Path, fp: str, inputs: Mapping[str, Any], outcome: Mapping[str, Any]) -> None:
    """Write ``inputs.json`` into the folder about to be published."""
    (Path(folder) / layout.INPUTS_FILE).write_text(canonical_json({"fingerprint": fp, "inputs": dict(inputs),
                                                            "outcome": dict(outcome)}))
