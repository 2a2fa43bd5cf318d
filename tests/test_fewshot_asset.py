"""The ``fewshot_report`` asset on the demo's data and prior, at the cpu presets (the issue's claims).

``fewshot_run`` materialises the asset once (held-out test subject sim0011, K = 1, 3, 5,
every method, plus perturbed cameras at K = 3): about 5 minutes on 2 cores, on top
of the session fixtures ``prior_pipeline`` and ``trained_prior``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import torch

from capture_schema import derived_layout as layout
from pipelines.assets.fewshot import fewshot_report
from pipelines.resources import FaceModelResource, StorageResource
from test_fewshot_report import decode_uri, parse


def materialise(instance: dg.DagsterInstance, storage_url: str, config: dict | None = None):
    return dg.materialize([fewshot_report], instance=instance, raise_on_error=False,
                          run_config={"ops": {"fewshot_report": {"config": config or {}}}},
                          resources={"storage": StorageResource(url=storage_url), "face_model": FaceModelResource()})


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    assert not result.success
    [event] = result.get_step_failure_events()
    assert event.step_failure_data.user_failure_data is not None, event.step_failure_data.error
    return event.step_failure_data.user_failure_data.description


@pytest.fixture(scope="module")
def fewshot_run(trained_prior, prior_pipeline) -> dict:
    result = materialise(prior_pipeline["instance"], prior_pipeline["storage"])
    assert result.success, [e.step_failure_data for e in result.get_step_failure_events()]
    metadata = {k: v.value for k, v in result.asset_materializations_for_node("fewshot_report")[0].metadata.items()}
    folder = trained_prior["storage_root"] / layout.fewshot_dir("anchored")
    scores = pd.read_parquet(trained_prior["storage_root"] / layout.fewshot_scores("anchored"))
    return {"metadata": metadata, "folder": folder, "scores": scores,
            "mean": scores.groupby(["condition", "method", "k"])["psnr"].mean()}


def test_every_method_k_and_condition_is_scored_on_the_same_frames(fewshot_run) -> None:
    scores = fewshot_run["scores"]
    assert set(scores["subject_id"]) == {"sim0011"}  # the demo's held-out test subject
    groups = scores.groupby(["condition", "method", "k"])
    expected = {("estimated", m, k) for m in ("prior", "prior_fixed_geometry", "latent_only", "scratch")
                for k in (1, 3, 5)} | {("perturbed", "prior", 3), ("perturbed", "prior_fixed_geometry", 3)}
    assert set(groups.groups) == expected
    frames = {name: tuple(sorted(g["key"])) for name, g in groups}
    assert len(set(frames.values())) == 1, "every method and K must be scored on the same held-out frames"
    keys = next(iter(frames.values()))
    assert len(keys) == 13
    assert scores.groupby("key")["camera_id"].first().nunique() == 13  # the cover: every camera ...
    assert scores.groupby("key")["expression"].first().nunique() == 13  # ... and every expression
    runs = json.loads((fewshot_run["folder"] / layout.FEWSHOT_RUNS_FILE).read_text())
    inputs = {r["k"]: r["inputs"] for r in runs if r["condition"] == "estimated"}
    assert not set(inputs[5]) & set(keys)
    assert inputs[1][0].endswith("/neutral/mid_C00")  # frontal neutral first
    assert inputs[3] == inputs[5][:3]
    assert np.isfinite(scores[["psnr", "ssim", "ssim_mask"]].to_numpy()).all()
    assert scores["lpips"].isna().all()  # no local LPIPS weights here: skipped, never downloaded
    assert "LPIPS skipped" in fewshot_run["metadata"]["lpips"]


def test_prior_adaptation_beats_training_from_scratch(fewshot_run) -> None:
    """Measured on this data: +11.1 dB at K=1, +11.3 dB at K=3 (prior 20.6-20.7 dB, no prior 9.5 dB).

    Bound 5 dB: half the measured margin, and still far beyond the spread between methods that
    share the prior (< 1.5 dB), so it fails only if the prior stops carrying the identity.
    """
    mean, scores = fewshot_run["mean"], fewshot_run["scores"]
    for k in (1, 3):
        margin = mean["estimated", "prior", k] - mean["estimated", "scratch", k]
        assert margin >= 5.0, f"K={k}: prior {mean['estimated', 'prior', k]:.2f} dB, margin {margin:.2f} dB"
        ssim = scores[(scores.condition == "estimated") & (scores.k == k)].groupby("method")["ssim"].mean()
        assert ssim["prior"] > ssim["scratch"] + 0.2
    assert mean["estimated", "prior", 1] >= 17.0  # one image of a new person already renders other views


def test_joint_geometry_beats_frozen_cameras_when_cameras_are_perturbed(fewshot_run) -> None:
    """Inputs' cameras rotated by 1 degree: refining cameras and 3DMM recovers most of the loss."""
    mean, scores = fewshot_run["mean"], fewshot_run["scores"]
    joint, frozen = mean["perturbed", "prior", 3], mean["perturbed", "prior_fixed_geometry", 3]
    paired = scores[scores.condition == "perturbed"].pivot_table(index="key", columns="method", values="psnr")
    better = (paired["prior"] > paired["prior_fixed_geometry"]).mean()
    print(f"\nperturbed cameras, K=3: joint {joint:.2f} dB, frozen {frozen:.2f} dB, joint better on {better:.2f} of frames")
    # measured on the off-span fixture: joint 17.54 dB, frozen 16.74 dB (+0.80), better on 0.69 of frames
    assert joint >= frozen + 0.5, f"joint {joint:.2f} dB vs frozen {frozen:.2f} dB"
    assert better >= 0.6
    runs = json.loads((fewshot_run["folder"] / layout.FEWSHOT_RUNS_FILE).read_text())
    [joint_run] = [r for r in runs if r["condition"] == "perturbed" and r["method"] == "prior"]
    assert 0.2 <= joint_run["camera_rotation_deg_max"] <= 3.0  # it turned the cameras, by about the error


def test_scores_rise_with_k(fewshot_run) -> None:
    """The issue's bar: the full method rises by at least 1 dB from K = 1 to K = 5. Stage 2 moves the weights
    K times as fast with K images (``weight_lr_per_image``); with one rate for every K the prior saturated
    near its own quality (17.80 / 18.48 / 18.42 dB at K = 1 / 3 / 5 with the 2500-step prior). Measured on
    the dev copy of this data (5000-step prior, test subject): 18.23 / 19.42 / 19.91. Every method that
    adapts the network must beat K = 1 at K = 5 (latent only adapts a code alone and stays flat)."""
    scores = fewshot_run["scores"]
    estimated = scores[scores.condition == "estimated"].groupby(["method", "k"])[["psnr", "ssim_mask"]].mean()
    print("\n" + estimated.to_string())
    by_k = [estimated.loc[("prior", k), "psnr"] for k in (1, 3, 5)]
    assert by_k[2] >= by_k[0] + 1.0 and by_k[1] >= by_k[0] + 0.5, f"prior psnr: {by_k}"
    assert by_k[2] >= by_k[1] - 0.2, f"prior psnr: {by_k}"
    for method in ("prior", "prior_fixed_geometry", "scratch"):
        assert estimated.loc[(method, 5), "psnr"] > estimated.loc[(method, 1), "psnr"], method


def test_report_html_is_self_contained_with_every_image_decodable(fewshot_run) -> None:
    html = (fewshot_run["folder"] / layout.FEWSHOT_REPORT_FILE).read_text()
    tags = parse(html).tags
    images = [attrs["src"] for tag, attrs in tags if tag == "img"]
    # the plot, then per K (3 estimated + 1 perturbed) x 2 rows: K inputs + ground truth + each method
    expected = 1 + 2 * ((1 + 1 + 4) + (3 + 1 + 4) + (5 + 1 + 4) + (3 + 1 + 2))
    assert len(images) == expected
    for uri in images:
        image = decode_uri(uri)
        assert image.shape[0] >= 32 and image.shape[1] >= 32 and float(image.std()) > 1.0
    for tag, attrs in tags:
        for name in ("src", "href"):
            assert not str(attrs.get(name) or "").startswith(("http:", "https:", "//", "file:")), (tag, attrs)
    for text in ("K = 1", "K = 3", "K = 5", "from scratch", "LPIPS skipped", "sim0011"):
        assert text in html


def test_metadata_has_summary_plot_and_link(fewshot_run) -> None:
    meta, folder = fewshot_run["metadata"], fewshot_run["folder"]
    assert meta["report"].endswith(layout.fewshot_report("anchored"))
    assert (folder / layout.FEWSHOT_REPORT_FILE).is_file()
    assert meta["summary"].count("\n") >= 14  # header + 14 (condition, method, K) rows
    assert meta["psnr_vs_k"].startswith("![PSNR vs K](data:image/png;base64,")
    assert decode_uri(meta["psnr_vs_k"][len("![PSNR vs K]("):-1]).std() > 0
    assert meta["subjects"] == 1 and meta["frames_scored"] == len(fewshot_run["scores"])


def test_adapted_avatar_is_a_checkpoint_that_renders_its_scores(fewshot_run, prior_pipeline) -> None:
    from fitting.face_models import load_face_model
    from training.fewshot.evaluate import load_subject_frames
    from training.fewshot.metrics import image_psnr
    from training.prior.checkpoint import load_prior
    from training.prior.evaluate import render_batch, target_images
    from training.prior.frames import collate_frames

    path = fewshot_run["folder"] / layout.ADAPTED_DIR / layout.adapted_checkpoint("sim0011", "estimated", 3)
    avatar, ckpt = load_prior(path)
    assert avatar.latents.num_embeddings == 1 and ckpt["subjects"] == ["sim0011"]
    assert len(ckpt["fewshot"]["inputs"]) == 3
    scores = fewshot_run["scores"]
    row = scores[(scores.condition == "estimated") & (scores.method == "prior") & (scores.k == 3)].iloc[0]
    face_model = load_face_model("builtin", None, None)
    frames = {f["key"]: f for f in load_subject_frames(prior_pipeline["index"], "sim0011", face_model, avatar)}
    batch = collate_frames([frames[row["key"]]])
    rendered = render_batch(avatar, face_model, batch)
    assert float(image_psnr(rendered, target_images(batch))[0]) == pytest.approx(row["psnr"], abs=1e-3)
    torch.testing.assert_close(avatar.latents.weight[0], ckpt["model"]["latents.weight"][0])


def test_clear_errors_for_missing_inputs_and_bad_subjects(trained_prior, prior_pipeline, tmp_path: Path) -> None:
    instance = prior_pipeline["instance"]
    message = failure_message(materialise(instance, f"file://{tmp_path}"))
    assert "materialise dataset_index first" in message
    message = failure_message(materialise(instance, prior_pipeline["storage"], {"splits": ["holdout"]}))
    assert "no subject in split(s) holdout" in message
    message = failure_message(materialise(instance, prior_pipeline["storage"], {"subjects": ["sim0000"]}))
    assert "sim0000" in message and "held out: sim0011" in message  # a training subject is refused
    message = failure_message(materialise(instance, prior_pipeline["storage"], {"ks": [0]}))
    assert "fewshot_report run config: FewShotConfig rejects" in message


QUICK = {"ks": [1], "methods": ["prior", "scratch"], "perturbed_ks": [], "stage1_steps": 2, "stage2_steps": 2,
         "eval_frames": 2}


def test_object_store_root_gets_every_file(trained_prior, prior_pipeline) -> None:
    """On a remote root the report is built in a local folder and uploaded file by file."""
    import fsspec

    url, fs = "memory://o2a-fewshot-test/derived", fsspec.filesystem("memory")
    root = "/o2a-fewshot-test/derived"
    fs.pipe_file(f"{root}/{layout.INDEX}", Path(prior_pipeline["index"]).read_bytes())
    fs.pipe_file(f"{root}/{layout.prior_checkpoint('anchored')}", trained_prior["checkpoint"].read_bytes())
    try:
        result = materialise(dg.DagsterInstance.ephemeral(), url, QUICK)
        assert result.success, failure_message(result)
        folder = f"{root}/{layout.fewshot_dir('anchored')}/"
        found = sorted(p.split(folder, 1)[1] for p in fs.find(f"{root}/{layout.FEWSHOT}"))
        assert found == sorted([layout.join(layout.ADAPTED_DIR, layout.adapted_checkpoint("sim0011", "estimated", 1)),
                                layout.FEWSHOT_CODES_FILE, layout.FEWSHOT_PLOT_FILE, layout.FEWSHOT_REPORT_FILE,
                                layout.FEWSHOT_RUNS_FILE, layout.FEWSHOT_SCORES_FILE, layout.FEWSHOT_SUMMARY_FILE])
        scores = pd.read_parquet(io.BytesIO(fs.cat_file(f"{root}/{layout.fewshot_scores('anchored')}")))
        assert sorted(scores["method"].unique()) == ["prior", "scratch"] and len(scores) == 4
        meta = result.asset_materializations_for_node("fewshot_report")[0].metadata
        assert meta["report"].value == f"{url}/{layout.fewshot_report('anchored')}"
        assert {"psnr_prior_k1", "psnr_scratch_k1"} <= set(meta)
    finally:
        fs.rm("/o2a-fewshot-test", recursive=True)


def _root_with_prior(root: Path, trained_prior, prior_pipeline) -> str:
    """A storage root of its own holding the fixture's index and prior (shard URLs in the index are absolute)."""
    for relpath, source in ((layout.INDEX, Path(prior_pipeline["index"])),
                            (layout.prior_checkpoint("anchored"), trained_prior["checkpoint"])):
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        (root / relpath).write_bytes(source.read_bytes())
    return f"file://{root}"


def test_cli_runs_the_same_stage_as_the_asset_and_replaces_the_folder_whole(trained_prior, prior_pipeline,
                                                                           tmp_path: Path, capsys) -> None:
    from pipelines.cli import main

    asset_url = _root_with_prior(tmp_path / "asset", trained_prior, prior_pipeline)
    assert materialise(dg.DagsterInstance.ephemeral(), asset_url, QUICK).success
    cli_root = tmp_path / "cli"
    cli_url = _root_with_prior(cli_root, trained_prior, prior_pipeline)
    stale = cli_root / layout.fewshot_dir("anchored") / layout.ADAPTED_DIR / "sim0099" / "gone.pt"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an avatar of a subject no longer evaluated")
    args = ["fewshot", "--storage", cli_url, "--ks", "1", "--methods", "prior", "scratch", "--perturbed-ks",
            "--stage1-steps", "2", "--stage2-steps", "2", "--eval-frames", "2", "--quiet"]
    assert main(args) == 0
    assert "report:" in capsys.readouterr().out
    scores = {name: pd.read_parquet(root / layout.fewshot_scores("anchored"))
              for name, root in (("asset", tmp_path / "asset"), ("cli", cli_root))}
    pd.testing.assert_frame_equal(scores["asset"], scores["cli"])  # one stage, seeded: the same numbers
    assert not stale.exists()  # the folder was replaced, not written into
    published = (cli_root / layout.fewshot_report("anchored")).read_bytes()
    assert main(args[:-1] + ["--subjects", "sim0000", "--quiet"]) == 1  # refused: a training subject
    assert "held out: sim0011" in capsys.readouterr().err
    assert (cli_root / layout.fewshot_report("anchored")).read_bytes() == published  # a failed run changes nothing
    assert not [p for p in (cli_root / layout.FEWSHOT).iterdir() if p.name.startswith(".")]  # no temporary left
