"""Watch the captures root: add a partition per new session, request its run, account for everything else.

The run key carries a fingerprint of the session's files and of the calibration
folder it uses (names, sizes, mtimes), so an unchanged session is never re-run and
a changed one, or one whose shared calibration changed, is. Entries of the root
that are not sessions are logged with their reason and listed by the
``capture_folders`` asset, which the sensor refreshes whenever the root's listing changes.
"""


import hashlib
import json
import os
from pathlib import Path

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from capture_schema.captures_root import RootEntry, session_ids, unusable
from capture_schema.session import read_session_fields
from pipelines.partitions import sessions_partitions, unregistered_sessions
from pipelines.resources import CapturesResource


def _fingerprint_tree(digest: "hashlib._Hash", folder: Path, label: str) -> None:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            try:
                st = path.lstat()
            except OSError:
                continue
            digest.update(f"{label}/{path.relative_to(folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())


def session_fingerprint(session_dir: Path) -> str:
    """A cheap change detector: every file's relative path, size and mtime (no image reads),
    including the files of a calibration folder shared from outside the session."""
    digest = hashlib.sha256()
    _fingerprint_tree(digest, session_dir, ".")
    calibration = read_session_fields(session_dir).calibration
    if calibration is not None:
        calib_dir = (session_dir / calibration).resolve()
        if not calib_dir.is_relative_to(session_dir.resolve()) and calib_dir.is_dir():
            _fingerprint_tree(digest, calib_dir, calibration)
    return digest.hexdigest()[:16]


def root_listing_key(entries: list[RootEntry]) -> str:
    """A fingerprint of what the captures root holds and how each entry was classified."""
    return hashlib.sha256(json.dumps([e.to_dict() for e in entries]).encode()).hexdigest()[:16]


def build_session_sensor(session_job: UnresolvedAssetJobDefinition,
                         scan_job: UnresolvedAssetJobDefinition) -> dg.SensorDefinition:
    """The sensor, requesting ``session_job`` per session partition and ``scan_job`` when the root changes."""
    job_name, scan_job_name = session_job.name, scan_job.name

    @dg.sensor(name="new_capture_sessions", jobs=[session_job, scan_job], minimum_interval_seconds=60,
               description="Adds a partition per new session folder and requests its run; logs and lists "
                           "every entry of the captures root that is not a session.")
    def new_capture_sessions(context: dg.SensorEvaluationContext, captures: CapturesResource) -> dg.SensorResult:
        entries = captures.scan()
        listing = root_listing_key(entries)
        runs = []
        if listing != context.cursor:
            for entry in unusable(entries):
                context.log.warning(f"{entry.name!r} under the captures root is not a session: {entry.reason}")
            runs.append(dg.RunRequest(job_name=scan_job_name, run_key=f"captures-root:{listing}"))
        good = session_ids(entries)
        new = unregistered_sessions(context.instance, good)
        runs += [
            dg.RunRequest(job_name=job_name, partition_key=sid,
                          run_key=f"{sid}:{session_fingerprint(captures.session_dir(sid))}")
            for sid in good
        ]
        return dg.SensorResult(
            run_requests=runs,
            cursor=listing,
            dynamic_partitions_requests=[sessions_partitions.build_add_request(new)] if new else [],
        )

    return new_capture_sessions
