"""The dataset index: every shard and sample of the dataset, with a subject-level split.

Training and the ablations select samples from this table and stream the shards
that hold them; nothing is rewritten to take a subset. The split is a pure
function of the subject id (a salted hash mapped to [0, 1) and cut at the
configured fractions), so a held-out subject never appears in training, every
session of a subject lands in the same split, and adding subjects never moves
another subject between splits.

``build_dataset_index`` is the ``dataset_index`` step (the asset and ``o2a index``):
it gathers the ``shards.json`` of the given sessions from a storage root and writes
the index and its coverage summary there.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa

from capture_schema import derived_layout as layout
from capture_schema.atomic import canonical_json
from capture_schema.layout import is_valid_id
from capture_schema.manifest import parquet_bytes, table_from_columns
from capture_schema.reuse import MissingUpstreamError
from capture_schema.storage import Storage
from capture_schema.tables import DATASET_INDEX_SCHEMA

SPLITS = ("train", "validation", "test")
SPLIT_SALT = "o2a-subject-split-v1"


@dataclass(frozen=True)
class SplitRule:
    """Fractions of subjects in train / validation / test (they must sum to 1)."""

    train: float = 0.8
    validation: float = 0.1
    test: float = 0.1
    salt: str = SPLIT_SALT

    def __post_init__(self) -> None:
        fractions = (self.train, self.validation, self.test)
        if min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-9:
            raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")

    def split_of(self, subject_id: str) -> str:
        """The split of one subject: depends on nothing but its id and the rule."""
        digest = hashlib.sha256(f"{self.salt}\n{subject_id}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        if u < self.train:
            return "train"
        return "validation" if u < self.train + self.validation else "test"


@dataclass(frozen=True)
class SessionShards:
    """What one session's ``shards.json`` says, plus where its shards live."""

    session_id: str
    subject_id: str
    base_url: str  # the folder URL the shard names are relative to
    shards: Sequence[Mapping]  # each: name, n_samples, bytes, sha256, keys (training.shards.write.ShardInfo)


def build_index(sessions: Iterable[SessionShards], rule: SplitRule = SplitRule()) -> pa.Table:
    """One row per sample, sorted by shard URL and position in the shard."""
    cols: dict[str, list] = {name: [] for name in DATASET_INDEX_SCHEMA.names}
    for s in sorted(sessions, key=lambda s: s.session_id):
        split = rule.split_of(s.subject_id)
        for shard in s.shards:
            url = f"{s.base_url.rstrip('/')}/{shard['name']}"
            for key in shard["keys"]:
                session_id, expression, camera_id = key.split("/")
                cols["shard_url"].append(url)
                cols["key"].append(key)
                cols["subject_id"].append(s.subject_id)
                cols["session_id"].append(session_id)
                cols["expression"].append(expression)
                cols["camera_id"].append(camera_id)
                cols["split"].append(split)
                cols["shard_bytes"].append(int(shard["bytes"]))
    return table_from_columns(cols, DATASET_INDEX_SCHEMA)


def coverage_summary(index: pa.Table, expected: Mapping[str, tuple[Sequence[str], Sequence[str]]]) -> dict:
    """What a data engineer reads at a glance: identities x views x expressions, images per
    split, missing grid cells (``expected``: session -> (expressions, cameras)) and shard sizes."""
    df = index.to_pandas()
    missing = []
    for session_id, (expressions, cameras) in sorted(expected.items()):
        have = set(df.loc[df.session_id == session_id, "key"])
        missing += [f"{session_id}/{e}/{c}" for e in expressions for c in cameras
                    if f"{session_id}/{e}/{c}" not in have]
    shards = df.drop_duplicates("shard_url")
    sizes = shards.shard_bytes.to_numpy() / 2**20
    per_split = {split: {"subjects": int(df.loc[df.split == split, "subject_id"].nunique()),
                         "images": int((df.split == split).sum())} for split in SPLITS}
    return {
        "identities": int(df.subject_id.nunique()),
        "sessions": int(df.session_id.nunique()),
        "views": int(df.camera_id.nunique()),
        "expressions": int(df.expression.nunique()),
        "images": int(len(df)),
        "per_split": per_split,
        "missing_cells": missing,
        "shards": int(len(shards)),
        "shard_mb": {"min": round(float(sizes.min()), 3) if len(sizes) else 0.0,
                     "median": round(float(np.median(sizes)), 3) if len(sizes) else 0.0,
                     "max": round(float(sizes.max()), 3) if len(sizes) else 0.0,
                     "total": round(float(sizes.sum()), 3)},
    }


def coverage_markdown(summary: dict) -> str:
    """The summary as a small Markdown table for the Dagster UI."""
    lines = [f"**{summary['identities']} identities x {summary['views']} views x {summary['expressions']} "
             f"expressions**, {summary['images']} images in {summary['shards']} shards "
             f"({summary['shard_mb']['total']} MB)", "", "| split | subjects | images |", "|---|---|---|"]
    for split, row in summary["per_split"].items():
        lines.append(f"| {split} | {row['subjects']} | {row['images']} |")
    missing = summary["missing_cells"]
    lines += ["", f"missing cells: {len(missing)}" + (f" ({', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''})"
                                                     if missing else "")]
    return "\n".join(lines)


def stored_session_ids(store: Storage) -> list[str]:
    """Every session a storage root knows of: ingested (``ingest/<id>/``) or sharded (``shards/<id>/``).

    What the CLI indexes when no Dagster partition list is at hand: like the partitions,
    it includes sessions that have no shards (quarantined, failed), so they are listed."""
    found = set(store.folders(layout.INGEST)) | set(store.folders(layout.SHARDS))
    return sorted(name for name in found if is_valid_id(name))


def _quiet(_: str) -> None:
    pass


def build_dataset_index(store: Storage, session_ids: Iterable[str], rule: SplitRule = SplitRule(),
                        log: Callable[[str], None] = _quiet) -> dict:
    """Index the shards of every session in ``session_ids`` that has them; the coverage summary.

    Writes ``derived_layout.INDEX`` and ``COVERAGE`` only when their bytes change; the
    summary (also in ``coverage.json``) lists ``sessions_without_shards``. ``log`` gets the
    warnings (sessions left out, an empty split). Raises ``MissingUpstreamError`` when no
    session has shards.
    """
    sessions, expected, without = [], {}, []
    for session_id in sorted(session_ids):
        relpath = layout.shards_index(session_id)
        if not store.exists(relpath):
            without.append(session_id)
            continue
        info = json.loads(store.read_bytes(relpath))
        sessions.append(SessionShards(session_id, info["subject_id"], store.uri(layout.shards_dir(session_id)),
                                      info["shards"]))
        expected[session_id] = (info["expressions"], info["cameras"])
    if not sessions:
        raise MissingUpstreamError("no session has shards yet: materialise session_shards first",
                                   ("session_shards",))
    if without:
        log(f"sessions without shards (not indexed): {', '.join(without)}")
    index = build_index(sessions, rule)
    summary = coverage_summary(index, expected)
    summary["sessions_without_shards"] = without
    store.write_if_changed(layout.INDEX, parquet_bytes(index))
    store.write_if_changed(layout.COVERAGE, canonical_json(summary).encode())
    for split, row in summary["per_split"].items():
        if row["subjects"] == 0:
            log(f"split {split!r} has no subject ({summary['identities']} subjects in all)")
    return summary
