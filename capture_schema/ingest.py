"""Ingest one session: validate, hash, and record its manifest (or quarantine it).

Written under the storage root (paths from ``capture_schema.derived_layout``): the
manifest of the images that passed their own checks, every problem found (empty when
valid), a summary (counts and the valid flag), and a quarantine record present only
while the session is invalid.

A quarantined session keeps its manifest and problems: nothing is dropped, and
it is released automatically the next time it validates cleanly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from capture_schema import derived_layout as layout
from capture_schema.atomic import canonical_json
from capture_schema.layout import is_valid_id
from capture_schema.manifest import manifest_table, parquet_bytes, problems_table
from capture_schema.storage import Storage
from capture_schema.validation import ValidationReport, validate_session


@dataclass(frozen=True)
class IngestResult:
    session_id: str
    report: ValidationReport
    manifest_uri: str
    problems_uri: str
    quarantine_uri: str | None
    changed: bool

    @property
    def valid(self) -> bool:
        return self.report.valid


def summarize(report: ValidationReport, session_id: str) -> dict:
    info = report.session
    expected = len(info.expressions) * len(info.cameras) if info else 0
    codes: dict[str, int] = {}
    for problem in report.problems:
        codes[problem.code.value] = codes.get(problem.code.value, 0) + 1
    return {
        "session_id": session_id,
        "subject_id": info.subject_id if info else None,
        "valid": report.valid,
        "expected_images": expected,
        "manifest_images": len(report.images),
        "total_bytes": sum(r.bytes for r in report.images),
        "problem_counts": dict(sorted(codes.items())),
    }


def ingest_session(
    session_dir: str | os.PathLike[str],
    storage: Storage,
    *,
    deep: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> IngestResult:
    """Validate and hash one session, write its tables, quarantine it if invalid.

    Raises ``ValueError`` (nothing written) when the folder's name cannot be a session id.
    """
    session_dir = Path(os.path.abspath(session_dir))  # "S/.." or "." name the folder they lead to
    session_id = session_dir.name
    if not is_valid_id(session_id):
        raise ValueError(f"{session_dir} cannot be ingested: its folder name {session_id!r} is not a valid session "
                         "id ([A-Za-z0-9_-], 1-128 characters); rename the folder")
    report = validate_session(session_dir, deep=deep, progress=progress)
    subject_id = report.session.subject_id if report.session else ""
    summary = summarize(report, session_id)
    changed = storage.write_if_changed(layout.manifest(session_id),
                                       parquet_bytes(manifest_table(report, session_id, subject_id)))
    changed |= storage.write_if_changed(layout.session_problems(session_id),
                                        parquet_bytes(problems_table(report, session_id)))
    changed |= storage.write_if_changed(layout.ingest_summary(session_id), canonical_json(summary).encode())
    quarantine_uri = None
    if report.valid:
        storage.delete(layout.quarantine(session_id))
    else:
        record = {**summary, "problems": report.to_dict()["problems"], "session_dir": session_dir.name}
        storage.write_if_changed(layout.quarantine(session_id), canonical_json(record).encode())
        quarantine_uri = storage.uri(layout.quarantine(session_id))
    return IngestResult(
        session_id=session_id,
        report=report,
        manifest_uri=storage.uri(layout.manifest(session_id)),
        problems_uri=storage.uri(layout.session_problems(session_id)),
        quarantine_uri=quarantine_uri,
        changed=changed,
    )
