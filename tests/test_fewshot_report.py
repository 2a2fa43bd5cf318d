"""The few-shot report: summary numbers, a self-contained HTML page, the plot and the written files."""

from __future__ import annotations

import base64
from html.parser import HTMLParser

import cv2
import numpy as np
import pandas as pd
import pytest

from capture_schema import derived_layout as layout
from training.fewshot.report import (
    METHOD_LABELS,
    GridRow,
    build_report_html,
    image_grid_html,
    png_data_uri,
    psnr_vs_k_png,
    summary_markdown,
    summary_table,
    write_report,
)

METHODS = ["prior", "prior_fixed_geometry", "latent_only", "scratch"]
KS = [1, 3, 5]
SIZE = 32
PREFIX = "data:image/png;base64,"


def make_scores(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    # Shuffled insertion order, so the sort in summary_table is actually exercised.
    for subject in ["s2", "s1"]:
        for condition in ["perturbed", "estimated"]:
            for method in ["scratch", "prior", "latent_only", "prior_fixed_geometry"]:
                for k in [5, 1, 3]:
                    for f in range(3 + (subject == "s1")):
                        rows.append(dict(
                            subject_id=subject, condition=condition, method=method, k=k, key=f"{subject}_f{f}",
                            camera_id=f"cam{f % 2}", expression=["neutral", "smile"][f % 2],
                            psnr=float(20 + k + rng.normal(0, 1)), ssim=float(rng.uniform(0.6, 0.9)),
                            ssim_mask=float("nan") if f == 0 else float(rng.uniform(0.5, 0.9)),
                            lpips=float("nan") if method == "scratch" else float(rng.uniform(0.1, 0.3))))
    return pd.DataFrame(rows)


def make_image(rng: np.random.Generator) -> np.ndarray:
    ramp = np.linspace(0, 200, SIZE, dtype=np.float64)
    img = ramp[None, :, None] + rng.integers(0, 55, size=(SIZE, SIZE, 3))
    return img.astype(np.uint8)


def make_grids(seed: int = 1) -> list[GridRow]:
    rng = np.random.default_rng(seed)
    rows = []
    for k in [3, 1]:
        for condition in ["estimated", "perturbed"]:
            rows.append(GridRow(
                subject_id="s1", condition=condition, k=k, target_label="mid_L30 / smile",
                inputs=[(f"input {i}", make_image(rng)) for i in range(k)], ground_truth=make_image(rng),
                renders={m: make_image(rng) for m in METHODS},
                psnr={m: float(rng.uniform(18, 30)) for m in METHODS}))
    return rows


class Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def parse(text: str) -> Collector:
    collector = Collector()
    collector.feed(text)
    collector.close()
    return collector


def decode_uri(uri: str) -> np.ndarray:
    assert uri.startswith(PREFIX)
    data = np.frombuffer(base64.b64decode(uri[len(PREFIX):], validate=True), np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    assert image is not None and image.size > 0
    return image


def test_summary_table_values_and_order():
    scores = make_scores()
    summary = summary_table(scores)
    expected_order = [(c, m, k) for c in ["estimated", "perturbed"] for m in METHODS for k in KS]
    assert list(zip(summary["condition"], summary["method"], summary["k"])) == expected_order

    direct = scores.groupby(["condition", "method", "k"])
    for cell in [("estimated", "prior", 3), ("perturbed", "scratch", 5), ("estimated", "latent_only", 1)]:
        row = summary.set_index(["condition", "method", "k"]).loc[cell]
        group = direct.get_group(cell)
        assert row["frames"] == len(group) == 7
        assert row["psnr_mean"] == pytest.approx(group["psnr"].mean())
        assert row["psnr_std"] == pytest.approx(group["psnr"].std())
        assert row["ssim_mean"] == pytest.approx(group["ssim"].mean())
        assert row["ssim_mask_mean"] == pytest.approx(np.nanmean(group["ssim_mask"]))
        assert row["subjects"] == 2
        if cell[1] == "scratch":
            assert np.isnan(row["lpips_mean"])
        else:
            assert row["lpips_mean"] == pytest.approx(np.nanmean(group["lpips"]))


def test_summary_markdown_formats():
    md = summary_markdown(summary_table(make_scores()))
    lines = md.splitlines()
    assert len(lines) == 2 + 2 * len(METHODS) * len(KS)
    assert all(line.startswith("|") and line.endswith("|") for line in lines)
    scratch = [line for line in lines if METHOD_LABELS["scratch"] in line]
    assert scratch and all(line.rstrip(" |").endswith("\u2014") for line in scratch)
    assert "\u00b1" in lines[2]


def test_html_is_self_contained_and_images_decode():
    scores, grids = make_scores(), make_grids()
    text = build_report_html(scores, grids, notes=["LPIPS skipped: no weights"], settings={"steps": 10})
    assert text.startswith("<!DOCTYPE html>")
    tags = parse(text).tags
    images = [attrs for tag, attrs in tags if tag == "img"]
    expected = 1 + sum(len(r.inputs) + 1 + len(r.renders) for r in grids)
    assert len(images) == expected
    grid_images = 0
    for attrs in images:
        image = decode_uri(attrs["src"])
        assert image.std() > 0
        if "plot" not in (attrs.get("class") or ""):
            assert image.shape == (SIZE, SIZE, 3)
            grid_images += 1
    assert grid_images == expected - 1
    for tag, attrs in tags:
        for name in ("src", "href"):
            value = (attrs.get(name) or "").strip().lower()
            assert not value.startswith(("http:", "https:", "//", "file:")), (tag, value)
        assert not (tag == "script" and attrs.get("src"))
        assert not (tag == "link" and "stylesheet" in (attrs.get("rel") or "").lower())


def test_grid_round_trips_colours():
    # RGB in, RGB out: a pure red image must come back red after the BGR conversion.
    red = np.zeros((SIZE, SIZE, 3), np.uint8)
    red[..., 0] = 255
    decoded = decode_uri(png_data_uri(red))
    assert tuple(decoded[0, 0]) == (0, 0, 255)  # OpenCV decodes to BGR


def test_html_mentions_methods_ks_and_escaped_notes():
    text = build_report_html(make_scores(), make_grids(), notes=["keep <b>this</b> literal", "first K frames"],
                             settings={"note": "<script>"})
    for label in METHOD_LABELS.values():
        assert label in text
    for k in KS:
        assert f"K = {k}" in text
    assert "keep &lt;b&gt;this&lt;/b&gt; literal" in text
    assert "<b>this</b>" not in text
    assert "first K frames" in text
    assert "<script>" not in text
    assert "<details>" in text


def test_image_grid_sections_sorted_by_k():
    text = image_grid_html(make_grids())
    assert text.index("K = 1") < text.index("K = 3")
    assert image_grid_html([]).count("<img") == 0


def distinct_colours(png: bytes) -> int:
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.size > 0
    return len(np.unique(image.reshape(-1, 3), axis=0))


def test_psnr_plot_decodes_full_and_degenerate():
    scores = make_scores()
    assert distinct_colours(psnr_vs_k_png(summary_table(scores))) > 1
    single = scores[(scores["k"] == 3) & (scores["method"] == "prior") & (scores["condition"] == "estimated")]
    assert distinct_colours(psnr_vs_k_png(summary_table(single))) > 1
    one_frame = single.iloc[:1]  # std is NaN for one frame: still plots
    assert distinct_colours(psnr_vs_k_png(summary_table(one_frame))) > 1


def test_write_report_files(tmp_path):
    scores, grids = make_scores(), make_grids()
    paths = write_report(tmp_path / "out", scores, grids, ["a note"], {"k": KS})
    assert set(paths) == {"scores", "html", "plot", "summary"}
    assert {p.name for p in paths.values()} == {layout.FEWSHOT_SCORES_FILE, layout.FEWSHOT_REPORT_FILE,
                                                layout.FEWSHOT_PLOT_FILE, layout.FEWSHOT_SUMMARY_FILE}
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths.values())
    pd.testing.assert_frame_equal(pd.read_parquet(paths["scores"]), scores, check_dtype=False)
    assert paths["html"].read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert distinct_colours(paths["plot"].read_bytes()) > 1
    assert METHOD_LABELS["prior"] in paths["summary"].read_text(encoding="utf-8")


def test_empty_scores_rejected(tmp_path):
    empty = make_scores().iloc[:0]
    with pytest.raises(ValueError, match="no scores to report"):
        build_report_html(empty, [], [], {})
    with pytest.raises(ValueError, match="no scores to report"):
        write_report(tmp_path, empty, [], [], {})
    assert not any(tmp_path.iterdir())


def test_png_data_uri_validates():
    with pytest.raises(ValueError):
        png_data_uri(np.zeros((SIZE, SIZE, 3), np.float32))
    with pytest.raises(ValueError):
        png_data_uri(np.zeros((SIZE, SIZE), np.uint8))
    with pytest.raises(ValueError):
        png_data_uri(np.zeros((SIZE, SIZE, 4), np.uint8))
