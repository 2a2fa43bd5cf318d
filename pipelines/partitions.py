"""One dynamic partition per capture session; the key is the session folder name."""

from __future__ import annotations

import dagster as dg

SESSIONS_PARTITION = "sessions"

sessions_partitions = dg.DynamicPartitionsDefinition(name=SESSIONS_PARTITION)


def unregistered_sessions(instance: dg.DagsterInstance, session_ids: list[str]) -> list[str]:
    """The ids in ``session_ids`` that are not partitions yet, in their order."""
    known = set(instance.get_dynamic_partitions(SESSIONS_PARTITION))
    return [sid for sid in session_ids if sid not in known]
