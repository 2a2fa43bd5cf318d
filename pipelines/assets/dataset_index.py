"""``dataset_index``: one table of every shard and sample, with the subject-level split.

Not partitioned: it gathers the ``shards.json`` of every session partition that
has shards (a new session's shards mark it stale). Thin by design: the work is
``training.dataset_index.build_dataset_index`` (``o2a index`` runs it too).
"""

import dagster as dg

from capture_schema import derived_layout as layout
from capture_schema.reuse import MissingUpstreamError
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


@dg.asset(deps=[session_shards], group_name="dataset", kinds={"parquet"},
          automation_condition=dg.AutomationCondition.eager())
def dataset_index(context: dg.AssetExecutionContext, config: DatasetIndexConfig,
                  storage: StorageResource) -> dg.MaterializeResult:
    """Every sample (shard URL, key, subject, expression, camera, split) of every sharded session.

    Eager: once the daemon's ``index_on_new_shards`` sensor runs, a session's new shards refresh the
    index by themselves (after every session run in progress has finished)."""
    from training.dataset_index import SplitRule, build_dataset_index, coverage_markdown

    rule = from_run_config(SplitRule(), mirrored(config, SplitRule), "dataset_index")
    store = storage.storage()
    try:
        summary = build_dataset_index(store, context.instance.get_dynamic_partitions(SESSIONS_PARTITION), rule,
                                      context.log.warning)
    except MissingUpstreamError as exc:
        raise dg.Failure(str(exc)) from None
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
