"""Dagster run config goes through ``training.settings`` like the ablation spec and ``o2a prior train --set``.

Every asset here fails on its config before reading any input, so an empty storage
root is enough: no pipeline fixture, fast tier.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from pipelines.assets.dataset_index import DatasetIndexConfig, dataset_index
from pipelines.assets.fewshot import FewShotReportConfig, fewshot_report
from pipelines.assets.prior import AvatarPriorConfig, avatar_prior
from pipelines.assets.shards import ShardsConfig
from pipelines.cli import main
from pipelines.resources import FaceModelResource, StorageResource
from training.ablation.spec import SpecError, parse_spec


def failure(asset: dg.AssetsDefinition, config: dict, root: Path) -> str:
    name = asset.key.to_user_string()
    result = dg.materialize([asset], instance=dg.DagsterInstance.ephemeral(), raise_on_error=False,
                            run_config={"ops": {name: {"config": config}}},
                            resources={"storage": StorageResource(url=f"file://{root}"),
                                       "face_model": FaceModelResource()})
    assert not result.success
    [event] = result.get_step_failure_events()
    assert event.step_failure_data.user_failure_data is not None, event.step_failure_data.error  # a dg.Failure
    return event.step_failure_data.user_failure_data.description


@pytest.mark.parametrize(("asset", "config", "expected"), [
    (avatar_prior, {"backbone": "voxels"},
     "avatar_prior run config: PriorConfig rejects {'backbone': 'voxels'}: backbone must be one of anchored, "
     "triplane; got 'voxels'"),
    (avatar_prior, {"iterations": 0},
     "avatar_prior run config: PriorConfig rejects {'backbone': 'anchored', 'iterations': 0}: iterations must be "
     ">= 1, got 0"),
    (fewshot_report, {"ks": [0]},
     "fewshot_report run config: FewShotConfig rejects {'ks': (0,)}: ks must be a non-empty list of K >= 1"),
    (fewshot_report, {"methods": ["prior", "magic"]}, "fewshot_report run config: FewShotConfig rejects"),
    (dataset_index, {"train": 0.5},
     "dataset_index run config: SplitRule rejects {'train': 0.5, 'validation': 0.1, 'test': 0.1}: split "
     "fractions must be >= 0 and sum to 1"),
], ids=["backbone", "iterations", "ks", "methods", "splits"])
def test_bad_run_config_fails_with_the_validator_message(asset, config: dict, expected: str, tmp_path: Path) -> None:
    assert failure(asset, config, tmp_path).startswith(expected)


def test_presets_are_checked_before_the_fields(tmp_path: Path) -> None:
    assert failure(avatar_prior, {"preset": "huge"}, tmp_path) == "unknown preset 'huge'; choose one of cpu, gpu"
    assert failure(fewshot_report, {"preset": "huge", "ks": [0]}, tmp_path).startswith("unknown few-shot preset")


def test_one_invariant_one_message_from_every_source(tmp_path: Path, capsys) -> None:
    """iterations 0 from the spec, from --set and from the run config: the same PriorConfig sentence."""
    sentence = "iterations must be >= 1, got 0"
    spec = ("version: 1\nconfigurations:\n  c: {images: 8, identities: 2, views_per_identity: 2, "
            "expressions_per_identity: 2, prior_changes: {iterations: 0}}\n")
    with pytest.raises(SpecError) as info:
        parse_spec(spec, "spec.yaml")
    assert str(info.value) == ("spec.yaml: configuration 'c', field 'prior_changes': PriorConfig rejects "
                               "{'iterations': 0}: " + sentence)
    assert main(["prior", "train", "--index", str(tmp_path / "i.parquet"), "--out", str(tmp_path / "p"),
                 "--set", "iterations=0"]) == 2
    assert capsys.readouterr().err == f"o2a prior train: PriorConfig rejects {{'iterations': 0}}: {sentence}\n"
    assert failure(avatar_prior, {"iterations": 0}, tmp_path).endswith(sentence)


def test_config_schemas_stay_typed_with_the_dataclass_defaults() -> None:
    """The launchpad shows typed fields whose defaults are the dataclasses' (read, not restated)."""
    def fields(config_class: type[dg.Config]) -> dict:
        schema = config_class.to_config_schema().as_field().config_type
        return {name: (field.config_type.given_name or field.config_type.key,
                       field.default_value if field.default_provided else None)
                for name, field in schema.fields.items()}

    prior = fields(AvatarPriorConfig)
    assert prior["backbone"] == ("Noneable.StringSourceType", "anchored")
    assert prior["iterations"] == ("Noneable.IntSourceType", None)
    shards = fields(ShardsConfig)
    assert shards == {"max_mb": ("Noneable.Float", 256.0), "max_samples": ("Noneable.IntSourceType", 1000),
                      "train_resolution": ("Noneable.IntSourceType", 128), "masks": ("Noneable.BoolSourceType", True)}
    assert fields(DatasetIndexConfig) == {"train": ("Noneable.Float", 0.8), "validation": ("Noneable.Float", 0.1),
                                          "test": ("Noneable.Float", 0.1)}
    assert fields(FewShotReportConfig)["ks"] == ("Noneable.Array.IntSourceType", None)
