"""Which samples a reader wants: one filter for the loader, ``o2a list`` and ``o2a export``.

``SampleFilter`` matches a sample by its ids (the shard json's or an index row's);
``select`` applies it, and a split, to the dataset index and says what was asked
for but is not there: cells of a selected session that its grid expects but the
index lacks (from ``coverage.json``'s missing cells, so nothing is guessed), and
filter values the index does not know at all. Torch-free, so listing the dataset
never pays for the training stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Mapping, Sequence

import pandas as pd
import pyarrow as pa

from capture_schema.layout import sample_key

#: The filter's fields, each with the index column (and shard json field) it matches.
FILTER_COLUMNS = {"subjects": "subject_id", "sessions": "session_id", "expressions": "expression",
                  "cameras": "camera_id"}


def _frozen(values: Collection[str] | None, name: str) -> frozenset[str] | None:
    if values is None:
        return None
    if isinstance(values, str):  # a bare string would silently become a set of characters
        raise TypeError(f"SampleFilter.{name} must be a collection of ids, not the string {values!r}")
    return frozenset(values)


@dataclass(frozen=True)
class SampleFilter:
    """Which samples to keep; None in a field means "all". All given fields must match."""

    subjects: frozenset[str] | None = None
    cameras: frozenset[str] | None = None
    expressions: frozenset[str] | None = None
    keys: frozenset[str] | None = None
    sessions: frozenset[str] | None = None

    def __post_init__(self) -> None:
        for name in ("subjects", "cameras", "expressions", "keys", "sessions"):
            object.__setattr__(self, name, _frozen(getattr(self, name), name))

    def matches(self, meta: Mapping) -> bool:
        for name, column in FILTER_COLUMNS.items():
            allowed = getattr(self, name)
            if allowed is not None and meta.get(column) not in allowed:
                return False
        return self.keys is None or (
            sample_key(str(meta.get("session_id")), str(meta.get("expression")), str(meta.get("camera_id")))
            in self.keys)


@dataclass(frozen=True)
class Selection:
    """The index rows a filter and split select, and what was asked for but is missing."""

    rows: pd.DataFrame  # index rows (DATASET_INDEX_SCHEMA columns), sorted by key
    missing_cells: list[str]  # session/expression/camera keys a selected session expects but lacks
    unknown: dict[str, list[str]] = field(default_factory=dict)  # filter field -> values no row has

    @property
    def sessions(self) -> list[str]:
        return sorted(self.rows.session_id.unique())


def _matching(frame: pd.DataFrame, sample_filter: SampleFilter, splits: frozenset[str] | None) -> pd.Series:
    keep = pd.Series(True, index=frame.index)
    for name, column in FILTER_COLUMNS.items():
        allowed = getattr(sample_filter, name)
        if allowed is not None:
            keep &= frame[column].isin(allowed)
    if sample_filter.keys is not None:
        keep &= frame.key.isin(sample_filter.keys)
    if splits is not None:
        keep &= frame.split.isin(splits)
    return keep


def _missing_frame(index: pd.DataFrame, missing_cells: Sequence[str]) -> pd.DataFrame:
    """Rows for the expected-but-missing cells, with the subject and split of their session."""
    per_session = index.drop_duplicates("session_id").set_index("session_id")[["subject_id", "split"]]
    rows = []
    for key in missing_cells:
        session_id, expression, camera_id = key.split("/")
        if session_id in per_session.index:
            subject = per_session.loc[session_id]
            rows.append({"key": key, "session_id": session_id, "expression": expression, "camera_id": camera_id,
                         "subject_id": subject.subject_id, "split": subject.split})
    return pd.DataFrame(rows, columns=["key", "session_id", "expression", "camera_id", "subject_id", "split"])


def select(index: pa.Table, coverage: Mapping | None = None, sample_filter: SampleFilter = SampleFilter(),
           splits: Collection[str] | None = None) -> Selection:
    """The index rows ``sample_filter`` and ``splits`` keep; the cells they would keep but the index lacks
    (``coverage``: the dataset's ``coverage.json``); the filter values that match nothing at all."""
    splits = _frozen(splits, "splits")
    frame = index.to_pandas()
    rows = frame[_matching(frame, sample_filter, splits)].sort_values("key").reset_index(drop=True)
    expected = _missing_frame(frame, (coverage or {}).get("missing_cells", []))
    missing = sorted(expected[_matching(expected, sample_filter, splits)].key) if len(expected) else []
    known = pd.concat([frame, expected])
    unknown = {}
    for name, column in FILTER_COLUMNS.items():
        asked = getattr(sample_filter, name)
        if asked is not None and (absent := sorted(asked - set(known[column]))):
            unknown[name] = absent
    if splits is not None and (absent := sorted(splits - {"train", "validation", "test"})):
        unknown["splits"] = absent
    return Selection(rows, missing, unknown)
