"""One dynamic partition per capture session; the key is the session folder name."""

from __future__ import annotations

import dagster as dg

SESSIONS_PARTITION = "sessions"

sessions_partitions = dg.DynamicPartitionsDefinition(name=SESSIONS_PARTITION)
