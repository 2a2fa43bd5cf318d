"""Balance ablations as assets: per spec configuration a subset, a prior and its few-shot scores.

The configurations come from the ablation spec (``training/ablation/default.yaml``,
or the file named by ``O2A_ABLATION_SPEC``), read when the code location loads:
each becomes a static partition, so editing the file adds or removes partitions
without touching code. Within a partition each asset loops over the spec's repeat
``seeds`` (one partition per configuration keeps the partition set readable and the
report's inputs one per configuration); per seed ``s``, under
``derived_layout.ablation_seed_dir(name, s)``:

- ``ablation_subset``: ``subset.json``, the configuration's images of the train
  split drawn with seed + ``s`` (``select_budget``; a budget the data cannot meet fails
  naming what is missing);
- ``ablation_prior``: ``prior/checkpoint.pt`` trained on exactly those images (loader
  filter by key, no shard rewriting), resumable like ``avatar_prior``;
- ``ablation_fewshot``: ``fewshot/`` scores and report of that prior on the spec's
  held-out subjects, with the spec's few-shot protocol (the same for every partition),
  ``settings.json``, what they were computed under, and ``codes.parquet``, the adapted codes;
- ``ablation_latent``: ``latent/``, that prior's identity latent space (smoothness of
  interpolations, plausible share of sampled identities, coverage of the adapted codes;
  ``training.latent``), seconds per repeat.

Metadata gives each seed's value (``psnr_k1_seed0``) beside the mean over seeds (``psnr_k1``).

``ablation_report`` (not partitioned) compares every configuration side by side, the latent-space
metrics included; it refuses scores computed under settings the spec no longer gives (an edited
spec) and latent metrics of a prior or codes replaced since.
Thin by design: each asset calls one stage of ``training.ablation.run``.
"""

import base64
import os
from typing import Callable, Iterator, NamedTuple

import dagster as dg

from capture_schema import derived_layout as layout
from pipelines import pools
from pipelines.assets.dataset_index import dataset_index
from pipelines.assets.store_io import load_face_model, stage_failures
from pipelines.resources import FaceModelResource, StorageResource
from training.ablation.run import compare, evaluate_configuration, measure_latent, select_subset, train_configuration
from training.ablation.spec import DEFAULT_SPEC, AblationSpec, load_spec

SPEC_ENV = "O2A_ABLATION_SPEC"


def spec_from_environment() -> AblationSpec:
    """The spec named by ``O2A_ABLATION_SPEC``, else the checked-in default."""
    return load_spec(os.environ.get(SPEC_ENV) or DEFAULT_SPEC)


def _each_seed(spec: AblationSpec, name: str, what: str, log: Callable[[str], None]) -> Iterator[int]:
    """The repeat seeds in spec order, logging ``seed 1/2`` progress."""
    for i, seed in enumerate(spec.seeds):
        log(f"{name}: {what}, seed {i + 1}/{len(spec.seeds)} (repeat seed {seed})")
        yield seed


def _per_seed(name: str, values: dict[int, float]) -> dict[str, float]:
    """``{name}_seed<s>`` per seed and ``name``, the mean over seeds."""
    return {**{f"{name}_seed{s}": float(v) for s, v in values.items()}, name: float(sum(values.values()) / len(values))}


class AblationAssets(NamedTuple):
    """The assets of one spec, by name: four partitioned per configuration, then the report over all."""

    subset: dg.AssetsDefinition
    prior: dg.AssetsDefinition
    fewshot: dg.AssetsDefinition
    latent: dg.AssetsDefinition
    report: dg.AssetsDefinition

    @property
    def per_configuration(self) -> tuple[dg.AssetsDefinition, ...]:
        return (self.subset, self.prior, self.fewshot, self.latent)


def build_ablation_assets(spec: AblationSpec) -> AblationAssets:
    """The four partitioned assets and the report, for the configurations of ``spec``."""
    partitions = dg.StaticPartitionsDefinition(spec.names())

    @dg.asset(deps=[dataset_index], partitions_def=partitions, group_name="ablation")
    def ablation_subset(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
        """The configuration's images of the train split: identities x views x expressions per identity."""
        config = spec.get(context.partition_key)
        store = storage.storage()
        with stage_failures():
            subsets = {seed: select_subset(store, spec, config.name, seed)
                       for seed in _each_seed(spec, config.name, "subset", context.log.info)}
        per_identity = "\n".join(["| seed | identity | views | expressions |", "|---|---|---|---|"] + [
            f"| {seed} | {s} | {', '.join(subset.views[s])} | {', '.join(subset.expressions[s])} |"
            for seed, subset in subsets.items() for s in subset.identities])
        return dg.MaterializeResult(metadata={
            "folder": dg.MetadataValue.path(store.uri(layout.ablation_dir(config.name))),
            **{f"subset_seed{seed}": dg.MetadataValue.path(store.uri(layout.ablation_subset(config.name, seed)))
               for seed in subsets},
            "seeds": ", ".join(map(str, spec.seeds)), "images": config.images, "identities": config.identities,
            **{f"distinct_identities_seed{seed}": len(subset.identities) for seed, subset in subsets.items()},
            "budget": config.budget_text(), "per_identity": dg.MetadataValue.md(per_identity),
            "spec_digest": spec.digest[:12]})

    @dg.asset(deps=[ablation_subset], partitions_def=partitions, group_name="ablation", kinds={"pytorch"},
              pool=pools.TRAINING)
    def ablation_prior(context: dg.AssetExecutionContext, storage: StorageResource,
                       face_model: FaceModelResource) -> dg.MaterializeResult:
        """An avatar prior trained on exactly the configuration's subset (the spec's preset)."""
        name = context.partition_key
        store = storage.storage()
        model = load_face_model(face_model)
        with stage_failures():
            runs = {seed: train_configuration(store, spec, name, seed, model, context.log.info, context.log.warning)
                    for seed in _each_seed(spec, name, "prior", context.log.info)}
        return dg.MaterializeResult(metadata={
            **{f"checkpoint_seed{seed}": dg.MetadataValue.path(store.uri(layout.ablation_prior_checkpoint(name, seed)))
               for seed in runs},
            "seeds": ", ".join(map(str, spec.seeds)), "images": spec.get(name).images,
            **{f"subjects_seed{seed}": len(data.subjects) for seed, (_, data) in runs.items()},
            **_per_seed("steps", {seed: run.steps for seed, (run, _) in runs.items()}),
            **_per_seed("train_seconds", {seed: run.train_seconds for seed, (run, _) in runs.items()}),
            **_per_seed("psnr_train_rays", {seed: run.final.get("psnr", float("nan"))
                                            for seed, (run, _) in runs.items()})})

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
            runs = {seed: evaluate_configuration(store, spec, name, seed, model, context.log.info)
                    for seed in _each_seed(spec, name, "few-shot", context.log.info)}
        psnr: dict[int, dict[int, float]] = {}  # K -> seed -> mean PSNR of the prior method
        for seed, run in runs.items():
            for r in run.summary.itertuples():
                if r.method == "prior":
                    psnr.setdefault(int(r.k), {})[seed] = float(r.psnr_mean)
        return dg.MaterializeResult(metadata={
            **{f"scores_seed{seed}": dg.MetadataValue.path(store.uri(layout.ablation_scores(name, seed)))
               for seed in runs},
            **{f"report_seed{seed}": dg.MetadataValue.url(store.uri(layout.ablation_fewshot_report(name, seed)))
               for seed in runs},
            "seeds": ", ".join(map(str, spec.seeds)),
            "summary": dg.MetadataValue.md("\n\n".join(f"seed {seed}:\n\n{summary_markdown(run.summary)}"
                                                         for seed, run in runs.items())),
            **{key: value for k, by_seed in sorted(psnr.items())
               for key, value in _per_seed(f"psnr_k{k}", by_seed).items()}})

    @dg.asset(deps=[ablation_fewshot], partitions_def=partitions, group_name="ablation", kinds={"pytorch"})
    def ablation_latent(context: dg.AssetExecutionContext, storage: StorageResource,
                        face_model: FaceModelResource) -> dg.MaterializeResult:
        """The configuration's prior's identity latent space: smoothness, plausible samples, coverage."""
        name = context.partition_key
        store = storage.storage()
        model = load_face_model(face_model)
        with stage_failures():
            runs = {seed: measure_latent(store, spec, name, seed, model, context.log.info).summary()
                    for seed in _each_seed(spec, name, "latent space", context.log.info)}

        return dg.MaterializeResult(metadata={
            **{f"report_seed{seed}": dg.MetadataValue.url(store.uri(layout.join(layout.ablation_latent_dir(name, seed),
                                                                               layout.LATENT_REPORT_FILE)))
               for seed in runs},
            "seeds": ", ".join(map(str, spec.seeds)),
            **{key: value for metric in ("smoothness", "plausible_share", "coverage_mean")
               for key, value in _per_seed(metric, {s: float(r[metric]) for s, r in runs.items()}).items()}})

    @dg.asset(deps=[ablation_fewshot, ablation_latent], group_name="ablation", kinds={"html"})
    def ablation_report(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
        """Every configuration side by side: few-shot PSNR/SSIM per K, training cost and the latent space."""
        from training.ablation.report import comparison_markdown, latent_notes, margins

        store = storage.storage()
        with stage_failures():
            comparison = compare(store, spec)
        return dg.MaterializeResult(metadata={
            "report": dg.MetadataValue.url(store.uri(layout.ABLATIONS_REPORT)),
            "table": dg.MetadataValue.path(store.uri(layout.ABLATIONS_TABLE)),
            "comparison": dg.MetadataValue.md(comparison_markdown(comparison.table)),
            "margins": dg.MetadataValue.md("\n".join(f"- {line}" for line in margins(comparison.table)
                                                       + latent_notes(comparison.table))),
            "plot": dg.MetadataValue.md(f"![few-shot PSNR per configuration](data:image/png;base64,"
                                        f"{base64.b64encode(comparison.plot_png).decode()})"),
            "configurations": len(spec.names()), "spec": spec.source, "spec_digest": spec.digest[:12]})

    return AblationAssets(ablation_subset, ablation_prior, ablation_fewshot, ablation_latent, ablation_report)
