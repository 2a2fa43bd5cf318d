"""``session_manifest``: validate, hash and record one session (or quarantine it).

Thin by design: all the work is ``capture_schema.ingest.ingest_session``. The
blocking checks stop downstream assets for a session that failed validation,
while its manifest and problems stay recorded for a person to look at.
"""


import hashlib

import dagster as dg

from capture_schema import derived_layout as layout
from capture_schema.atomic import canonical_json
from capture_schema.captures_root import SESSION, session_ids, unusable
from capture_schema.ingest import IngestResult, ingest_session
from capture_schema.problems import (
    CALIBRATION_CODES,
    GRID_CODES,
    IMAGE_INTEGRITY_CODES,
    SESSION_FILE_CODES,
    Problem,
)
from pipelines.partitions import sessions_partitions
from pipelines.resources import CapturesResource, StorageResource

PREVIEW_ROWS = 8

CHECKS = {
    "grid_complete": (SESSION_FILE_CODES | GRID_CODES, "session.json is valid and every (expression, camera) cell holds exactly one image of the camera's size"),
    "images_intact": (IMAGE_INTEGRITY_CODES, "no image is corrupt or truncated, and no two cells hold the same bytes"),
    "calibration_present": (CALIBRATION_CODES, "the calibration folder has a valid board.json and board images for "
                            "every camera, or the imported calibration file reads and covers every camera at its size"),
}


class IngestConfig(dg.Config):
    """Run-time options for ingest."""

    deep_decode: bool = False
    """Also decode every image (about 20x slower than hashing; structural checks always run)."""


def _problems_markdown(problems: list[Problem], limit: int = 20) -> str:
    if not problems:
        return "No problems found."
    lines = ["| code | path | message |", "|---|---|---|"]
    for p in sorted(problems)[:limit]:
        lines.append(f"| `{p.code.value}` | `{p.path}` | {p.message.replace('|', '/')} |")
    if len(problems) > limit:
        lines.append(f"\n... and {len(problems) - limit} more (see the problems table).")
    return "\n".join(lines)


def _manifest_preview(result: IngestResult) -> str:
    rows = sorted(result.report.images, key=lambda r: (r.expression, r.camera_id))[:PREVIEW_ROWS]
    lines = ["| expression | camera | size | bytes | sha256 |", "|---|---|---|---|---|"]
    lines += [f"| {r.expression} | {r.camera_id} | {r.width}x{r.height} | {r.bytes} | `{r.sha256[:12]}` |" for r in rows]
    return "\n".join(lines)


def _check_results(result: IngestResult) -> list[dg.AssetCheckResult]:
    out = []
    for name, (codes, description) in CHECKS.items():
        found = [p for p in result.report.problems if p.code in codes]
        out.append(
            dg.AssetCheckResult(
                check_name=name,
                passed=not found,
                severity=dg.AssetCheckSeverity.ERROR,
                description=description,
                metadata={"problems": len(found), "details": dg.MetadataValue.md(_problems_markdown(found))},
            )
        )
    return out


@dg.asset(
    partitions_def=sessions_partitions,
    group_name="ingest",
    kinds={"parquet"},
    check_specs=[dg.AssetCheckSpec(name, asset="session_manifest", blocking=True, description=desc)
                 for name, (_, desc) in CHECKS.items()],
)
def session_manifest(
    context: dg.AssetExecutionContext, config: IngestConfig, captures: CapturesResource, storage: StorageResource
) -> dg.MaterializeResult:
    """The session's image manifest (Parquet) after validation; invalid sessions are quarantined."""
    session_id = context.partition_key
    session_dir = captures.session_dir(session_id)
    context.log.info(f"validating and hashing {session_dir}")

    def progress(done: int, total: int) -> None:
        if done == total or done % 50 == 0:
            context.log.debug(f"{session_id}: {done}/{total} images hashed")

    result = ingest_session(session_dir, storage.storage(), deep=config.deep_decode, progress=progress)
    report = result.report
    if result.valid:
        context.log.info(f"{session_id}: valid, {len(report.images)} images")
    else:
        context.log.warning(f"{session_id}: quarantined with {len(report.problems)} problem(s); see {result.quarantine_uri}")
    version = hashlib.sha256("".join(sorted(r.sha256 for r in report.images)).encode()).hexdigest()[:16]
    metadata = {
        "valid": report.valid,
        "images": len(report.images),
        "expected_images": len(report.session.expressions) * len(report.session.cameras) if report.session else 0,
        "problems": len(report.problems),
        "total_mb": round(sum(r.bytes for r in report.images) / 1e6, 3),
        "manifest": dg.MetadataValue.path(result.manifest_uri),
        "problems_table": dg.MetadataValue.path(result.problems_uri),
        "preview": dg.MetadataValue.md(_manifest_preview(result)),
        "problems_found": dg.MetadataValue.md(_problems_markdown(report.problems)),
    }
    if result.quarantine_uri:
        metadata["quarantine"] = dg.MetadataValue.path(result.quarantine_uri)
    return dg.MaterializeResult(metadata=metadata, check_results=_check_results(result), data_version=dg.DataVersion(version))


@dg.asset(
    group_name="ingest",
    kinds={"json"},
    check_specs=[dg.AssetCheckSpec("every_folder_is_a_session", asset="capture_folders",
                                   description="every entry of the captures root is a session or a shared "
                                               "calibration in use (a warning: the others are listed with reasons)")],
)
def capture_folders(context: dg.AssetExecutionContext, captures: CapturesResource,
                    storage: StorageResource) -> dg.MaterializeResult:
    """Every entry of the captures root and what it is: a session, a shared calibration, or not a session and why."""
    entries = captures.scan()
    store = storage.storage()
    rel = layout.CAPTURES_ROOT_LISTING
    store.write_if_changed(rel, canonical_json([e.to_dict() for e in entries]).encode())
    bad = unusable(entries)
    for entry in bad:
        context.log.warning(f"{entry.name!r} is not a session: {entry.reason}")
    table = ["| entry | what | reason |", "|---|---|---|"] + [
        f"| `{e.name}` | {e.kind} | {e.reason.replace('|', '/')} |" for e in entries if e.kind != SESSION]
    return dg.MaterializeResult(
        metadata={
            "sessions": len(session_ids(entries)),
            "not_sessions": len(bad),
            "listing": dg.MetadataValue.path(store.uri(rel)),
            "entries_not_sessions": dg.MetadataValue.md("\n".join(table) if len(table) > 2
                                                        else "Every entry is a session."),
        },
        check_results=[dg.AssetCheckResult(
            check_name="every_folder_is_a_session", passed=not bad, severity=dg.AssetCheckSeverity.WARN,
            metadata={"not_sessions": dg.MetadataValue.md(
                "\n".join(f"- `{e.name}`: {e.reason}" for e in bad) or "none")})],
    )
