"""One balance-ablation configuration, stage by stage, and the comparison of all: callable without Dagster.

Per configuration and repeat seed ``s`` of the spec (``derived_layout.ablation_seed_dir(name, s)``):
``select_subset`` writes the configuration's images of the train split (drawn with the
configuration's seed + ``s``), ``train_configuration`` trains a prior on exactly those images
(prior seed + ``s``; the resume rule of ``training.prior.stage``), ``evaluate_configuration``
scores it few-shot with the spec's protocol (the same held-out frames for every repeat and
configuration: the comparison is paired) and records what the scores were computed under.
``measure_latent`` writes the latent-space report of that prior (``training.latent``: smoothness of
interpolations between its training identities, plausibility of sampled identities, coverage of the
held-out subjects' adapted codes). ``compare`` refuses scores computed under settings the spec no
longer gives, and latent metrics of a prior, codes or latent settings replaced since (the staleness
rule), and writes the comparison beside the configurations' folders, file by file.
"""

from __future__ import annotations

import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from capture_schema import derived_layout as layout
from capture_schema.atomic import canonical_json
from capture_schema.storage import Storage
from fitting.face_models.base import FaceModel
from training.ablation.spec import AblationSpec
from training.stage_io import StageError, read_index, require

Log = Callable[[str], None]


def _settings(configuration: dict) -> dict:
    """A configuration's fields that change results: all but its free-text description."""
    return {k: v for k, v in configuration.items() if k != "description"}


def scored_under(spec: AblationSpec, name: str) -> dict:
    """What a configuration's scores depend on besides the data: its settings (not its description), the
    few-shot protocol and the repeat seeds (the report pools them, so another set of seeds is another result),
    as JSON values so that they compare equal to what was written."""
    return json.loads(canonical_json({"configuration": _settings(spec.get(name).to_dict()),
                                      "fewshot": spec.fewshot_config().to_dict(),
                                      "test_splits": list(spec.test_splits), "seeds": list(spec.seeds)}))


def _repeat(spec: AblationSpec, seed: int) -> int:
    if seed not in spec.seeds:
        raise StageError(f"seed {seed} is not among the repeat seeds {list(spec.seeds)} of {spec.source}")
    return seed


def select_subset(store: Storage, spec: AblationSpec, name: str, seed: int):
    """Write repeat ``seed`` of configuration ``name``'s images of the train split (``subset.json``); the
    ``SelectedSubset``."""
    from training.subsample import BudgetError

    config = spec.get(name)
    try:
        subset = config.select(read_index(store), _repeat(spec, seed))
    except BudgetError as exc:
        raise StageError(str(exc)) from None
    body = {"configuration": config.to_dict(), "repeat_seed": seed, "subset_seed": config.seed + seed,
            "spec": spec.source, "spec_digest": spec.digest, "subset": subset.to_dict(), "keys": list(subset.keys)}
    store.write_bytes(layout.ablation_subset(name, seed), canonical_json(body).encode())
    return subset


def train_configuration(store: Storage, spec: AblationSpec, name: str, seed: int, model: FaceModel,
                        log: Log = print, warn: Log = print):
    """Train repeat ``seed`` of configuration ``name``'s prior on exactly its subset; ``(PriorRun, PriorData)``."""
    from training.loader import SampleFilter
    from training.prior.dataset import prior_data_from_index
    from training.prior.stage import train_prior_into

    config = spec.get(name)
    subset_path = layout.ablation_subset(name, _repeat(spec, seed))
    require(store, subset_path, "subset", "ablation_subset")
    keys = json.loads(store.read_bytes(subset_path))["keys"]
    data = prior_data_from_index(read_index(store), "train", SampleFilter(keys=frozenset(keys)))
    if data.stats["images"] != len(keys):
        raise StageError(f"the index has {data.stats['images']} of the subset's {len(keys)} images: "
                         "rematerialise ablation_subset on the current dataset index")
    prior_config = config.prior_config(seed)
    log(f"{name} seed {seed}: training on {len(keys)} images ({config.budget_text()}), {prior_config.iterations} "
        f"steps, prior seed {prior_config.seed}")
    try:
        run = train_prior_into(store, layout.ablation_prior_dir(name, seed), prior_config, data, model,
                               title=f"ablation {name} seed {seed}",
                               report_extra={"configuration": config.to_dict(), "repeat_seed": seed},
                               log=log, warn=warn)
    except StageError as exc:
        raise StageError(f"{name} seed {seed}: {exc}") from None
    return run, data


def evaluate_configuration(store: Storage, spec: AblationSpec, name: str, seed: int, model: FaceModel,
                           log: Log = print):
    """Repeat ``seed`` of configuration ``name``'s prior adapted few-shot to the spec's held-out subjects (the same
    few-shot config, hence the same frames, for every repeat and configuration); the ``FewShotRun``."""
    from training.fewshot.evaluate import held_out_subjects
    from training.fewshot.stage import evaluate_into
    from training.prior.stage import load_stored_prior

    config = spec.get(name)
    prior_path = layout.ablation_prior_checkpoint(name, _repeat(spec, seed))
    require(store, prior_path, "prior", "ablation_prior")
    index = read_index(store)
    subjects = held_out_subjects(index, spec.test_splits)
    if not subjects:
        raise StageError(f"the dataset index has no subject in split(s) {', '.join(spec.test_splits)}")
    prior, _ = load_stored_prior(store, prior_path, "ablation_prior")
    settings = scored_under(spec, name)
    return evaluate_into(store, layout.ablation_fewshot_dir(name, seed), prior, model, index, subjects,
                         spec.fewshot_config(), notes=[f"configuration {name} seed {seed}: {config.budget_text()}"],
                         settings={**settings, "repeat_seed": seed, "spec": spec.to_dict()}, keep_adapted=False,
                         extra_files={layout.SETTINGS_FILE: canonical_json(
                             {**settings, "repeat_seed": seed, "subjects": subjects}).encode()},
                         log=log)


def measure_latent(store: Storage, spec: AblationSpec, name: str, seed: int, model: FaceModel,
                   log: Log = print):
    """Repeat ``seed`` of configuration ``name``: its prior's latent-space report (``ablation_latent_dir``), with
    coverage from the codes ``evaluate_configuration`` adapted; the ``LatentAnalysis``."""
    from training.latent.config import LatentConfig
    from training.latent.stage import latent_report_into

    config = spec.get(name)
    prior_path = layout.ablation_prior_checkpoint(name, _repeat(spec, seed))
    require(store, prior_path, "prior", "ablation_prior")
    require(store, layout.ablation_codes(name, seed), "adapted codes", "ablation_fewshot")
    try:
        return latent_report_into(store, layout.ablation_latent_dir(name, seed), prior_path, "ablation_prior",
                                  layout.ablation_codes(name, seed), model, LatentConfig(),
                                  title=f"Identity latent space: ablation {name} seed {seed}",
                                  notes=[f"configuration {name} seed {seed}: {config.budget_text()}"], log=log)
    except StageError as exc:
        raise StageError(f"{name} seed {seed}: {exc}") from None


def latent_rows(store: Storage, spec: AblationSpec) -> tuple[dict[str, dict[int, dict]], list[str]]:
    """Every repeat's latent summary row (configuration -> seed -> row), and the configurations whose rows were
    measured on another prior, other adapted codes or other latent settings than the store and code hold now."""
    from training.latent.config import LatentConfig
    from training.latent.stage import file_digest

    wanted = json.loads(canonical_json(LatentConfig().to_dict()))
    rows: dict[str, dict[int, dict]] = {}
    stale: list[str] = []
    for name in spec.names():
        for seed in spec.seeds:
            row = pd.read_parquet(io.BytesIO(store.read_bytes(layout.ablation_latent_metrics(name, seed)))).iloc[0]
            rows.setdefault(name, {})[seed] = row.to_dict()
            if (row.get("prior_sha256") != file_digest(store, layout.ablation_prior_checkpoint(name, seed))
                    or row.get("codes_sha256") != file_digest(store, layout.ablation_codes(name, seed))
                    or json.loads(row.get("latent_config", "{}")) != wanted) and name not in stale:
                stale.append(name)
    return rows, stale


@dataclass(frozen=True)
class Comparison:
    """The comparison table of every configuration and its plot."""

    table: pd.DataFrame
    plot_png: bytes


def stale_configurations(store: Storage, spec: AblationSpec) -> list[str]:
    """Configurations any of whose repeats' prior or scores were made under other settings than ``spec`` gives
    them now (another configuration, protocol, held-out split or set of seeds)."""
    stale = []
    for name in spec.names():
        wanted = scored_under(spec, name)
        for seed in spec.seeds:
            cost = json.loads(store.read_bytes(layout.ablation_prior_report(name, seed)))
            settings_path = layout.ablation_settings(name, seed)
            settings = json.loads(store.read_bytes(settings_path)) if store.exists(settings_path) else {}
            if ({k: settings.get(k) for k in wanted} != wanted or settings.get("repeat_seed") != seed
                    or _settings(cost.get("configuration", {})) != wanted["configuration"]
                    or cost.get("repeat_seed") != seed):
                stale.append(name)
                break
    return stale


def compare(store: Storage, spec: AblationSpec) -> Comparison:
    """Every configuration side by side (``ablations/report.*``); ``StageError`` if any repeat is missing or stale."""
    from training.ablation.report import comparison_table, write_ablation_report

    missing = [f"{n} (seed {s})" for n in spec.names() for s in spec.seeds
               if not (store.exists(layout.ablation_scores(n, s)) and store.exists(layout.ablation_prior_report(n, s)))]
    if missing:
        raise StageError(f"configuration(s) {', '.join(missing)} have no few-shot scores yet: materialise "
                         "ablation_subset, ablation_prior, ablation_fewshot and ablation_latent for those "
                         "partitions first")
    missing = [f"{n} (seed {s})" for n in spec.names() for s in spec.seeds
               if not store.exists(layout.ablation_latent_metrics(n, s))]
    if missing:
        raise StageError(f"configuration(s) {', '.join(missing)} have no latent-space metrics yet: materialise "
                         "ablation_latent for those partitions first")
    stale = stale_configurations(store, spec)
    if stale:
        raise StageError(f"configuration(s) {', '.join(stale)} were trained or scored under other settings than "
                         f"{spec.source} now gives them (the spec changed since): rematerialise ablation_subset, "
                         "ablation_prior and ablation_fewshot for those partitions")
    latent, stale = latent_rows(store, spec)
    if stale:
        raise StageError(f"the latent-space metrics of configuration(s) {', '.join(stale)} were measured on another "
                         "prior, other adapted codes or other latent settings: rematerialise ablation_latent for "
                         "those partitions")
    scores = {n: pd.concat([pd.read_parquet(io.BytesIO(store.read_bytes(layout.ablation_scores(n, s)))).assign(seed=s)
                            for s in spec.seeds], ignore_index=True) for n in spec.names()}
    costs = {n: {s: json.loads(store.read_bytes(layout.ablation_prior_report(n, s))) for s in spec.seeds}
             for n in spec.names()}
    table = comparison_table(spec, scores, costs, latent)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_ablation_report(Path(tmp), spec, table)
        for path in sorted(Path(tmp).rglob("*")):  # beside the configurations' folders: published file by file
            if path.is_file():
                store.write_bytes(layout.join(layout.ABLATIONS, path.relative_to(tmp).as_posix()), path.read_bytes())
        plot = paths["plot"].read_bytes()
    return Comparison(table=table, plot_png=plot)
