"""The ablation comparison on synthetic few-shot scores of two repeat seeds: table, margins, HTML, PNG, files.

The scores are built so that the answers are known by hand: identity_heavy trails balanced by
0.2 dB on average with frame-to-frame swings of a dB (noise), view_heavy by 3 dB on every frame
give or take 0.5 dB (a real gap), and both seeds shift every configuration alike.
"""

from __future__ import annotations

import re

import pandas as pd
import pytest

from capture_schema import derived_layout as layout
from test_fewshot_report import decode_uri, parse
from training.ablation.report import (comparison_markdown, comparison_table, latent_notes, margins,
                                      write_ablation_report)
from training.ablation.spec import load_default_spec, parse_spec

SEEDS = (0, 1)
SEED_SHIFT = {0: -0.1, 1: 0.1}  # the same for every configuration: it cancels in the paired difference
FRAMES = [(subject, f"{subject}_f{f}") for subject in ("s8", "s9") for f in range(4)]
# Balanced's mean PSNR at K=1 / K=3; per-frame offsets around it (mean 0).
BASE = {1: 15.0, 3: 16.0}
OFFSETS = (-1.5, -0.5, 0.5, 1.5, -1.5, -0.5, 0.5, 1.5)
# Per-frame difference to balanced: mean -0.2 with +-1 dB swings; mean -3.0 with +-0.5 dB swings.
DIFFERENCE = {"balanced": (0.0,) * 8, "identity_heavy": (0.8, -1.2) * 4, "view_heavy": (-2.5, -3.5) * 4}


def make_scores(name: str, difference: dict[str, tuple[float, ...]] = DIFFERENCE) -> pd.DataFrame:
    """Rows like ``compare`` reads (every seed, ``seed`` column), with other methods/conditions to be ignored."""
    rows = []
    for seed in SEEDS:
        for k, base in BASE.items():
            for (subject, key), offset, diff in zip(FRAMES, OFFSETS, difference[name]):
                psnr = base + offset + diff + SEED_SHIFT[seed]
                common = dict(seed=seed, subject_id=subject, k=k, key=key, camera_id="c", expression="e",
                              ssim=0.5 + base / 100, ssim_mask=float("nan") if key.endswith("f0") else 0.4,
                              lpips=float("nan"))
                rows.append({**common, "condition": "estimated", "method": "prior", "psnr": psnr})
                rows.append({**common, "condition": "estimated", "method": "scratch", "psnr": 99.0})
                rows.append({**common, "condition": "perturbed", "method": "prior", "psnr": 99.0})
    return pd.DataFrame(rows)


def costs(names: list[str]) -> dict[str, dict[int, dict]]:
    return {name: {0: {"steps": 400, "train_seconds": 60.0}, 1: {"steps": 400, "train_seconds": 62.0}}
            for name in names}


@pytest.fixture()
def table() -> pd.DataFrame:
    spec = load_default_spec()
    return comparison_table(spec, {name: make_scores(name) for name in spec.names()}, costs(spec.names()))


def row(table: pd.DataFrame, name: str, k: int) -> pd.Series:
    return table.set_index(["configuration", "k"]).loc[(name, k)]


def test_table_pools_seeds_of_the_prior_method_on_estimated_cameras_in_spec_order(table: pd.DataFrame) -> None:
    assert list(dict.fromkeys(table["configuration"])) == list(DIFFERENCE)
    for r in table.itertuples():
        assert r.psnr_mean == pytest.approx(BASE[r.k] + sum(DIFFERENCE[r.configuration]) / 8)
        assert r.psnr_ci_low < r.psnr_mean < r.psnr_ci_high
        assert r.psnr_seed0 == pytest.approx(r.psnr_mean - 0.1) and r.psnr_seed1 == pytest.approx(r.psnr_mean + 0.1)
        assert (r.frames, r.subjects, r.seeds, r.images, r.train_steps) == (8, 2, "0,1", 24, 400)
        assert r.train_seconds == pytest.approx(61.0)  # per prior, mean over the seeds
        assert r.ssim_mask_mean == pytest.approx(0.4)  # the NaN frames are skipped, not averaged as 0
    balanced = row(table, "balanced", 1)
    assert (balanced.identities, balanced.views_per_identity, balanced.expressions_per_identity) == (2, 3, 4)
    # The frames spread over 3 dB (offsets): the interval of the mean is wide but holds the mean's neighbourhood.
    assert 13.5 < balanced.psnr_ci_low < 15.0 < balanced.psnr_ci_high < 16.5


def test_differences_to_the_best_are_paired_and_judged(table: pd.DataFrame) -> None:
    assert (table["best_configuration"] == "balanced").all()
    for k in BASE:
        best = row(table, "balanced", k)
        assert best.psnr_vs_best == 0 and pd.isna(best.distinguishable)
        noise, real = row(table, "identity_heavy", k), row(table, "view_heavy", k)
        assert noise.psnr_vs_best == pytest.approx(-0.2) and real.psnr_vs_best == pytest.approx(-3.0)
        assert noise.psnr_vs_best_ci_low < 0 < noise.psnr_vs_best_ci_high and not noise.distinguishable
        assert real.psnr_vs_best_ci_high < 0 and real.distinguishable and real.seeds_agree
        # Paired: the per-seed shifts hit both sides alike, so each seed's gap is the overall gap.
        assert real.psnr_vs_best_seed0 == pytest.approx(-3.0) == real.psnr_vs_best_seed1
        assert real.frames_vs_best == 8


def test_margins_name_the_best_and_which_gaps_are_real(table: pd.DataFrame) -> None:
    lines = margins(table)
    ci = r"\[[-+]\d+\.\d\d, [-+]\d+\.\d\d\]"
    for line, (k, mean) in zip(lines, BASE.items()):
        assert re.fullmatch(rf"K={k}: balanced is best at {mean:.2f} dB \[\d+\.\d, \d+\.\d\]; "
                            rf"identity_heavy -0\.20 dB {ci} \(within noise\); "
                            rf"view_heavy -3\.00 dB {ci} \(distinguishable, both seeds agree\)", line), line
    assert len(lines) == 2
    swapped = {"balanced": DIFFERENCE["view_heavy"], "identity_heavy": DIFFERENCE["balanced"],
               "view_heavy": DIFFERENCE["identity_heavy"]}
    spec = load_default_spec()
    other = comparison_table(spec, {n: make_scores(n, swapped) for n in spec.names()}, costs(spec.names()))
    assert margins(other)[0].startswith("K=1: identity_heavy is best at 15.00 dB")


PAIR_SPEC = """version: 1
seeds: {seeds}
configurations:
  balanced: {{images: 2, identities: 1, views_per_identity: 2, expressions: [neutral]}}
  view_heavy: {{images: 2, identities: 1, views_per_identity: 2, expressions: [neutral]}}
"""


def test_one_seed_and_a_gap_the_seeds_disagree_on() -> None:
    one_seed = parse_spec(PAIR_SPEC.format(seeds="[0]"))
    scores = {n: make_scores(n).query("seed == 0") for n in one_seed.names()}
    line = margins(comparison_table(one_seed, scores, costs(one_seed.names())))[0]
    assert "view_heavy -3.00 dB [" in line and line.endswith("(distinguishable, one seed)"), line
    # Seed 0 puts view_heavy 3 dB ahead of balanced, seed 1 6 dB behind: the pooled gap (-1.5 dB, +-0.5 dB
    # over frames) is clear of 0, but the seeds point opposite ways, so it is not called real.
    split = make_scores("view_heavy")
    split.loc[split["seed"] == 0, "psnr"] += 6.0
    split.loc[split["seed"] == 1, "psnr"] -= 3.0
    two = parse_spec(PAIR_SPEC.format(seeds="[0, 1]"))
    table = comparison_table(two, {"balanced": make_scores("balanced"), "view_heavy": split}, costs(two.names()))
    behind = row(table, "view_heavy", 1)
    assert behind.psnr_vs_best == pytest.approx(-1.5) and behind.psnr_vs_best_ci_high < 0
    assert behind.psnr_vs_best_seed0 == pytest.approx(3.0) and behind.psnr_vs_best_seed1 == pytest.approx(-6.0)
    assert not behind.distinguishable and not behind.seeds_agree
    assert "; view_heavy -1.50 dB [" in margins(table)[0]
    assert margins(table)[0].endswith("(within noise: the seeds disagree)")


def test_no_prior_scores_is_an_error() -> None:
    spec = load_default_spec()
    empty = {name: make_scores(name).query("method == 'scratch'") for name in spec.names()}
    with pytest.raises(ValueError, match="no few-shot scores of the prior method"):
        comparison_table(spec, empty, costs(spec.names()))


def test_written_report_is_self_contained_and_carries_the_margins(table: pd.DataFrame, tmp_path) -> None:
    paths = write_ablation_report(tmp_path, load_default_spec(), table)
    assert {p.name for p in tmp_path.iterdir()} == {layout.ABLATION_TABLE_FILE, layout.ABLATION_HTML_FILE,
                                                    layout.ABLATION_PLOT_FILE, layout.ABLATION_MARKDOWN_FILE}
    assert pd.read_parquet(paths["table"]).equals(table)
    html = paths["html"].read_text()
    page = parse(html)
    images = [attrs["src"] for tag, attrs in page.tags if tag == "img"]
    assert len(images) == 1 and decode_uri(images[0]).std() > 0
    assert not [v for tag, attrs in page.tags for k, v in attrs.items() if k in ("src", "href")
                and v and not v.startswith("data:")]
    markdown = paths["markdown"].read_text()
    for line in margins(table):
        assert line in html and line in markdown
    assert comparison_markdown(table) in markdown
    assert markdown.count("\n| ") == len(table)  # one row per (configuration, K) under the header
    assert "distinguishable" in html and "seeds 0, 1" in html


def latent(names: list[str]) -> dict[str, dict[int, dict]]:
    """Latent summary rows per configuration and seed, with hand-picked values (view_heavy: one identity, so
    no smoothness and no coverage)."""
    values = {"balanced": ((1.2, 0.75, 1.5), (1.4, 0.25, 2.5)), "identity_heavy": ((1.05, 1.0, 0.8), (1.15, 1.0, 0.6)),
              "view_heavy": ((float("nan"), 0.0, float("nan")), (float("nan"), 0.5, float("nan")))}
    return {n: {seed: {"smoothness": s, "plausible_share": p, "coverage_mean": c}
                for seed, (s, p, c) in zip(SEEDS, values[n])} for n in names}


def test_latent_metrics_are_averaged_over_seeds_and_quoted_in_the_closing_note(tmp_path) -> None:
    spec = load_default_spec()
    table = comparison_table(spec, {name: make_scores(name) for name in spec.names()}, costs(spec.names()),
                             latent(spec.names()))
    for k in BASE:  # the same configuration-level values on every K row
        assert row(table, "balanced", k)[["smoothness", "plausible_share", "coverage"]].tolist() == \
            pytest.approx([1.3, 0.5, 2.0])
        assert row(table, "identity_heavy", k)[["smoothness", "plausible_share", "coverage"]].tolist() == \
            pytest.approx([1.1, 1.0, 0.7])
        heavy = row(table, "view_heavy", k)
        assert pd.isna(heavy.smoothness) and pd.isna(heavy.coverage) and heavy.plausible_share == pytest.approx(0.25)
    [note] = latent_notes(table)
    # Ordered by identities: view_heavy (1), balanced (2), identity_heavy (8).
    assert re.search(r"view_heavy \(1 identity\): smoothness n/a, plausible samples 25%, coverage n/a \(one "
                     r"identity[^;]*; balanced \(2 identities\): smoothness 1\.30, plausible samples 50%, coverage "
                     r"2\.00; identity_heavy \(8 identities\): smoothness 1\.10, plausible samples 100%, coverage "
                     r"0\.70$", note), note
    paths = write_ablation_report(tmp_path, spec, table)
    import html

    markdown, page = paths["markdown"].read_text(), paths["html"].read_text()
    assert markdown.rstrip().endswith(note) and html.escape(note) in page
    assert "| 1.30 | 50% | 2.00 |" in markdown and "| n/a | 25% | n/a |" in markdown
    assert pd.read_parquet(paths["table"])["coverage"].notna().sum() == 2 * len(BASE)


def test_without_latent_metrics_the_columns_are_empty_and_no_note_is_written(table: pd.DataFrame) -> None:
    assert table[["smoothness", "plausible_share", "coverage"]].isna().all().all()
    assert latent_notes(table) == []


def test_latent_metrics_of_a_replaced_prior_or_codes_are_stale(tmp_path) -> None:
    """``latent_rows`` compares the digests a latent summary row recorded with the files in the store now."""
    import hashlib

    from capture_schema.atomic import canonical_json
    from capture_schema.storage import Storage
    from training.ablation.run import latent_rows
    from training.latent.config import LatentConfig

    spec = parse_spec(PAIR_SPEC.format(seeds="[0]"))
    store = Storage(f"file://{tmp_path}")
    for name in spec.names():
        prior, codes = f"{name} weights".encode(), f"{name} codes".encode()
        store.write_bytes(layout.ablation_prior_checkpoint(name, 0), prior)
        store.write_bytes(layout.ablation_codes(name, 0), codes)
        row = pd.DataFrame([{"smoothness": 1.1, "prior_sha256": hashlib.sha256(prior).hexdigest(),
                             "codes_sha256": hashlib.sha256(codes).hexdigest(),
                             "latent_config": canonical_json(LatentConfig().to_dict())}])
        store.write_bytes(layout.ablation_latent_metrics(name, 0), row.to_parquet(index=False))
    rows, stale = latent_rows(store, spec)
    assert stale == [] and rows["balanced"][0]["smoothness"] == 1.1
    store.write_bytes(layout.ablation_prior_checkpoint("view_heavy", 0), b"retrained")
    assert latent_rows(store, spec)[1] == ["view_heavy"]
    store.write_bytes(layout.ablation_codes("balanced", 0), b"re-adapted")
    assert latent_rows(store, spec)[1] == ["balanced", "view_heavy"]
