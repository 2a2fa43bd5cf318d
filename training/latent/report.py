"""The latent-space report of one prior: Parquet tables, a self-contained HTML page, strips and animations.

File names come from ``capture_schema.derived_layout`` (``LATENT_*``); the same folder is written for
the main prior (``latent/<backbone>``) and for every ablation repeat (``ablations/<name>/seed-<s>/latent``).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from capture_schema import derived_layout as layout
from capture_schema.atomic import atomic_write_bytes
from training.fewshot.report import STYLE, bytes_data_uri, html_table
from training.latent.analyse import LatentAnalysis
from training.latent.interpolate import Interpolation, animation_gif, strip_png
from training.latent.plausibility import PLAUSIBLE_NME

#: What each summary number means, for the report and the Dagster metadata (one line each).
EXPLAINED = {
    "smoothness": "largest step-to-step image distance over the mean step along an interpolation between two "
                  "training subjects (mean over pairs; 1.0 = perfectly even)",
    "plausible_share": f"share of sampled identities in which mediapipe finds a face whose landmarks lie within "
                       f"NME {PLAUSIBLE_NME} of the rendered 3DMM's",
    "coverage_mean": "held-out subjects' adapted codes: distance to the nearest training code over the median "
                     "nearest-neighbour distance among training codes (<= 1: as close as training faces are to "
                     "each other)",
}


def _num(value: Any, spec: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:{spec}}"


def interpolation_rows(paths: Sequence[Interpolation], kind: str) -> list[dict[str, Any]]:
    """One row per step of every path: weight, distance to both ends and to the next step."""
    rows = []
    for p in paths:
        profile, steps, smooth = p.profile, p.step_distances, p.smoothness
        for i, w in enumerate(p.weights):
            rows.append({"kind": kind, "start": p.start, "end": p.end, "step": i, "weight": float(w),
                         "to_start": float(profile.to_start[i]), "to_end": float(profile.to_end[i]),
                         "step_distance": float(steps[i]) if i < len(steps) else float("nan"),
                         "smoothness": smooth, "monotonic": profile.monotonic})
    return rows


def tables(analysis: LatentAnalysis, extra: Mapping[str, Any] | None = None) -> dict[str, pd.DataFrame]:
    """``metrics`` (one row), ``interpolations``, ``samples`` and ``coverage`` as data frames."""
    summary = {k: v for k, v in analysis.summary().items() if k != "seconds"}  # files stay byte-identical on a rerun
    metrics = pd.DataFrame([{**summary, **dict(extra or {})}])
    steps = pd.DataFrame(interpolation_rows(analysis.training, "training")
                         + interpolation_rows(analysis.held_out, "held_out"),
                         columns=["kind", "start", "end", "step", "weight", "to_start", "to_end", "step_distance",
                                  "smoothness", "monotonic"])
    checks = ([("mean", 0, analysis.mean_check)] if analysis.mean_check else []) + \
        [("sample", i, c) for i, c in enumerate(analysis.sample_checks)]
    samples = pd.DataFrame([{"kind": kind, "sample": i, "detected": c.detected, "nme": c.nme,
                             "plausible": c.plausible} for kind, i, c in checks],
                           columns=["kind", "sample", "detected", "nme", "plausible"])
    return {"metrics": metrics, "interpolations": steps, "samples": samples, "coverage": analysis.coverage}


def profiles_png(paths: Sequence[Interpolation]) -> bytes:
    """Distance of every step to the start (solid) and to the end (dashed), one colour per path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for i, p in enumerate(paths):
        colour = f"C{i % 10}"
        ax.plot(p.weights, p.profile.to_start, "-o", color=colour, ms=3, label=f"{p.start} -> {p.end}")
        ax.plot(p.weights, p.profile.to_end, "--o", color=colour, ms=3)
    ax.set_xlabel("interpolation weight")
    ax.set_ylabel("RMS image distance")
    ax.set_title("distance to the start (solid) and to the end (dashed)")
    ax.grid(alpha=0.3)
    if paths:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def summary_markdown(summary: Mapping[str, Any]) -> str:
    """The three metrics and what they rest on, as a markdown table (Dagster metadata)."""
    rows = [("smoothness (mean / max over pairs)", f"{_num(summary['smoothness'])} / {_num(summary['smoothness_max'])}"
             f" over {summary['pairs']} pair(s), {_num(summary['monotonic_share'], '.0%')} monotonic"),
            ("plausible samples", f"{_num(summary['plausible_share'], '.0%')} of {summary['samples']} "
             f"(detected {_num(summary['detected_share'], '.0%')}, median NME {_num(summary['sample_nme_median'])})"),
            ("mean code", f"{'plausible' if summary['mean_code_plausible'] else 'not plausible'}, "
             f"NME {_num(summary['mean_code_nme'])}"),
            ("coverage (mean / max)", f"{_num(summary['coverage_mean'])} / {_num(summary['coverage_max'])} over "
             f"{summary['held_out']} held-out subject(s), K={summary['coverage_k']}"),
            ("training identities (Gaussian rank)", f"{summary['identities']} ({summary['gaussian_rank']})")]
    return "\n".join(["| metric | value |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)])


def _gif_uri(data: bytes) -> str:
    return "data:image/gif;base64," + base64.b64encode(data).decode("ascii")


def _strips_html(paths: Sequence[Interpolation], gifs: Mapping[tuple[str, str], bytes]) -> str:
    parts = []
    for p in paths:
        parts.append(f"<h3>{html.escape(p.start)} &rarr; {html.escape(p.end)}: smoothness {_num(p.smoothness)}, "
                     f"{'monotonic' if p.profile.monotonic else 'NOT monotonic'}</h3>"
                     f'<img alt="{html.escape(p.start)} to {html.escape(p.end)}" '
                     f'src="{bytes_data_uri(strip_png(p.images))}"> '
                     f'<img alt="animation" src="{_gif_uri(gifs[p.start, p.end])}">')
    return "\n".join(parts) or "<p>None (fewer than two training identities, or no adapted codes).</p>"


def report_html(analysis: LatentAnalysis, frames: dict[str, pd.DataFrame], plot: bytes,
                gifs: Mapping[tuple[str, str], bytes], samples_png: bytes, title: str, notes: Sequence[str]) -> str:
    summary = frames["metrics"].iloc[0].to_dict()
    cov = frames["coverage"]
    cov_rows = [[r.subject_id, r.k, r.nearest_subject, _num(r.distance), _num(r.spread), _num(r.coverage)]
                for r in cov.itertuples()]
    checks = frames["samples"]
    mean = f"<p>Mean code: {'plausible' if summary['mean_code_plausible'] else 'NOT plausible'} " \
           f"(NME {_num(summary['mean_code_nme'])}).</p>"
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', '<head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head>", "<body>", f"<h1>{html.escape(title)}</h1>",
        "<ul>" + "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in EXPLAINED.items()) + "</ul>",
        "<h2>Summary</h2>", html_table(["metric", "value"], [line.strip("| ").split(" | ")
                                                           for line in summary_markdown(summary).splitlines()[2:]]),
        "<h2>Interpolations between training subjects</h2>", _strips_html(analysis.training, gifs),
        f'<img alt="distance to the ends" src="{bytes_data_uri(plot)}">',
        "<h2>Held-out subjects: from the nearest training subject to the adapted code</h2>",
        _strips_html(analysis.held_out, gifs),
        html_table(["held-out subject", "K", "nearest training subject", "distance", "training spread", "coverage"],
                   cov_rows) if cov_rows else "",
        f"<h2>Samples of the Gaussian (rank {summary['gaussian_rank']}) on the 3DMM mean shape</h2>",
        f'<img alt="samples" src="{bytes_data_uri(samples_png)}">', mean,
        html_table(["sample", "detected", "NME", "plausible"],
                   [[r.sample, r.detected, _num(r.nme), r.plausible] for r in checks.itertuples()
                    if r.kind == "sample"]),
        "<h2>Notes</h2>", "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>",
        f"<details><summary>Settings</summary><pre>{html.escape(json.dumps(analysis.config.to_dict(), indent=2))}"
        "</pre></details>", "</body>", "</html>", ""])


def write_latent_report(directory: Path, analysis: LatentAnalysis, extra: Mapping[str, Any] | None = None,
                        title: str = "Identity latent space", notes: Sequence[str] = ()) -> dict[str, pd.DataFrame]:
    """Every file of a latent-report folder into ``directory`` (rendered first, then written); the tables."""
    frames = tables(analysis, extra)
    plot = profiles_png(analysis.training)
    paths = list(analysis.training) + list(analysis.held_out)
    gifs = {(p.start, p.end): animation_gif(p.images, analysis.config.frame_ms) for p in paths}
    samples = analysis.samples.images if analysis.samples is not None else np.zeros((0, 1, 1, 3))
    samples_png = strip_png(np.concatenate([analysis.mean.images, samples]) if analysis.mean is not None else samples)
    contents = {layout.LATENT_REPORT_FILE: report_html(analysis, frames, plot, gifs, samples_png, title, notes).encode(),
                layout.LATENT_PLOT_FILE: plot, layout.LATENT_SAMPLES_IMAGE: samples_png}
    for name, frame in (("metrics", layout.LATENT_METRICS_FILE), ("interpolations", layout.LATENT_INTERPOLATIONS_FILE),
                        ("samples", layout.LATENT_SAMPLES_FILE), ("coverage", layout.LATENT_COVERAGE_FILE)):
        buf = io.BytesIO()
        frames[name].to_parquet(buf, index=False)
        contents[frame] = buf.getvalue()
    for p in paths:
        contents[layout.latent_strip(p.start, p.end, ".png")] = strip_png(p.images)
        contents[layout.latent_strip(p.start, p.end, ".gif")] = gifs[p.start, p.end]
    for name, data in contents.items():
        atomic_write_bytes(Path(directory) / name, data)
    return frames
