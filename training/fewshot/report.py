"""The few-shot report: how well each adaptation method recovers a new subject from K images.

Scores per rendered frame become a summary table, a PSNR-against-K plot, a markdown
summary for Dagster and one self-contained HTML page (every image an inline PNG data
URI, no external resource) that can be archived or mailed and still open years later.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from capture_schema import derived_layout as layout
from capture_schema.atomic import atomic_write_bytes
from training.fewshot.config import CONDITIONS as CONDITION_ORDER
from training.fewshot.config import METHODS as METHOD_ORDER

METHOD_LABELS: dict[str, str] = {
    "prior": "prior (latent + weights + 3DMM + cameras)",
    "prior_fixed_geometry": "prior, fixed 3DMM and cameras",
    "latent_only": "latent only",
    "scratch": "from scratch (no prior)",
}
SCORE_COLUMNS = ("subject_id", "condition", "method", "k", "key", "camera_id", "expression",
                 "psnr", "ssim", "ssim_mask", "lpips")
THUMB_PX = 128
EM_DASH = "\u2014"


@dataclass
class GridRow:
    """One row of an image grid: the K inputs, then the ground truth and each method's rendering of one held-out frame."""
    subject_id: str
    condition: str
    k: int
    target_label: str
    inputs: list[tuple[str, np.ndarray]]
    ground_truth: np.ndarray
    renders: dict[str, np.ndarray]
    psnr: dict[str, float]


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def _ordered(values: Iterable[str], order: Sequence[str]) -> list[str]:
    """Distinct values, known ones in ``order`` first, unknown ones after them alphabetically."""
    distinct = set(values)
    return [v for v in order if v in distinct] + sorted(distinct - set(order))


def _sorted_frame(df: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Sort by condition and method in display order (when among ``by``), other columns ascending."""
    orders = {"condition": CONDITION_ORDER, "method": METHOD_ORDER}
    tmp, keys = df.copy(), []
    for col in by:
        if col in orders:
            rank = {v: i for i, v in enumerate(_ordered(df[col], orders[col]))}
            tmp[f"_rank_{col}"] = df[col].map(rank)
            keys.append(f"_rank_{col}")
        else:
            keys.append(col)
    return tmp.sort_values(keys, kind="stable").drop(columns=[k for k in keys if k.startswith("_rank_")]) \
        .reset_index(drop=True)


def summary_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Per (condition, method, K): frame count, PSNR mean/std, SSIM, masked SSIM, LPIPS, subject count.

    Averages are over rendered frames (not per subject first), so a subject with more
    evaluation frames weighs more. NaN SSIM-in-mask / LPIPS values are skipped; a mean
    is NaN only when every value is. ``psnr_std`` is the sample std (NaN for one frame).
    """
    missing = [c for c in SCORE_COLUMNS if c not in scores.columns]
    if missing:
        raise ValueError(f"scores lack columns {missing}")
    summary = scores.groupby(["condition", "method", "k"], sort=False).agg(
        frames=("psnr", "size"), psnr_mean=("psnr", "mean"), psnr_std=("psnr", "std"),
        ssim_mean=("ssim", "mean"), ssim_mask_mean=("ssim_mask", "mean"),
        lpips_mean=("lpips", "mean"), subjects=("subject_id", "nunique")).reset_index()
    summary["k"] = summary["k"].astype(int)
    return _sorted_frame(summary, ["condition", "method", "k"])


def _fmt(value: float, digits: int) -> str:
    return EM_DASH if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _summary_rows(summary: pd.DataFrame) -> list[list[str]]:
    return [[str(r.condition), method_label(str(r.method)), str(int(r.k)), str(int(r.frames)),
             f"{_fmt(r.psnr_mean, 2)} \u00b1 {_fmt(r.psnr_std, 2)}", _fmt(r.ssim_mean, 3),
             _fmt(r.ssim_mask_mean, 3), _fmt(r.lpips_mean, 3)] for r in summary.itertuples(index=False)]


SUMMARY_HEADER = ["condition", "method", "K", "frames", "PSNR (dB)", "SSIM", "SSIM in mask", "LPIPS"]


def summary_markdown(summary: pd.DataFrame) -> str:
    """The summary table as markdown (PSNR mean ± std to 2 decimals, SSIM and LPIPS to 3)."""
    lines = ["| " + " | ".join(SUMMARY_HEADER) + " |", "|" + "---|" * len(SUMMARY_HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in _summary_rows(summary)]
    return "\n".join(lines)


def psnr_vs_k_png(summary: pd.DataFrame, title: str = "few-shot adaptation: PSNR against K") -> bytes:
    """Mean PSNR (± std over frames) against K, one line per method and condition, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = _ordered(summary["method"], METHOD_ORDER)
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
    lines = list(summary.groupby(["condition", "method"], sort=False))
    for i, ((condition, method), group) in enumerate(lines):
        group = group.sort_values("k")
        shift = 0.06 * (i - (len(lines) - 1) / 2)  # side by side, so the error bars stay readable
        ax.errorbar(group["k"] + shift, group["psnr_mean"], yerr=np.nan_to_num(group["psnr_std"].to_numpy(float)),
                    color=colours(methods.index(method) % 10), marker="s" if condition == "perturbed" else "o",
                    capsize=3,
                    linestyle="--" if condition == "perturbed" else "-",
                    label=f"{method_label(method)} ({condition})")
    ks = sorted(int(k) for k in summary["k"].unique())
    ax.set_xticks(ks)
    if len(ks) == 1:
        ax.set_xlim(ks[0] - 1, ks[0] + 1)
    ax.set_xlabel("K (input images)")
    ax.set_ylabel("PSNR on held-out frames (dB)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def bytes_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def png_data_uri(image: np.ndarray) -> str:
    """An HxWx3 uint8 RGB image as a ``data:image/png;base64,...`` URI."""
    import cv2

    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {getattr(image, 'dtype', type(image))} "
                         f"{getattr(image, 'shape', '')}")
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        raise ValueError("PNG encoding failed")
    return bytes_data_uri(encoded.tobytes())


def _e(value: Any) -> str:
    return html.escape(str(value))


def _img(image: np.ndarray, caption: str, alt: str | None = None) -> str:
    return (f'<figure><img class="thumb" alt="{_e(alt or caption)}" src="{png_data_uri(image)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def html_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def image_grid_html(rows: list[GridRow]) -> str:
    """One section per K: inputs, ground truth, then each method's rendering with its PSNR."""
    if not rows:
        return "<p>No example images.</p>"
    parts = []
    for k in sorted({int(r.k) for r in rows}):
        at_k = [r for r in rows if int(r.k) == k]
        methods = _ordered((m for r in at_k for m in r.renders), METHOD_ORDER)
        head = "".join(f"<th>{_e(h)}</th>" for h in ["frame", "inputs", "ground truth"]
                       + [method_label(m) for m in methods])
        body = []
        for r in at_k:
            cells = [f"<td>{_e(r.subject_id)}<br>{_e(r.condition)}<br>{_e(r.target_label)}</td>",
                     '<td><div class="inputs">' + "".join(_img(im, lab) for lab, im in r.inputs) + "</div></td>",
                     f"<td>{_img(r.ground_truth, 'ground truth')}</td>"]
            for m in methods:
                if m in r.renders:
                    psnr = r.psnr.get(m)
                    caption = f"{psnr:.2f} dB" if psnr is not None and np.isfinite(psnr) else EM_DASH
                    cells.append(f"<td>{_img(r.renders[m], caption, f'{method_label(m)}: {caption}')}</td>")
                else:
                    cells.append("<td></td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        parts.append(f'<section><h3>K = {k}</h3><table class="grid"><thead><tr>{head}</tr></thead>'
                     f"<tbody>{''.join(body)}</tbody></table></section>")
    return "\n".join(parts)


def _per_subject_rows(scores: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Mean PSNR per subject, condition and method (rows) and K (columns)."""
    means = scores.groupby(["subject_id", "condition", "method", "k"])["psnr"].mean().reset_index()
    ks = sorted(int(k) for k in means["k"].unique())
    table = means.pivot_table(index=["subject_id", "condition", "method"], columns="k", values="psnr").reset_index()
    table = _sorted_frame(table, ["subject_id", "condition", "method"])
    rows = [[str(r["subject_id"]), str(r["condition"]), method_label(str(r["method"]))]
            + [_fmt(r[k], 2) for k in ks] for _, r in table.iterrows()]
    return ["subject", "condition", "method"] + [f"K = {k}" for k in ks], rows


STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: center; vertical-align: top; font-size: 13px; }
th { background: #f0f0f0; }
figure { display: inline-block; margin: 2px; }
figcaption { font-size: 11px; }
img.thumb { width: %dpx; height: %dpx; image-rendering: pixelated; }
div.inputs { display: flex; gap: 2px; }
pre { background: #f7f7f7; padding: 1em; }
""" % (THUMB_PX, THUMB_PX)

INTRO = (
    "A pretrained avatar prior is adapted to a held-out subject from K input images and scored on held-out "
    "views and expressions. Methods: <b>{prior}</b> optimises the identity latent, then the network weights, "
    "the 3DMM fit and the cameras; <b>{fixed}</b> runs the second stage with the 3DMM fit and cameras frozen; "
    "<b>{latent}</b> runs the first stage only; <b>{scratch}</b> trains the same model on the K images alone. "
    "Condition <i>estimated</i> uses the cameras as calibrated, <i>perturbed</i> rotates the input cameras by "
    "about one degree. Means are over rendered evaluation frames.")


def _report_html(scores: pd.DataFrame, summary: pd.DataFrame, plot_png: bytes, grids: list[GridRow],
                 notes: Sequence[str], settings: dict[str, Any], title: str) -> str:
    intro = INTRO.format(prior=_e(method_label("prior")), fixed=_e(method_label("prior_fixed_geometry")),
                         latent=_e(method_label("latent_only")), scratch=_e(method_label("scratch")))
    notes_html = "<ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>" if notes else "<p>None.</p>"
    subject_header, subject_rows = _per_subject_rows(scores)
    settings_json = json.dumps(settings, indent=2, default=str)
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">', f"<title>{_e(title)}</title>",
        f"<style>{STYLE}</style>", "</head>", "<body>",
        f"<h1>{_e(title)}</h1>", f"<p>{intro}</p>",
        "<h2>Summary</h2>", html_table(SUMMARY_HEADER, _summary_rows(summary)),
        f'<img class="plot" alt="PSNR against K" src="{bytes_data_uri(plot_png)}">',
        "<h2>Notes</h2>", notes_html,
        "<h2>Mean PSNR per subject (dB)</h2>", html_table(subject_header, subject_rows),
        "<h2>Examples</h2>", image_grid_html(grids),
        f"<details><summary>Settings</summary><pre>{_e(settings_json)}</pre></details>",
        "</body>", "</html>", ""])


def build_report_html(scores: pd.DataFrame, grids: list[GridRow], notes: Sequence[str], settings: dict[str, Any],
                      title: str = "Few-shot adaptation report") -> str:
    """The whole report as one self-contained HTML5 document."""
    if scores.empty:
        raise ValueError("no scores to report")
    summary = summary_table(scores)
    return _report_html(scores, summary, psnr_vs_k_png(summary), grids, notes, settings, title)


def write_report(directory: Path, scores: pd.DataFrame, grids: list[GridRow], notes: Sequence[str],
                 settings: dict[str, Any]) -> dict[str, Path]:
    """Write the scores (Parquet), the HTML report, the PSNR-vs-K plot and the summary (markdown), named by
    ``capture_schema.derived_layout``; returns their paths by name (``scores``, ``html``, ``plot``, ``summary``).

    Everything is rendered before the first write, so a failure leaves no new file behind.
    """
    if scores.empty:
        raise ValueError("no scores to report")
    directory = Path(directory)
    summary = summary_table(scores)
    plot = psnr_vs_k_png(summary)
    buf = io.BytesIO()
    scores.to_parquet(buf, engine="pyarrow", index=False)
    contents = {
        "scores": (layout.FEWSHOT_SCORES_FILE, buf.getvalue()),
        "html": (layout.FEWSHOT_REPORT_FILE, _report_html(scores, summary, plot, grids, notes, settings,
                                                          "Few-shot adaptation report").encode("utf-8")),
        "plot": (layout.FEWSHOT_PLOT_FILE, plot),
        "summary": (layout.FEWSHOT_SUMMARY_FILE, (summary_markdown(summary) + "\n").encode("utf-8")),
    }
    return {name: atomic_write_bytes(directory / filename, data) for name, (filename, data) in contents.items()}
