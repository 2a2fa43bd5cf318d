"""Watch the captures root: add a partition per new session, request its run, account for everything else.

The run key carries a fingerprint of the session's files and of the calibration
folder it uses (names, sizes, mtimes; in a bucket, sizes and ETags), so an unchanged session is never re-run and
a changed one, or one whose shared calibration changed, is. Entries of the root
that are not sessions are logged with their reason and listed by the
``capture_folders`` asset, which the sensor refreshes whenever the root's listing changes.
"""


import hashlib
import json
import os

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from capture_schema.captures_root import RootEntry, session_ids, unusable
from pipelines.partitions import sessions_partitions, unregistered_sessions
from pipelines.resources import CapturesResource


def sensor_interval() -> int:
    """Seconds between two evaluations of each sensor: ``O2A_SENSOR_INTERVAL_SECONDS``, default 60."""
    return int(os.environ.get("O2A_SENSOR_INTERVAL_SECONDS", "60"))


def build_automation_sensor() -> dg.AutomationConditionSensorDefinition:
    """Evaluates the assets' automation conditions (``dataset_index`` is eager). Stopped until a deployment
    starts it (``dagster sensor start index_on_new_shards``), like ``new_capture_sessions``."""
    return dg.AutomationConditionSensorDefinition(
        "index_on_new_shards", target=dg.AssetSelection.all(), minimum_interval_seconds=sensor_interval(),
        description="Refreshes every asset whose automation condition asks for it (the dataset index when "
                    "a session's shards change).")


def root_listing_key(entries: list[RootEntry]) -> str:
    """A fingerprint of what the captures root holds and how each entry was classified."""
    return hashlib.sha256(json.dumps([e.to_dict() for e in entries]).encode()).hexdigest()[:16]


def build_session_sensor(session_job: UnresolvedAssetJobDefinition,
                         scan_job: UnresolvedAssetJobDefinition) -> dg.SensorDefinition:
    """The sensor, requesting ``session_job`` per session partition and ``scan_job`` when the root changes."""
    job_name, scan_job_name = session_job.name, scan_job.name

    @dg.sensor(name="new_capture_sessions", jobs=[session_job, scan_job], minimum_interval_seconds=sensor_interval(),
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
                          run_key=f"{sid}:{captures.fingerprint(sid)}")
            for sid in good
        ]
        return dg.SensorResult(
            run_requests=runs,
            cursor=listing,
            dynamic_partitions_requests=[sessions_partitions.build_add_request(new)] if new else [],
        )

    return new_capture_sessions
