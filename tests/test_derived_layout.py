"""``capture_schema.derived_layout``: the same paths as before it existed, and a pattern for every file.

The expected paths are spelled out by hand on purpose: they are what earlier runs left
on disk, so a change to the layout module must show up here as a deliberate edit.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from capture_schema import derived_layout as layout

#: Ids of odd but legal characters ([A-Za-z0-9_-]): leading, doubled and trailing separators, digits only.
IDS = ["s1", "sim0011_s01", "A-b_9", "-x-", "__", "0", "Z" * 128]

PER_SESSION = [
    (layout.ingest_dir, "ingest/{}"),
    (layout.manifest, "ingest/{}/manifest.parquet"),
    (layout.session_problems, "ingest/{}/problems.parquet"),
    (layout.ingest_summary, "ingest/{}/summary.json"),
    (layout.quarantine, "quarantine/{}.json"),
    (layout.calibration_pointer, "calibration_by_session/{}.json"),
    (layout.landmarks_dir, "landmarks/{}"),
    (layout.landmarks_zarr, "landmarks/{}/landmarks.zarr"),
    (layout.landmarks_summary, "landmarks/{}/summary.parquet"),
    (layout.face_fits_dir, "face_fits/{}"),
    (layout.fit_zarr, "face_fits/{}/fit.zarr"),
    (layout.fit_views, "face_fits/{}/views.parquet"),
    (layout.fit_overlay, "face_fits/{}/overlay.png"),
    (layout.shards_dir, "shards/{}"),
    (layout.shards_index, "shards/{}/shards.json"),
]
PER_KEY = [
    (layout.calibration_dir, "calibrations/{}"),
    (layout.calibration_file, "calibrations/{}/calibration.json"),
]
PER_BACKBONE = [
    (layout.prior_dir, "prior/{}"),
    (layout.prior_checkpoint, "prior/{}/checkpoint.pt"),
    (layout.prior_report, "prior/{}/report.json"),
    (layout.fewshot_dir, "fewshot/{}"),
    (layout.fewshot_report, "fewshot/{}/report.html"),
    (layout.fewshot_scores, "fewshot/{}/scores.parquet"),
    (layout.fewshot_codes, "fewshot/{}/codes.parquet"),
    (layout.latent_dir, "latent/{}"),
    (layout.latent_report, "latent/{}/report.html"),
    (layout.latent_metrics, "latent/{}/metrics.parquet"),
]
PER_ABLATION = [(layout.ablation_dir, "ablations/{}")]
#: Per configuration and repeat seed (the second argument): one folder per seed under the configuration's.
PER_ABLATION_SEED = [
    (layout.ablation_seed_dir, "ablations/{}/seed-{}"),
    (layout.ablation_subset, "ablations/{}/seed-{}/subset.json"),
    (layout.ablation_prior_dir, "ablations/{}/seed-{}/prior"),
    (layout.ablation_prior_checkpoint, "ablations/{}/seed-{}/prior/checkpoint.pt"),
    (layout.ablation_prior_report, "ablations/{}/seed-{}/prior/report.json"),
    (layout.ablation_fewshot_dir, "ablations/{}/seed-{}/fewshot"),
    (layout.ablation_scores, "ablations/{}/seed-{}/fewshot/scores.parquet"),
    (layout.ablation_fewshot_report, "ablations/{}/seed-{}/fewshot/report.html"),
    (layout.ablation_settings, "ablations/{}/seed-{}/fewshot/settings.json"),
    (layout.ablation_codes, "ablations/{}/seed-{}/fewshot/codes.parquet"),
    (layout.ablation_latent_dir, "ablations/{}/seed-{}/latent"),
    (layout.ablation_latent_metrics, "ablations/{}/seed-{}/latent/metrics.parquet"),
]
ALL_FUNCTIONS = PER_SESSION + PER_KEY + PER_BACKBONE + PER_ABLATION
SEEDS = [0, 1, 17]


# ---------------------------------------------------------------- (1) the same paths as the old spellings


def test_examples_spelled_out() -> None:
    assert layout.manifest("s1") == "ingest/s1/manifest.parquet"
    assert layout.quarantine("s1") == "quarantine/s1.json"
    assert layout.calibration_file("0123abcd4567ef89") == "calibrations/0123abcd4567ef89/calibration.json"
    assert layout.landmarks_zarr("sim0000_s01") == "landmarks/sim0000_s01/landmarks.zarr"
    assert layout.fit_zarr("a-b") == "face_fits/a-b/fit.zarr"
    assert layout.inputs_record(layout.shards_dir("s1")) == "shards/s1/inputs.json"
    assert layout.inputs_record("landmarks/s1") == "landmarks/s1/inputs.json"
    assert layout.prior_checkpoint("anchored") == "prior/anchored/checkpoint.pt"
    assert layout.ablation_settings("identity_heavy", 1) == "ablations/identity_heavy/seed-1/fewshot/settings.json"


@pytest.mark.parametrize("function, expected", ALL_FUNCTIONS, ids=[f.__name__ for f, _ in ALL_FUNCTIONS])
@pytest.mark.parametrize("name", IDS)
def test_every_function_returns_the_old_path(function, expected: str, name: str) -> None:
    assert function(name) == expected.format(name)


@pytest.mark.parametrize("function, expected", PER_ABLATION_SEED, ids=[f.__name__ for f, _ in PER_ABLATION_SEED])
@pytest.mark.parametrize("name", IDS)
@pytest.mark.parametrize("seed", SEEDS)
def test_every_ablation_function_takes_the_repeat_seed(function, expected: str, name: str, seed: int) -> None:
    assert function(name, seed) == expected.format(name, seed)


def test_fixed_paths_and_folders() -> None:
    assert layout.CAPTURES_ROOT_LISTING == "ingest/captures_root.json"
    assert layout.INDEX == "dataset/index.parquet" and layout.COVERAGE == "dataset/coverage.json"
    assert layout.ABLATIONS == "ablations"
    assert layout.ABLATIONS_REPORT == "ablations/report.html" and layout.ABLATIONS_TABLE == "ablations/report.parquet"
    assert (layout.INGEST, layout.QUARANTINE, layout.CALIBRATIONS, layout.CALIBRATION_BY_SESSION) == (
        "ingest", "quarantine", "calibrations", "calibration_by_session")
    assert (layout.LANDMARKS, layout.FACE_FITS, layout.SHARDS, layout.DATASET, layout.PRIOR, layout.FEWSHOT) == (
        "landmarks", "face_fits", "shards", "dataset", "prior", "fewshot")


def test_names_written_inside_a_folder() -> None:
    assert (layout.CALIBRATION_FILE, layout.CALIBRATION_REPORT_FILE, layout.TRANSFORMS_FILE, layout.COLMAP_DIR) == (
        "calibration.json", "calibration_report.json", "transforms.json", "colmap")
    assert (layout.LANDMARKS_ZARR, layout.LANDMARKS_SUMMARY_FILE, layout.FIT_ZARR, layout.FIT_VIEWS_FILE,
            layout.FIT_OVERLAY_FILE, layout.INPUTS_FILE) == (
        "landmarks.zarr", "summary.parquet", "fit.zarr", "views.parquet", "overlay.png", "inputs.json")
    assert layout.CHECKPOINT_FILE == "checkpoint.pt" and layout.PRIOR_REPORT_FILES == ("curves.png", "report.json")
    assert (layout.FEWSHOT_SCORES_FILE, layout.FEWSHOT_REPORT_FILE, layout.FEWSHOT_PLOT_FILE,
            layout.FEWSHOT_SUMMARY_FILE, layout.FEWSHOT_RUNS_FILE, layout.ADAPTED_DIR) == (
        "scores.parquet", "report.html", "psnr_vs_k.png", "summary.md", "runs.json", "adapted")
    assert (layout.ABLATION_TABLE_FILE, layout.ABLATION_HTML_FILE, layout.ABLATION_PLOT_FILE,
            layout.ABLATION_MARKDOWN_FILE, layout.SUBSET_FILE, layout.SETTINGS_FILE) == (
        "report.parquet", "report.html", "report.png", "report.md", "subset.json", "settings.json")
    assert layout.SHARDS_INDEX_FILE == "shards.json"
    assert layout.adapted_checkpoint("sim0011", "estimated", 3) == "sim0011/estimated/k3/checkpoint.pt"


@pytest.mark.parametrize("prefix", IDS)
def test_shard_names_and_their_regex_agree(prefix: str) -> None:
    assert layout.shard_name(prefix, 0) == f"{prefix}-000000.tar"
    assert layout.shard_name(prefix, 123456) == f"{prefix}-123456.tar"
    ours = re.compile(layout.shard_name_regex(re.escape(prefix)))
    assert all(ours.fullmatch(layout.shard_name(prefix, n)) for n in (0, 7, 999999))
    for other in (f"{prefix}-00000.tar", f"{prefix}-0000000.tar", f"{prefix}-000000.tar.tmp", f"x{prefix}-000000.tar"):
        assert not ours.fullmatch(other), other


# ---------------------------------------------------------------- (2) describe


EXAMPLES = [
    "ingest/s1/manifest.parquet", "ingest/s1/problems.parquet", "ingest/s1/summary.json",
    "ingest/captures_root.json", "quarantine/A-b_9.json",
    "calibrations/0123abcd4567ef89/calibration.json", "calibrations/0123abcd4567ef89/calibration_report.json",
    "calibrations/0123abcd4567ef89/transforms.json", "calibrations/0123abcd4567ef89/cameras.png",
    *(f"calibrations/0123abcd4567ef89/colmap/{n}" for n in
      ("cameras.txt", "images.txt", "points3D.txt", "rigs.txt", "frames.txt")),
    "calibration_by_session/s1.json",
    "landmarks/s1/landmarks.zarr/zarr.json", "landmarks/s1/landmarks.zarr/landmarks/zarr.json",
    "landmarks/s1/landmarks.zarr/landmarks/c/12/0/0/0", "landmarks/s1/landmarks.zarr/mirror_nme/c/3/0",
    "landmarks/s1/summary.parquet", "landmarks/s1/inputs.json",
    "face_fits/s1/fit.zarr/zarr.json", "face_fits/s1/fit.zarr/identity/zarr.json", "face_fits/s1/fit.zarr/identity/c/0",
    "face_fits/s1/fit.zarr/projected_landmarks/c/10/0/0/0", "face_fits/s1/views.parquet", "face_fits/s1/overlay.png",
    "face_fits/s1/inputs.json",
    "shards/s1/s1-000000.tar", "shards/-x-/-x--000012.tar", "shards/s1/shards.json", "shards/s1/inputs.json",
    "dataset/index.parquet", "dataset/coverage.json",
    "prior/anchored/checkpoint.pt", "prior/anchored/report.json", "prior/triplane/curves.png",
    "fewshot/anchored/scores.parquet", "fewshot/anchored/report.html", "fewshot/anchored/psnr_vs_k.png",
    "fewshot/anchored/summary.md", "fewshot/anchored/runs.json",
    "fewshot/anchored/adapted/sim0011/estimated/k3/checkpoint.pt", "fewshot/anchored/codes.parquet",
    *(f"latent/anchored/{n}" for n in ("metrics.parquet", "interpolations.parquet", "samples.parquet",
                                       "coverage.parquet", "report.html", "profiles.png", "samples.png")),
    "latent/anchored/interpolations/sim0000/sim0003.png", "latent/anchored/interpolations/sim0001/sim0011.gif",
    "ablations/balanced/seed-0/fewshot/codes.parquet",
    *(f"ablations/balanced/seed-1/latent/{n}" for n in ("metrics.parquet", "interpolations.parquet", "samples.parquet",
                                                        "coverage.parquet", "report.html", "profiles.png",
                                                        "samples.png")),
    "ablations/balanced/seed-0/latent/interpolations/s1/s2.gif",
    "ablations/balanced/seed-0/subset.json", "ablations/balanced/seed-0/prior/checkpoint.pt",
    "ablations/balanced/seed-1/prior/report.json", "ablations/balanced/seed-1/prior/curves.png",
    "ablations/balanced/seed-0/fewshot/scores.parquet", "ablations/balanced/seed-12/fewshot/report.html",
    "ablations/balanced/seed-0/fewshot/psnr_vs_k.png", "ablations/balanced/seed-0/fewshot/summary.md",
    "ablations/balanced/seed-1/fewshot/settings.json",
    "ablations/report.parquet", "ablations/report.html", "ablations/report.png", "ablations/report.md",
    "exports/handout/export.json", "exports/handout/CONVENTIONS.md", "exports/h/s1/neutral/images/mid_C00.jpg",
    "exports/h/s1/smile/images/up_L30.png", "exports/h/s1/neutral/masks/mid_C00.png",
    *(f"exports/h/s1/neutral/sparse/0/{n}" for n in ("cameras.txt", "images.txt", "points3D.txt", "rigs.txt",
                                                     "frames.txt")),
    "exports/h/s1/neutral/transforms.json", "exports/h/s1/neutral/calibration.json", "exports/h/s1/neutral/mesh.ply",
    "exports/h/s1/neutral/fit.json", "exports/h/s1/neutral/cameras.png",
]

STRAY = [
    "notes.txt", "shards/s1/evil.sh", "shards/s1/s2-000000.tar", "shards/s1/s1-00000.tar", "shards/s1/.s1-000000.tar.tmp",
    "ingest/s1/manifest.parquet.tmp", "ingest/s.1/manifest.parquet", "ingest/s1/manifest.parquet/x",
    "/ingest/s1/manifest.parquet", "../ingest/s1/manifest.parquet", "ingest/s1", "quarantine/s1.json.bak",
    "landmarks/s1/landmarks.zarr/landmarks/c/x", "landmarks/s1/landmarks.zarr/landmarks/c/", "face_fits/s1/fit.zarr",
    "calibrations/k/colmap/cameras.bin", "prior/anchored/checkpoint.pt.tmp", "fewshot/anchored/adapted/s/e/3/checkpoint.pt",
    "ablations/balanced/seed-0/fewshot/runs.json", "dataset/index.parquet\n",
    "ablations/balanced/subset.json", "ablations/balanced/fewshot/scores.parquet",  # the layout before repeat seeds
    "ablations/balanced/seed-x/subset.json", "ablations/balanced/seed--1/subset.json",
    "ablations/balanced/seed-0/seed-0/subset.json", "ingest/s1/Manifest.parquet",
    "exports/h/s1/neutral/images/mid_C00.gif", "exports/h/s1/neutral/masks/mid_C00.jpg", "exports/h/s1/mesh.ply",
    "exports/h/s1/neutral/sparse/1/cameras.txt", "exports/h/export.json/x",
    "latent/anchored/interpolations/s1/s2.jpg", "latent/anchored/interpolations/s1.png", "latent/metrics.parquet",
    "ablations/balanced/latent/metrics.parquet",
]


@pytest.mark.parametrize("relpath", EXAMPLES)
def test_describe_maps_every_kind_of_file(relpath: str) -> None:
    assert layout.describe(relpath)


@pytest.mark.parametrize("relpath", STRAY)
def test_describe_refuses_stray_paths(relpath: str) -> None:
    assert layout.describe(relpath) is None


def test_every_pattern_has_an_example() -> None:
    unused = [p.pattern for p, _ in layout.PATTERNS if not any(p.fullmatch(e) for e in EXAMPLES)]
    assert not unused


def test_descriptions_name_the_artefact() -> None:
    assert layout.describe("shards/s1/s1-000000.tar") == "shards: webdataset tar"
    assert layout.describe("ablations/report.html").startswith("ablation report")
    assert layout.describe("fewshot/anchored/report.html").startswith("few-shot")
    assert layout.describe("landmarks/s1/landmarks.zarr/detected/c/0/0").startswith("landmarks: zarr array chunk")
    assert all(d and "\n" not in d for _, d in layout.PATTERNS)


def test_staging_folder_of_an_interrupted_training_is_described_as_unfinished() -> None:
    assert layout.staging_dir("prior/anchored") == "prior/.anchored.partial"
    assert layout.staging_dir(layout.ablation_prior_dir("view_heavy", 1)) == \
        "ablations/view_heavy/seed-1/.prior.partial"
    assert layout.describe("prior/.anchored.partial/checkpoint.pt") == \
        "unfinished (resumes on the next run): avatar prior: checkpoint"
    assert layout.describe("ablations/a/seed-0/.prior.partial/checkpoint.pt").startswith("unfinished")
    assert layout.describe("prior/.anchored.partial/stray.bin") is None
    assert layout.describe("prior/.anchored.tmp/checkpoint.pt") is None


@pytest.mark.parametrize("name", IDS)
def test_every_file_path_function_is_described(name: str) -> None:
    """The patterns are built from the functions: whatever file they name for any legal id has a pattern."""
    files = [f for f, expected in ALL_FUNCTIONS if "." in expected.rsplit("/", 1)[-1]]
    files = [f for f in files if f not in (layout.landmarks_zarr, layout.fit_zarr)]  # folders (stores)
    for function in files:
        assert layout.describe(function(name)), function.__name__
    for function, expected in PER_ABLATION_SEED:
        if "." in expected.rsplit("/", 1)[-1]:
            assert all(layout.describe(function(name, seed)) for seed in SEEDS), function.__name__
    assert layout.describe(layout.join(layout.shards_dir(name), layout.shard_name(name, 3)))
    assert layout.describe(layout.join(layout.fit_zarr(name), layout.ZARR_METADATA_FILE))


# ---------------------------------------------------------------- (3) a real derived tree


def test_tree_of_a_pipeline_run_has_a_pattern_for_every_file(prior_pipeline) -> None:
    """Every file the session assets and the dataset index wrote (plus the prior and few-shot report, when
    tests that share the fixture made them) maps to a pattern: nothing stray, nothing unnamed."""
    root = Path(prior_pipeline["storage"][len("file://"):])
    files = sorted(Path(dirpath, f).relative_to(root).as_posix()
                   for dirpath, _, names in os.walk(root) for f in names)
    unmapped = [f for f in files if layout.describe(f) is None]
    assert not unmapped, f"{len(unmapped)} of {len(files)} files match no pattern: {unmapped[:50]}"
    kinds = {layout.describe(f).split(":")[0] for f in files}
    assert {"ingest", "calibration", "calibration pointer", "landmarks", "face fit", "shards",
            "dataset index"} <= kinds, kinds
