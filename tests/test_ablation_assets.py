"""Balance-ablation assets on the demo's data: partitions from the spec file, budgets, the comparison.

``ablation_run`` runs the checked-in default spec's ``balanced`` and ``identity_only``
configurations (the issue's comparison; ``views_only`` is left to the demo/CLI to
keep CI short) through subset -> prior -> few-shot, then the report over a spec
holding just those two: about 5 minutes on 2 cores, on top of ``prior_pipeline``.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from capture_schema import derived_layout as layout
from pipelines.assets.ablation import build_ablation_assets
from pipelines.cli import main
from pipelines.resources import FaceModelResource, StorageResource
from test_fewshot_report import decode_uri, parse
from training.ablation.spec import DEFAULT_SPEC, load_default_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
PAIR = ("balanced", "identity_only")


def _pair_spec(tmp_path: Path) -> Path:
    """The default spec with only the balanced and identity-only configurations (same settings)."""
    text = DEFAULT_SPEC.read_text()
    head, _, body = text.partition("\nconfigurations:")
    kept = body.split("\n  views_only:")[0]
    path = tmp_path / "pair.yaml"
    path.write_text(head + "\nconfigurations:" + kept)
    assert load_default_spec().get("balanced") == parse_spec(path.read_text()).get("balanced")
    return path


def _partition_keys(spec_path: Path) -> list[str]:
    """The ablation partitions a fresh code location sees with ``O2A_ABLATION_SPEC`` set (no code change)."""
    code = ("import pipelines.definitions as d; "
            "print(','.join(d.ABLATION_ASSETS.subset.partitions_def.get_partition_keys()))")
    env = {**os.environ, "O2A_ABLATION_SPEC": str(spec_path)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1].split(",")


def test_spec_file_adds_and_removes_partitions(tmp_path: Path) -> None:
    pair = _pair_spec(tmp_path)
    assert _partition_keys(pair) == list(PAIR)
    extra = tmp_path / "extra.yaml"
    extra.write_text(pair.read_text() + "\n  two_faces:\n    images: 4\n    identities: 2\n"
                     "    views: [mid_C00, mid_L30]\n    expressions: [neutral]\n")
    assert _partition_keys(extra) == [*PAIR, "two_faces"]
    assert _partition_keys(DEFAULT_SPEC) == load_default_spec().names()


def _resources(storage_url: str) -> dict:
    return {"storage": StorageResource(url=storage_url), "face_model": FaceModelResource()}


def test_unmeetable_budget_fails_naming_what_is_missing(prior_pipeline, tmp_path: Path) -> None:
    spec = parse_spec(DEFAULT_SPEC.read_text().split("\nconfigurations:")[0] + """
configurations:
  crowd:
    images: 20
    identities: 20
    views: [mid_C00]
    expressions: [neutral]
  no_such_camera:
    images: 2
    identities: 2
    views: [side_X99]
    expressions: [neutral]
""")
    subset = build_ablation_assets(spec).subset
    for name, expected in (("crowd", "only 10 subject(s) in split 'train', 20 requested"),
                           ("no_such_camera", "side_X99")):
        result = dg.materialize([subset], partition_key=name, resources=_resources(prior_pipeline["storage"]),
                                instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
        assert not result.success
        [event] = result.get_step_failure_events()
        message = event.step_failure_data.user_failure_data.description
        assert f"configuration {name!r}" in message and expected in message, message


@pytest.fixture(scope="module")
def ablation_run(prior_pipeline, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from pipelines.runner import run_ablation

    spec_path = _pair_spec(tmp_path_factory.mktemp("spec"))
    spec = parse_spec(spec_path.read_text(), str(spec_path))
    root = tmp_path_factory.mktemp("ablation")
    for folder in (layout.SHARDS, layout.DATASET):
        (root / folder).symlink_to(Path(prior_pipeline["storage"][len("file://"):]) / folder)
    lines: list[str] = []
    assert run_ablation(dg.DagsterInstance.ephemeral(), StorageResource(url=f"file://{root}"), spec,
                        log=lines.append, log_level="WARNING"), lines
    table = pd.read_parquet(root / layout.ABLATIONS_TABLE)
    return {"root": root, "table": table, "spec": spec, "log": lines}


def test_balanced_beats_identity_only_at_equal_budget(ablation_run) -> None:
    table = ablation_run["table"].set_index(["configuration", "k"])
    for k in (1, 3):
        balanced, identity_only = table.loc[("balanced", k), "psnr_mean"], table.loc[("identity_only", k), "psnr_mean"]
        assert balanced > identity_only, f"K={k}: balanced {balanced:.2f} dB vs identity-only {identity_only:.2f} dB"
    assert (table["images"] == 8).all()  # the same budget


def test_each_configuration_trains_on_exactly_its_subset(ablation_run) -> None:
    root = ablation_run["root"]
    for name in PAIR:
        subset = json.loads((root / layout.ablation_subset(name)).read_text())
        report = json.loads((root / layout.ablation_prior_report(name)).read_text())
        assert len(subset["keys"]) == 8 and report["data"]["images"] == 8
        assert report["data"]["subjects"] == {"balanced": 2, "identity_only": 8}[name]
    identity_only = json.loads((root / layout.ablation_subset("identity_only")).read_text())
    assert all(k.endswith("/neutral/mid_C00") for k in identity_only["keys"])


def test_report_compares_configurations_in_html_parquet_and_metadata(ablation_run) -> None:
    root, table = ablation_run["root"], ablation_run["table"]
    assert list(dict.fromkeys(table["configuration"])) == list(PAIR) and sorted(table["k"].unique()) == [1, 3]
    assert {"psnr_mean", "ssim_mean", "ssim_mask_mean", "train_seconds", "train_steps", "psnr_vs_best"} <= set(table)
    assert (table["train_steps"] == 400).all() and (table["train_seconds"] > 0).all()
    html = (root / layout.ABLATIONS_REPORT).read_text()
    images = [attrs["src"] for tag, attrs in parse(html).tags if tag == "img"]
    assert len(images) == 1 and decode_uri(images[0]).std() > 0
    markdown = (root / layout.ABLATIONS / layout.ABLATION_MARKDOWN_FILE).read_text()
    for name in PAIR:
        assert name in html and name in markdown
    for k in (1, 3):  # the margins: balanced leads, identity-only is that far behind
        margin = table.set_index(["configuration", "k"]).loc[("identity_only", k), "psnr_vs_best"]
        line = f"K={k}: balanced is best at "
        assert line in markdown and f"identity_only {margin:+.2f} dB" in markdown and margin < 0


def test_cli_lists_and_refuses_unknown_configurations(tmp_path: Path, capsys) -> None:
    assert main(["ablation", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in load_default_spec().names())
    assert main(["ablation", "run", "nonesuch", "--storage", f"file://{tmp_path}"]) == 2
    assert "no configuration nonesuch" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 2\nconfigurations: {}\n")
    assert main(["ablation", "list", "--spec", str(bad)]) == 2
    assert "version" in capsys.readouterr().err


def test_object_store_root_gets_every_file(prior_pipeline) -> None:
    """On a remote root each asset works in a local folder and uploads it; the report reads it back."""
    import fsspec

    from pipelines.runner import run_ablation

    spec_text = DEFAULT_SPEC.read_text().split("\nfewshot:")[0] + """
fewshot:
  ks: [1]
  methods: [prior]
  perturbed_ks: []
  eval_frames: 2
  stage1_steps: 4
  stage2_steps: 4
test_splits: [test]
configurations:
  tiny:
    images: 2
    identities: 1
    views: [mid_C00, mid_L30]
    expressions: [neutral]
    prior_changes: {iterations: 6}
"""
    spec = parse_spec(spec_text, "tiny.yaml")
    url, fs = "memory://o2a-ablation-test/derived", fsspec.filesystem("memory")
    root = "/o2a-ablation-test/derived"
    fs.pipe_file(f"{root}/{layout.INDEX}", Path(prior_pipeline["index"]).read_bytes())
    lines: list[str] = []
    try:
        assert run_ablation(dg.DagsterInstance.ephemeral(), StorageResource(url=url), spec, log=lines.append,
                            log_level="WARNING"), lines
        found = {p[len(root) + 1:] for p in fs.find(f"{root}/{layout.ABLATIONS}")}
        assert {layout.ablation_subset("tiny"), layout.ablation_prior_checkpoint("tiny"),
                layout.ablation_prior_report("tiny"), layout.ablation_fewshot_report("tiny"),
                layout.ablation_scores("tiny"), layout.ABLATIONS_REPORT, layout.ABLATIONS_TABLE,
                *(layout.join(layout.ABLATIONS, n) for n in (layout.ABLATION_MARKDOWN_FILE, layout.ABLATION_PLOT_FILE))
                } <= found
        table = pd.read_parquet(io.BytesIO(fs.cat_file(f"{root}/{layout.ABLATIONS_TABLE}")))
        assert table[["configuration", "k", "frames", "train_steps"]].values.tolist() == [["tiny", 1, 2, 6]]
        assert any(f"{url}/{layout.ABLATIONS_REPORT}" in line for line in lines), lines
        # An edited spec: the report refuses scores computed under the old settings, naming the configuration.
        edited = parse_spec(spec_text.replace("iterations: 6", "iterations: 7"), "tiny.yaml")
        result = dg.materialize([build_ablation_assets(edited).report], resources=_resources(url),
                                instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
        [event] = result.get_step_failure_events()
        assert "configuration(s) tiny were trained or scored under other settings" in \
            event.step_failure_data.user_failure_data.description
        reworded = parse_spec(spec_text.replace("    images: 2", "    description: reworded\n    images: 2"), "t.yaml")
        assert dg.materialize([build_ablation_assets(reworded).report], resources=_resources(url),
                              instance=dg.DagsterInstance.ephemeral()).success  # a description is not a setting
    finally:
        fs.rm("/o2a-ablation-test", recursive=True)
