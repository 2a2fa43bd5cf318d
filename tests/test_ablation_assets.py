"""Balance-ablation assets on the demo's data: partitions from the spec file, budgets, the comparison.

``ablation_run`` runs the checked-in default spec's ``balanced`` and ``identity_heavy``
configurations (``view_heavy`` is left to the demo/CLI to keep CI short) through
subset -> prior -> few-shot, then the report over a spec holding just those two, with
one repeat seed instead of the default's two (time); the tiny object-store spec
materialises two seeds, so the per-seed loop, layout and staleness rule are exercised.
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
PAIR = ("balanced", "identity_heavy")


def _pair_spec(tmp_path: Path, seeds: str = "[0, 1]") -> Path:
    """The default spec with only the balanced and identity-heavy configurations (same settings), and ``seeds``."""
    text = DEFAULT_SPEC.read_text()
    head, _, body = text.partition("\nconfigurations:")
    kept = body.split("\n  view_heavy:")[0]
    path = tmp_path / "pair.yaml"
    assert "\nseeds: [0, 1]" in head
    path.write_text(head.replace("\nseeds: [0, 1]", f"\nseeds: {seeds}") + "\nconfigurations:" + kept)
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

    spec_path = _pair_spec(tmp_path_factory.mktemp("spec"), seeds="[0]")
    spec = parse_spec(spec_path.read_text(), str(spec_path))
    root = tmp_path_factory.mktemp("ablation")
    for folder in (layout.SHARDS, layout.DATASET):
        (root / folder).symlink_to(Path(prior_pipeline["storage"][len("file://"):]) / folder)
    lines: list[str] = []
    assert run_ablation(dg.DagsterInstance.ephemeral(), StorageResource(url=f"file://{root}"), spec,
                        log=lines.append, log_level="WARNING"), lines
    table = pd.read_parquet(root / layout.ABLATIONS_TABLE)
    return {"root": root, "table": table, "spec": spec, "log": lines}


def test_same_budget_same_frames_and_verdicts_that_follow_the_intervals(ablation_run) -> None:
    """Which balance wins is the ablation's finding, not a test's (it moves with the prior's settings); what must
    hold is that it compares like with like and calls a gap real only when its interval says so."""
    table = ablation_run["table"]
    assert (table["images"] == 24).all()  # the same budget
    assert (table["frames_vs_best"] == table["frames"]).all()  # every configuration scored the same frames
    for k, at_k in table.groupby("k"):
        best = at_k.loc[at_k["psnr_mean"].idxmax()]
        assert (at_k["best_configuration"] == best.configuration).all()
        others = at_k[at_k["configuration"] != best.configuration]
        assert (others["psnr_vs_best"] <= 0).all() and others["distinguishable"].notna().all()
        for r in others.itertuples():
            assert r.psnr_vs_best == pytest.approx(r.psnr_mean - best.psnr_mean)  # one seed: means pair up
            assert r.psnr_vs_best_ci_low <= r.psnr_vs_best <= r.psnr_vs_best_ci_high
            assert r.distinguishable == (r.psnr_vs_best_ci_high < 0), f"K={k}: {r.configuration}"


def test_each_configuration_trains_on_exactly_its_subset(ablation_run) -> None:
    root = ablation_run["root"]
    for name in PAIR:
        subset = json.loads((root / layout.ablation_subset(name, 0)).read_text())
        report = json.loads((root / layout.ablation_prior_report(name, 0)).read_text())
        assert len(subset["keys"]) == 24 and report["data"]["images"] == 24
        assert report["data"]["subjects"] == {"balanced": 2, "identity_heavy": 8}[name]
        assert subset["repeat_seed"] == report["repeat_seed"] == 0 and report["config"]["seed"] == 0
    identity_heavy = json.loads((root / layout.ablation_subset("identity_heavy", 0)).read_text())
    assert {k.split("/")[1] for k in identity_heavy["keys"]} == {"neutral"}


def test_report_compares_configurations_in_html_parquet_and_metadata(ablation_run) -> None:
    root, table = ablation_run["root"], ablation_run["table"]
    assert list(dict.fromkeys(table["configuration"])) == list(PAIR) and sorted(table["k"].unique()) == [1, 3]
    assert {"psnr_mean", "psnr_ci_low", "psnr_ci_high", "psnr_seed0", "ssim_mean", "ssim_mask_mean",
            "train_seconds", "train_steps", "psnr_vs_best", "psnr_vs_best_ci_low", "psnr_vs_best_ci_high",
            "distinguishable"} <= set(table)
    assert (table["train_steps"] == 800).all() and (table["train_seconds"] > 0).all()
    assert (table["seeds"] == "0").all() and (table["frames"] == 2 * 13).all()  # validation + test subjects
    assert ((table["psnr_ci_low"] <= table["psnr_mean"]) & (table["psnr_mean"] <= table["psnr_ci_high"])).all()
    html = (root / layout.ABLATIONS_REPORT).read_text()
    images = [attrs["src"] for tag, attrs in parse(html).tags if tag == "img"]
    assert len(images) == 1 and decode_uri(images[0]).std() > 0
    markdown = (root / layout.ABLATIONS / layout.ABLATION_MARKDOWN_FILE).read_text()
    for name in PAIR:
        assert name in html and name in markdown
    for k in (1, 3):  # the margins: the best at K, the other's paired gap with its interval and verdict
        at_k = table[table["k"] == k].set_index("configuration")
        best = at_k["best_configuration"].iloc[0]
        [other] = [n for n in PAIR if n != best]
        margin = at_k.loc[other, "psnr_vs_best"]
        assert margin <= 0 and at_k.loc[other, "psnr_vs_best_ci_low"] <= margin
        assert f"K={k}: {best} is best at " in markdown and f"{other} {margin:+.2f} dB [" in markdown
        assert ("(distinguishable, one seed)" if at_k.loc[other, "distinguishable"] else "(within noise") in markdown


def test_report_shows_the_latent_space_per_configuration(ablation_run) -> None:
    """Each configuration's prior gets its latent-space report (``ablation_latent``); the comparison carries its
    smoothness, plausible share and coverage, and the closing note quotes them."""
    root, table = ablation_run["root"], ablation_run["table"]
    for name in PAIR:
        metrics = pd.read_parquet(root / layout.ablation_latent_metrics(name, 0)).iloc[0]
        assert metrics["identities"] == {"balanced": 2, "identity_heavy": 8}[name]
        assert metrics["pairs"] == {"balanced": 1, "identity_heavy": 3}[name]  # every pair of 2, a draw of 3 of 8
        assert metrics["held_out"] == 2  # validation + test subjects, from the codes ablation_fewshot adapted
        row = table[table["configuration"] == name].iloc[0]
        assert row["smoothness"] == pytest.approx(metrics["smoothness"])
        assert row["plausible_share"] == pytest.approx(metrics["plausible_share"])
        assert row["coverage"] == pytest.approx(metrics["coverage_mean"])
        assert 1.0 <= row["smoothness"] < 3.0 and 0.0 <= row["plausible_share"] <= 1.0 and row["coverage"] > 0
        assert (root / layout.ablation_latent_dir(name, 0) / layout.LATENT_REPORT_FILE).is_file()
    markdown = (root / layout.ABLATIONS / layout.ABLATION_MARKDOWN_FILE).read_text()
    note = next(line for line in markdown.splitlines() if "Latent space by number of training identities" in line)
    for name in PAIR:
        r = table[table["configuration"] == name].iloc[0]
        assert f"{name} ({r.identities} identities): smoothness {r.smoothness:.2f}, plausible samples " \
               f"{r.plausible_share:.0%}, coverage {r.coverage:.2f}" in note


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


def test_object_store_root_gets_every_file_of_every_seed(prior_pipeline) -> None:
    """On a remote root each asset works in a local folder and uploads it, once per repeat seed; the report
    reads every seed back, and refuses scores of another set of seeds."""
    import fsspec

    from pipelines.runner import run_ablation

    spec_text = DEFAULT_SPEC.read_text().split("\nfewshot:")[0].replace("\nseeds: [0, 1]", "\nseeds: [0, 3]") + """
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
        instance = dg.DagsterInstance.ephemeral()
        assert run_ablation(instance, StorageResource(url=url), spec, log=lines.append, log_level="WARNING"), lines
        assert spec.seeds == (0, 3)
        found = {p[len(root) + 1:] for p in fs.find(f"{root}/{layout.ABLATIONS}")}
        assert {*(f("tiny", seed) for seed in spec.seeds
                  for f in (layout.ablation_subset, layout.ablation_prior_checkpoint, layout.ablation_prior_report,
                            layout.ablation_fewshot_report, layout.ablation_scores, layout.ablation_settings)),
                layout.ABLATIONS_REPORT, layout.ABLATIONS_TABLE,
                *(layout.join(layout.ABLATIONS, n) for n in (layout.ABLATION_MARKDOWN_FILE, layout.ABLATION_PLOT_FILE))
                } <= found
        assert all(layout.describe(f) for f in found), [f for f in found if not layout.describe(f)]
        # Repeat 3 draws its subset with seed 0 + 3 and trains its prior with the prior's seed + 3.
        subsets = [json.loads(fs.cat_file(f"{root}/{layout.ablation_subset('tiny', s)}")) for s in spec.seeds]
        priors = [json.loads(fs.cat_file(f"{root}/{layout.ablation_prior_report('tiny', s)}")) for s in spec.seeds]
        assert [b["subset_seed"] for b in subsets] == [0, 3] and subsets[0]["keys"] != subsets[1]["keys"]
        assert [r["config"]["seed"] - priors[0]["config"]["seed"] for r in priors] == [0, 3]
        table = pd.read_parquet(io.BytesIO(fs.cat_file(f"{root}/{layout.ABLATIONS_TABLE}")))
        assert table[["configuration", "k", "frames", "seeds", "train_steps"]].values.tolist() == \
            [["tiny", 1, 2, "0,3", 6]]
        assert table["psnr_mean"].iloc[0] == pytest.approx((table["psnr_seed0"] + table["psnr_seed3"]).iloc[0] / 2)
        assert any(f"{url}/{layout.ABLATIONS_REPORT}" in line for line in lines), lines
        [fewshot] = instance.get_latest_materialization_events(  # per-seed values beside their mean
            [dg.AssetKey("ablation_fewshot")]).values()
        meta = fewshot.asset_materialization.metadata
        assert {"psnr_k1_seed0", "psnr_k1_seed3", "psnr_k1", "scores_seed0", "scores_seed3"} <= set(meta)
        assert meta["psnr_k1"].value == pytest.approx((meta["psnr_k1_seed0"].value + meta["psnr_k1_seed3"].value) / 2)
        messages = [e.user_message for run in instance.get_runs() for e in instance.all_logs(run.run_id)]
        assert any(m.startswith("tiny: prior, seed 2/2 (repeat seed 3)") for m in messages)
        # An edited spec: the report refuses scores computed under the old settings, naming the configuration.
        edited = parse_spec(spec_text.replace("iterations: 6", "iterations: 7"), "tiny.yaml")
        result = dg.materialize([build_ablation_assets(edited).report], resources=_resources(url),
                                instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
        [event] = result.get_step_failure_events()
        assert "configuration(s) tiny were trained or scored under other settings" in \
            event.step_failure_data.user_failure_data.description
        # Other seeds: one the configuration was not repeated with is missing, a dropped one makes the rest stale.
        for seeds, message in (("[0, 3, 4]", "configuration(s) tiny (seed 4) have no few-shot scores yet"),
                               ("[0]", "configuration(s) tiny were trained or scored under other settings")):
            reseeded = parse_spec(spec_text.replace("seeds: [0, 3]", f"seeds: {seeds}"), "tiny.yaml")
            result = dg.materialize([build_ablation_assets(reseeded).report], resources=_resources(url),
                                    instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
            [event] = result.get_step_failure_events()
            assert message in event.step_failure_data.user_failure_data.description
        reworded = parse_spec(spec_text.replace("    images: 2", "    description: reworded\n    images: 2"), "t.yaml")
        assert dg.materialize([build_ablation_assets(reworded).report], resources=_resources(url),
                              instance=dg.DagsterInstance.ephemeral()).success  # a description is not a setting
    finally:
        fs.rm("/o2a-ablation-test", recursive=True)
