"""``dataset_index``: one table of every shard and sample, with the subject-level split.

Not partitioned: it gathers the ``shards.json`` of every session partition that
has shards (a new session's shards mark it stale). Thin by design: the work is
``training.dataset_index``.
"""

import json

import dagster as dg

from capture_schema import derived_layout as layout
from capture_schema.atomic import canonical_json
from capture_schema.manifest import parquet_bytes
from pipelines.assets.shards import session_shards
from pipelines.partitions import SESSIONS_PARTITION
from pipelines.resources import StorageResource
from pipelines.run_config import from_run_config, mirrored
from training.dataset_index import SplitRule
from training.settings import default_of


class DatasetIndexConfig(dg.Config):
    """Fractions of *subjects* per split; changing them re-splits deterministically."""

    train: float = default_of(SplitRule, "train")
    validation: float = default_of(SplitRule, "validation")
    test: float = default_of(SplitRule, "test")


@dg.asset(deps=[session_shards], group_name="dataset", kinds={"parquet"})
def dataset_index(context: dg.AssetExecutionContext, config: DatasetIndexConfig,
                  storage: StorageResource) -> dg.MaterializeResult:
    """Every sample (shard URL, key, subject, expression, camera, split) of every sharded session."""
    from training.dataset_index import SessionShards, build_index, coverage_markdown, coverage_summary

    rule = from_run_config(SplitRule(), mirrored(config, SplitRule), "dataset_index")
    store = storage.storage()
    sessions, expected, without = [], {}, []
    for session_id in sorted(context.instance.get_dynamic_partitions(SESSIONS_PARTITION)):
        relpath = layout.shards_index(session_id)
        if not store.exists(relpath):
            without.append(session_id)
            continue
        info = json.loads(store.read_bytes(relpath))
        sessions.append(SessionShards(session_id, info["subject_id"], store.uri(layout.shards_dir(session_id)),
                                      info["shards"]))
        expected[session_id] = (info["expressions"], info["cameras"])
    if not sessions:
        raise dg.Failure("no session has shards yet: materialise session_shards first")
    if without:
        context.log.warning(f"sessions without shards (not indexed): {', '.join(without)}")
    index = build_index(sessions, rule)
    summary = coverage_summary(index, expected)
    summary["sessions_without_shards"] = without
    store.write_if_changed(layout.INDEX, parquet_bytes(index))
    store.write_if_changed(layout.COVERAGE, canonical_json(summary).encode())
    for split, row in summary["per_split"].items():
        if row["subjects"] == 0:
            context.log.warning(f"split {split!r} has no subject ({summary['identities']} subjects in all)")
    return dg.MaterializeResult(
        metadata={
            "coverage": dg.MetadataValue.md(coverage_markdown(summary)),
            "images": summary["images"],
            "identities": summary["identities"],
            "train_images": summary["per_split"]["train"]["images"],
            "validation_images": summary["per_split"]["validation"]["images"],
            "test_images": summary["per_split"]["test"]["images"],
            "missing_cells": len(summary["missing_cells"]),
            "shards": summary["shards"],
            "shard_mb": dg.MetadataValue.json(summary["shard_mb"]),
            "index": dg.MetadataValue.path(store.uri(layout.INDEX)),
        },
    )
