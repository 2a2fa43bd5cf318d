"""Watch the captures root: add a partition per new session and request its ingest run.

The run key carries a fingerprint of the session's files (names, sizes, mtimes),
so an unchanged session is never re-run and a changed one is.
"""


import hashlib
import os
from pathlib import Path

import dagster as dg

from pipelines.partitions import sessions_partitions, unregistered_sessions
from pipelines.resources import CapturesResource


def session_fingerprint(session_dir: Path) -> str:
    """A cheap change detector: every file's relative path, size and mtime (no reads)."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(session_dir):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            try:
                st = path.lstat()
            except OSError:
                continue
            digest.update(f"{path.relative_to(session_dir)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def build_session_sensor(job_name: str) -> dg.SensorDefinition:
    @dg.sensor(name="new_capture_sessions", job_name=job_name, minimum_interval_seconds=60,
               description="Adds a partition per new session folder and requests its ingest run.")
    def new_capture_sessions(context: dg.SensorEvaluationContext, captures: CapturesResource) -> dg.SensorResult:
        good, bad = captures.scan()
        for name in bad:
            context.log.warning(f"session folder {name!r} is not a valid id ([A-Za-z0-9_-]); rename it to ingest it")
        new = unregistered_sessions(context.instance, good)
        runs = [
            dg.RunRequest(partition_key=sid, run_key=f"{sid}:{session_fingerprint(captures.session_dir(sid))}")
            for sid in good
        ]
        if not runs:
            return dg.SensorResult(skip_reason=f"no sessions under {captures.root_path()}")
        return dg.SensorResult(
            run_requests=runs,
            dynamic_partitions_requests=[sessions_partitions.build_add_request(new)] if new else [],
        )

    return new_capture_sessions
