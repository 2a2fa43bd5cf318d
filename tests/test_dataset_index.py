"""The dataset index and its subject-level split (pure functions; the asset is tested with the shards)."""

from __future__ import annotations

import numpy as np
import pytest

from capture_schema import derived_layout as layout
from capture_schema.layout import DEFAULT_CAMERAS, DEFAULT_EXPRESSIONS
from training.dataset_index import SessionShards, SplitRule, build_index, coverage_summary


def _session(i: int, drop: tuple[str, ...] = (), per_shard: int = 100) -> SessionShards:
    sid = f"s{i:04d}_s01"
    keys = [f"{sid}/{e}/{c}" for e in DEFAULT_EXPRESSIONS for c in DEFAULT_CAMERAS if f"{e}/{c}" not in drop]
    shards = [{"name": layout.shard_name(sid, n), "bytes": 1000 * len(keys[k:k + per_shard]), "sha256": "x",
               "n_samples": len(keys[k:k + per_shard]), "keys": keys[k:k + per_shard]}
              for n, k in enumerate(range(0, len(keys), per_shard))]
    return SessionShards(sid, f"s{i:04d}", f"file:///data/{layout.shards_dir(sid)}", shards)


def test_split_depends_only_on_the_subject_and_is_stable_when_subjects_are_added() -> None:
    rule = SplitRule()
    small = {s.subject_id: split for s, split in zip(
        [_session(i) for i in range(20)],
        build_index([_session(i) for i in range(20)], rule).to_pandas().drop_duplicates("subject_id").split)}
    big = build_index([_session(i) for i in range(60)], rule).to_pandas()
    for subject, split in small.items():
        assert set(big.loc[big.subject_id == subject, "split"]) == {split}
    # A second session of the same subject lands in the same split.
    assert rule.split_of("s0003") == rule.split_of("s0003")
    counts = {s: sum(rule.split_of(f"id{i}") == s for i in range(4000)) / 4000 for s in ("train", "validation", "test")}
    assert abs(counts["train"] - 0.8) < 0.03 and abs(counts["test"] - 0.1) < 0.02, counts
    other = SplitRule(salt="another")
    assert any(rule.split_of(f"id{i}") != other.split_of(f"id{i}") for i in range(50))
    with pytest.raises(ValueError, match="sum to 1"):
        SplitRule(0.8, 0.3, 0.1)


def test_index_lists_every_sample_once_with_its_shard_and_split() -> None:
    sessions = [_session(i) for i in range(5)]
    index = build_index(sessions).to_pandas()
    assert len(index) == 5 * 169 and index.key.is_unique
    assert set(index.columns) >= {"shard_url", "key", "subject_id", "expression", "camera_id", "split"}
    row = index[index.key == "s0002_s01/smile/up_L30"].iloc[0]
    assert row.subject_id == "s0002" and row.expression == "smile" and row.camera_id == "up_L30"
    assert row.shard_url.startswith("file:///data/shards/s0002_s01/s0002_s01-00000")
    # No subject is in two splits.
    assert (index.groupby("subject_id").split.nunique() == 1).all()


def test_coverage_reports_the_grid_and_missing_cells() -> None:
    sessions = [_session(0), _session(1, drop=("smile/mid_C00", "pucker/low_R30"))]
    index = build_index(sessions)
    expected = {s.session_id: (DEFAULT_EXPRESSIONS, DEFAULT_CAMERAS) for s in sessions}
    summary = coverage_summary(index, expected)
    assert summary["identities"] == 2 and summary["views"] == 13 and summary["expressions"] == 13
    assert summary["images"] == 2 * 169 - 2
    assert summary["missing_cells"] == ["s0001_s01/smile/mid_C00", "s0001_s01/pucker/low_R30"]  # grid order
    assert summary["shards"] == 4 and np.isclose(summary["shard_mb"]["max"], 100 * 1000 / 2**20, atol=1e-3)
    assert sum(row["images"] for row in summary["per_split"].values()) == summary["images"]
