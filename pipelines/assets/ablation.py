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
Thin by design: each asset calls one stage of ``training.ablation.run``.
"""

import base64
import os
from typing import NamedTuple

import dagster as dg

from capture_schema import derived_layout as layout
from pipelines import pools
from pipelines.assets.dataset_index import dataset_index
from pipelines.assets.store_io import load_face_model, stage_failures
from pipelines.resources import FaceModelResource, StorageResource
from training.ablation.run import compare, evaluate_configuration, select_subset, train_configuration
from training.ablation.spec import DEFAULT_SPEC, AblationSpec, load_spec

SPEC_ENV = "O2A_ABLATION_SPEC"


def spec_from_environment() -> AblationSpec:
    """The spec named by ``O2A_ABLATION_SPEC``, else the checked-in default."""
    return load_spec(os.environ.get(SPEC_ENV) or DEFAULT_SPEC)


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
        config = spec.get(context.partition_key)
        store = storage.storage()
        with stage_failures():
            subset = select_subset(store, spec, config.name)
        per_identity = "\n".join(["| identity | views | expressions |", "|---|---|---|"] + [
            f"| {s} | {', '.join(subset.views[s])} | {', '.join(subset.expressions[s])} |" for s in subset.identities])
        return dg.MaterializeResult(metadata={
            "subset": dg.MetadataValue.path(store.uri(layout.ablation_subset(config.name))),
            "images": subset.n_images, "identities": len(subset.identities), "budget": config.budget_text(),
            "per_identity": dg.MetadataValue.md(per_identity), "spec_digest": spec.digest[:12]})

    @dg.asset(deps=[ablation_subset], partitions_def=partitions, group_name="ablation", kinds={"pytorch"},
              pool=pools.TRAINING)
    def ablation_prior(context: dg.AssetExecutionContext, storage: StorageResource,
                       face_model: FaceModelResource) -> dg.MaterializeResult:
        """An avatar prior trained on exactly the configuration's subset (the spec's preset)."""
        name = context.partition_key
        store = storage.storage()
        model = load_face_model(face_model)
        with stage_failures():
            run, data = train_configuration(store, spec, name, model, context.log.info, context.log.warning)
        return dg.MaterializeResult(metadata={
            "checkpoint": dg.MetadataValue.path(store.uri(layout.ablation_prior_checkpoint(name))),
            "images": int(data.stats["images"]), "subjects": len(data.subjects), "steps": run.steps,
            "train_seconds": round(float(run.train_seconds), 2),
            "psnr_train_rays": float(run.final.get("psnr", float("nan")))})

    @dg.asset(deps=[ablation_prior], partitions_def=partitions, group_name="ablation", kinds={"pytorch"},
              pool=pools.TRAINING)
    def ablation_fewshot(context: dg.AssetExecutionContext, storage: StorageResource,
                         face_model: FaceModelResource) -> dg.MaterializeResult:
        """The configuration's prior adapted few-shot to the held-out subjects (the spec's protocol)."""
        from training.fewshot.report import summary_markdown

        name = context.partition_key
        store = storage.storage()
        model = load_face_model(face_model)
        with stage_failures():
            run = evaluate_configuration(store, spec, name, model, context.log.info)
        return dg.MaterializeResult(metadata={
            "scores": dg.MetadataValue.path(store.uri(layout.ablation_scores(name))),
            "report": dg.MetadataValue.url(store.uri(layout.ablation_fewshot_report(name))),
            "summary": dg.MetadataValue.md(summary_markdown(run.summary)),
            **{f"psnr_k{int(r.k)}": float(r.psnr_mean) for r in run.summary.itertuples() if r.method == "prior"}})

    @dg.asset(deps=[ablation_fewshot], group_name="ablation", kinds={"html"})
    def ablation_report(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
        """Every configuration side by side: few-shot PSNR/SSIM per K and training cost."""
        from training.ablation.report import comparison_markdown, margins

        store = storage.storage()
        with stage_failures():
            comparison = compare(store, spec)
        return dg.MaterializeResult(metadata={
            "report": dg.MetadataValue.url(store.uri(layout.ABLATIONS_REPORT)),
            "table": dg.MetadataValue.path(store.uri(layout.ABLATIONS_TABLE)),
            "comparison": dg.MetadataValue.md(comparison_markdown(comparison.table)),
            "margins": dg.MetadataValue.md("\n".join(f"- {line}" for line in margins(comparison.table))),
            "plot": dg.MetadataValue.md(f"![few-shot PSNR per configuration](data:image/png;base64,"
                                        f"{base64.b64encode(comparison.plot_png).decode()})"),
            "configurations": len(spec.names()), "spec": spec.source, "spec_digest": spec.digest[:12]})

    return AblationAssets(ablation_subset, ablation_prior, ablation_fewshot, ablation_report)
