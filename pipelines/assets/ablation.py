"""Balance ablations as assets: per spec configuration a subset, a prior and its few-shot scores.

The configurations come from the ablation spec (``training/ablation/default.yaml``,
or the file named by ``O2A_ABLATION_SPEC``), read when the code location loads:
each becomes a static partition, so editing the file adds or removes partitions
without touching code. Per partition, under ``derived_layout.ablation_dir(name)``:

- ``ablation_subset``: ``subset.json``, the configuration's images of the train
  split (``select_budget``; a budget the data cannot meet fails naming what is missing);
- ``ablation_prior``: ``prior/checkpoint.pt`` trained on exactly those images (loader
  filter by key, no shard rewriting), resumable like ``avatar_prior``;
- ``ablation_fewshot``: ``fewshot/`` scores and report of that prior on the spec's
  held-out subjects, with the spec's few-shot protocol (the same for every partition),
  and ``settings.json``, what they were computed under.

``ablation_report`` (not partitioned) compares every configuration side by side; it
refuses scores computed under settings the spec no longer gives (an edited spec).
"""

import base64
import io
import json
import os
import tempfile
from typing import NamedTuple
from pathlib import Path

import dagster as dg

from capture_schema import derived_layout as layout
from capture_schema.atomic import atomic_write_bytes, canonical_json
from pipelines.assets.dataset_index import dataset_index
from pipelines.assets.prior import should_resume
from pipelines.assets.store_io import finite, load_face_model, read_index, require, work_directory
from pipelines.resources import FaceModelResource, StorageResource
from training.ablation.spec import DEFAULT_SPEC, AblationSpec, load_spec

SPEC_ENV = "O2A_ABLATION_SPEC"


def spec_from_environment() -> AblationSpec:
    """The spec named by ``O2A_ABLATION_SPEC``, else the checked-in default."""
    return load_spec(os.environ.get(SPEC_ENV) or DEFAULT_SPEC)


def _settings(configuration: dict) -> dict:
    """A configuration's fields that change results: all but its free-text description."""
    return {k: v for k, v in configuration.items() if k != "description"}


def scored_under(spec: AblationSpec, name: str) -> dict:
    """What a configuration's scores depend on besides the data: its settings (not its description) and the
    few-shot protocol, as JSON values so that they compare equal to what was written."""
    return json.loads(canonical_json({"configuration": _settings(spec.get(name).to_dict()),
                                      "fewshot": spec.fewshot_config().to_dict(),
                                      "test_splits": list(spec.test_splits)}))


class AblationAssets(NamedTuple):
    """The assets of one spec, by name: three partitioned per configuration, then the report over all."""

    subset: dg.AssetsDefinition
    prior: dg.AssetsDefinition
    fewshot: dg.AssetsDefinition
    report: dg.AssetsDefinition

    @property
    def per_configuration(self) -> tuple[dg.AssetsDefinition, ...]:
        return (self.subset, self.prior, self.fewshot)


def build_ablation_assets(spec: AblationSpec) -> AblationAssets:
    """The three partitioned assets and the report, for the configurations of ``spec``."""
    partitions = dg.StaticPartitionsDefinition(spec.names())

    @dg.asset(deps=[dataset_index], partitions_def=partitions, group_name="ablation")
    def ablation_subset(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
        """The configuration's images of the train split: identities x views x expressions per identity."""
        from training.subsample import BudgetError

        config = spec.get(context.partition_key)
        store = storage.storage()
        index = read_index(store)
        try:
            subset = config.select(index)
        except BudgetError as exc:
            raise dg.Failure(str(exc)) from None
        body = {"configuration": config.to_dict(), "spec": spec.source, "spec_digest": spec.digest,
                "subset": subset.to_dict(), "keys": list(subset.keys)}
        target = layout.ablation_subset(config.name)
        store.write_bytes(target, canonical_json(body).encode())
        per_identity = "\n".join(["| identity | views | expressions |", "|---|---|---|"] + [
            f"| {s} | {', '.join(subset.views[s])} | {', '.join(subset.expressions[s])} |" for s in subset.identities])
        return dg.MaterializeResult(metadata={
            "subset": dg.MetadataValue.path(store.uri(target)), "images": subset.n_images,
            "identities": len(subset.identities), "budget": config.budget_text(),
            "per_identity": dg.MetadataValue.md(per_identity), "spec_digest": spec.digest[:12]})

    @dg.asset(deps=[ablation_subset], partitions_def=partitions, group_name="ablation", kinds={"pytorch"})
    def ablation_prior(context: dg.AssetExecutionContext, storage: StorageResource,
                       face_model: FaceModelResource) -> dg.MaterializeResult:
        """An avatar prior trained on exactly the configuration's subset (the spec's preset)."""
        from training.loader import SampleFilter
        from training.prior.dataset import prior_data_from_index
        from training.prior.train import train_prior

        config = spec.get(context.partition_key)
        store = storage.storage()
        subset_path = layout.ablation_subset(config.name)
        require(store, subset_path, "subset", "ablation_subset")
        keys = json.loads(store.read_bytes(subset_path))["keys"]
        data = prior_data_from_index(read_index(store), "train", SampleFilter(keys=frozenset(keys)))
        if data.stats["images"] != len(keys):
            raise dg.Failure(f"the index has {data.stats['images']} of the subset's {len(keys)} images: "
                             "rematerialise ablation_subset on the current dataset index")
        model = load_face_model(face_model)
        prior_config = config.prior_config()
        target = layout.ablation_prior_dir(config.name)
        context.log.info(f"{config.name}: training on {len(keys)} images ({config.budget_text()}), "
                         f"{prior_config.iterations} steps")
        with work_directory(store, target) as work:
            resume = should_resume(context, work, prior_config, data, model.name, True)
            try:
                result = train_prior(prior_config, data, model, work, resume=resume, log=context.log.info)
            except (ValueError, RuntimeError) as exc:
                raise dg.Failure(f"{config.name}: training the prior failed: {exc}") from None
            report = {"configuration": config.to_dict(), "steps": result.steps, "train_seconds": result.train_seconds,
                      "final": result.final, "data": dict(data.stats), "history": result.history}
            atomic_write_bytes(work / layout.PRIOR_REPORT_FILE, canonical_json(finite(report)).encode())
            store.put_directory(work, target)
        return dg.MaterializeResult(metadata={
            "checkpoint": dg.MetadataValue.path(store.uri(layout.ablation_prior_checkpoint(config.name))),
            "images": len(keys), "subjects": len(data.subjects), "steps": result.steps,
            "train_seconds": round(float(result.train_seconds), 2),
            "psnr_train_rays": float(result.final.get("psnr", float("nan")))})

    @dg.asset(deps=[ablation_prior], partitions_def=partitions, group_name="ablation", kinds={"pytorch"})
    def ablation_fewshot(context: dg.AssetExecutionContext, storage: StorageResource,
                         face_model: FaceModelResource) -> dg.MaterializeResult:
        """The configuration's prior adapted few-shot to the held-out subjects (the spec's protocol)."""
        import pandas as pd

        from training.fewshot.evaluate import evaluate_subjects, held_out_subjects
        from training.fewshot.report import summary_markdown, summary_table, write_report
        from training.prior.checkpoint import CheckpointError, load_prior
        from training.prior.train import pick_device

        config = spec.get(context.partition_key)
        store = storage.storage()
        prior_path = layout.ablation_prior_checkpoint(config.name)
        require(store, prior_path, "prior", "ablation_prior")
        index = read_index(store)
        subjects = held_out_subjects(index, spec.test_splits)
        if not subjects:
            raise dg.Failure(f"the dataset index has no subject in split(s) {', '.join(spec.test_splits)}")
        model = load_face_model(face_model)
        target = layout.ablation_fewshot_dir(config.name)
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / layout.CHECKPOINT_FILE
            local.write_bytes(store.read_bytes(prior_path))
            try:
                prior, _ = load_prior(local, pick_device())
            except CheckpointError as exc:
                raise dg.Failure(f"configuration {config.name}: its prior cannot be used: {exc}; "
                                 "re-materialise ablation_prior") from None
            work = store.local_path(target) if store.is_local else Path(tmp) / layout.FEWSHOT
            result = evaluate_subjects(prior, model, index, subjects, spec.fewshot_config(), None, context.log.info)
            scores = pd.DataFrame(result.rows)
            settings = scored_under(spec, config.name)
            write_report(work, scores, result.grids, [f"configuration {config.name}: {config.budget_text()}"],
                         {**settings, "spec": spec.to_dict()})
            atomic_write_bytes(work / layout.SETTINGS_FILE, canonical_json({**settings, "subjects": subjects}).encode())
            store.put_directory(work, target)
        summary = summary_table(scores)
        return dg.MaterializeResult(metadata={
            "scores": dg.MetadataValue.path(store.uri(layout.ablation_scores(config.name))),
            "report": dg.MetadataValue.url(store.uri(layout.ablation_fewshot_report(config.name))),
            "summary": dg.MetadataValue.md(summary_markdown(summary)),
            **{f"psnr_k{int(r.k)}": float(r.psnr_mean) for r in summary.itertuples() if r.method == "prior"}})

    @dg.asset(deps=[ablation_fewshot], group_name="ablation", kinds={"html"})
    def ablation_report(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
        """Every configuration side by side: few-shot PSNR/SSIM per K and training cost."""
        import pandas as pd

        from training.ablation.report import comparison_markdown, comparison_table, margins, write_ablation_report

        store = storage.storage()
        missing = [n for n in spec.names()
                   if not store.exists(layout.ablation_scores(n)) or not store.exists(layout.ablation_prior_report(n))]
        if missing:
            raise dg.Failure(f"configuration(s) {', '.join(missing)} have no few-shot scores yet: materialise "
                             f"ablation_subset, ablation_prior and ablation_fewshot for those partitions first")
        scores, costs, stale = {}, {}, []
        for name in spec.names():
            scores[name] = pd.read_parquet(io.BytesIO(store.read_bytes(layout.ablation_scores(name))))
            costs[name] = json.loads(store.read_bytes(layout.ablation_prior_report(name)))
            settings_path = layout.ablation_settings(name)
            settings = json.loads(store.read_bytes(settings_path)) if store.exists(settings_path) else {}
            wanted = scored_under(spec, name)
            if ({k: settings.get(k) for k in wanted} != wanted
                    or _settings(costs[name].get("configuration", {})) != wanted["configuration"]):
                stale.append(name)
        if stale:
            raise dg.Failure(f"configuration(s) {', '.join(stale)} were trained or scored under other settings than "
                             f"{spec.source} now gives them (the spec changed since): rematerialise ablation_subset, "
                             "ablation_prior and ablation_fewshot for those partitions")
        table = comparison_table(spec, scores, costs)
        with tempfile.TemporaryDirectory() as tmp:
            work = store.local_path(layout.ABLATIONS) if store.is_local else Path(tmp)
            paths = write_ablation_report(work, spec, table)
            plot = paths["plot"].read_bytes()
            store.put_directory(work, layout.ABLATIONS)
        return dg.MaterializeResult(metadata={
            "report": dg.MetadataValue.url(store.uri(layout.ABLATIONS_REPORT)),
            "table": dg.MetadataValue.path(store.uri(layout.ABLATIONS_TABLE)),
            "comparison": dg.MetadataValue.md(comparison_markdown(table)),
            "margins": dg.MetadataValue.md("\n".join(f"- {line}" for line in margins(table))),
            "plot": dg.MetadataValue.md(f"![few-shot PSNR per configuration](data:image/png;base64,"
                                        f"{base64.b64encode(plot).decode()})"),
            "configurations": len(spec.names()), "spec": spec.source, "spec_digest": spec.digest[:12]})

    return AblationAssets(ablation_subset, ablation_prior, ablation_fewshot, ablation_report)
