"""The ablation comparison: every configuration's few-shot scores and training cost side by side.

One row per (configuration, K) of the prior-based few-shot method: the budget split
(identities x views x expressions), mean PSNR over the repeat seeds and the held-out
frames with its 95% bootstrap interval and per-seed means, the paired difference to the
best configuration at that K with its interval and verdict (``training.ablation.stats``),
mean SSIM / SSIM in the head mask, what training one prior cost (mean over seeds), and the prior's
identity latent space (``training.latent``, mean over seeds, the same on every K row of a configuration):
smoothness of interpolations between its training identities, the plausible share of sampled
identities and the coverage of the held-out subjects' adapted codes. Written as Parquet, a markdown table (Dagster metadata), a PNG and a self-contained HTML page.
"""

from __future__ import annotations

import html
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from capture_schema import derived_layout as layout
from capture_schema.atomic import atomic_write_bytes
from training.ablation.spec import AblationSpec
from training.ablation.stats import CONFIDENCE, LEVELS, mean_interval, paired_difference
from training.fewshot.report import STYLE, bytes_data_uri, html_table

METHOD = "prior"


def _frames(df: pd.DataFrame) -> pd.Series:
    return df.set_index(list(LEVELS))["psnr"]


#: Latent-space columns of the table: (column, summary field of ``training.latent``, what it says).
LATENT_COLUMNS = (("smoothness", "smoothness", "largest interpolation step over the mean step, 1.0 = even"),
                  ("plausible_share", "plausible_share", "share of sampled identities mediapipe accepts"),
                  ("coverage", "coverage_mean", "held-out code's distance to the nearest training code over the "
                                                "training codes' spread"))


def _nanmean(values: list[Any]) -> float:
    finite = [float(v) for v in values if v is not None and not pd.isna(v)]
    return float(np.mean(finite)) if finite else float("nan")


def latent_columns(latent: dict[int, dict[str, Any]] | None) -> dict[str, float]:
    """A configuration's latent-space columns: each metric's mean over the repeats that have it (NaN if none)."""
    rows = list((latent or {}).values())
    return {column: _nanmean([r.get(field) for r in rows]) for column, field, _ in LATENT_COLUMNS}


def comparison_table(spec: AblationSpec, scores: dict[str, pd.DataFrame],
                     costs: dict[str, dict[int, dict[str, Any]]],
                     latent: dict[str, dict[int, dict[str, Any]]] | None = None) -> pd.DataFrame:
    """Rows (configuration in spec order, K): budget split, few-shot means with intervals, training cost, the
    latent-space metrics, and the paired difference to the best configuration at that K. ``scores[name]`` holds
    every repeat's few-shot rows with a ``seed`` column; ``costs[name][seed]`` is that repeat's prior training
    report; ``latent[name][seed]`` its latent-space summary row (absent: NaN columns)."""
    rows, frames = [], {}
    for config in spec.configurations:
        df = scores[config.name]
        df = df[(df["method"] == METHOD) & (df["condition"] == "estimated")]
        cost = list(costs[config.name].values()) or [{}]
        for k, group in df.groupby("k"):
            frames[config.name, int(k)] = _frames(group)
            psnr = mean_interval(frames[config.name, int(k)])
            rows.append({"configuration": config.name, "images": config.images, "identities": config.identities,
                         "views_per_identity": config.n_views, "expressions_per_identity": config.n_expressions,
                         "k": int(k), "seeds": ",".join(map(str, psnr.per_seed)), "frames": psnr.n_frames,
                         "subjects": group["subject_id"].nunique(), "psnr_mean": psnr.mean,
                         "psnr_ci_low": psnr.ci_low, "psnr_ci_high": psnr.ci_high,
                         **{f"psnr_seed{s}": v for s, v in psnr.per_seed.items()},
                         "ssim_mean": float(group["ssim"].mean()),
                         "ssim_mask_mean": float(np.nanmean(group["ssim_mask"])) if group["ssim_mask"].notna().any()
                         else float("nan"),
                         "train_steps": int(round(np.mean([c.get("steps", 0) for c in cost]))),
                         "train_seconds": float(np.mean([c.get("train_seconds", 0) for c in cost])),
                         **latent_columns((latent or {}).get(config.name))})
    if not rows:
        raise ValueError("no few-shot scores of the prior method in any configuration")
    table = pd.DataFrame(rows)
    best = table.loc[table.groupby("k")["psnr_mean"].idxmax()].set_index("k")["configuration"]
    table["best_configuration"] = table["k"].map(best)
    versus = []
    for r in table.itertuples():
        d = paired_difference(frames[r.configuration, r.k], frames[best[r.k], r.k])
        is_best = r.configuration == best[r.k]
        versus.append({"psnr_vs_best": d.mean, "psnr_vs_best_ci_low": d.ci_low, "psnr_vs_best_ci_high": d.ci_high,
                       **{f"psnr_vs_best_seed{s}": v for s, v in d.per_seed.items()}, "frames_vs_best": d.n_frames,
                       "seeds_agree": pd.NA if is_best else d.seeds_agree,
                       "distinguishable": pd.NA if is_best else d.distinguishable})
    versus_table = pd.DataFrame(versus).astype({"seeds_agree": "boolean", "distinguishable": "boolean"})
    return pd.concat([table, versus_table], axis=1)


def _ci(low: float, high: float, spec: str) -> str:
    return "[n/a]" if math.isnan(low) or math.isnan(high) else f"[{low:{spec}}, {high:{spec}}]"


def _seeds(r: Any) -> list[str]:
    return [s for s in str(r.seeds).split(",") if s]


def verdict(r: Any) -> str:
    """``best``, ``distinguishable, both seeds agree`` or ``within noise`` (with why) for a table row."""
    if pd.isna(r.distinguishable):
        return "best"
    n = len(_seeds(r))
    if r.distinguishable:
        return "distinguishable, " + ("one seed" if n == 1 else "both seeds agree" if n == 2
                                      else f"all {n} seeds agree")
    if r.psnr_vs_best_ci_low > 0 or r.psnr_vs_best_ci_high < 0:
        return "within noise: the seeds disagree"
    return "within noise"


def _psnr_text(r: Any) -> str:
    return f"{r.psnr_mean:.2f} {_ci(r.psnr_ci_low, r.psnr_ci_high, '.2f')}"


def _per_seed_text(r: Any) -> str:
    return " / ".join(f"{getattr(r, f'psnr_seed{s}'):.2f}" for s in _seeds(r))


def _vs_best_text(r: Any) -> str:
    return "—" if pd.isna(r.distinguishable) else \
        f"{r.psnr_vs_best:+.2f} {_ci(r.psnr_vs_best_ci_low, r.psnr_vs_best_ci_high, '+.2f')}"


def _latent_texts(r: Any) -> list[str]:
    """Smoothness, plausible share and coverage of a table row as text ("n/a" where not measurable)."""
    def num(value: float, spec: str) -> str:
        return "n/a" if pd.isna(value) else f"{value:{spec}}"

    return [num(getattr(r, "smoothness", float("nan")), ".2f"), num(getattr(r, "plausible_share", float("nan")), ".0%"),
            num(getattr(r, "coverage", float("nan")), ".2f")]


def comparison_markdown(table: pd.DataFrame) -> str:
    lines = [f"| configuration | images = ids x views x exprs | K | frames | PSNR (dB) [{CONFIDENCE:.0%} CI] "
             f"| per seed | vs best [{CONFIDENCE:.0%} CI] | verdict | SSIM | SSIM in mask | train steps | train s "
             "| smoothness | plausible samples | coverage |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.configuration} | {r.images} = {r.identities} x {r.views_per_identity} x "
                     f"{r.expressions_per_identity} | {r.k} | {r.frames} | {_psnr_text(r)} | {_per_seed_text(r)} | "
                     f"{_vs_best_text(r)} | {verdict(r)} | {r.ssim_mean:.3f} | {r.ssim_mask_mean:.3f} | "
                     f"{r.train_steps} | {r.train_seconds:.0f} | " + " | ".join(_latent_texts(r)) + " |")
    return "\n".join(lines)


def latent_notes(table: pd.DataFrame) -> list[str]:
    """The closing note on the latent space: each configuration's smoothness, plausible share and coverage
    (mean over seeds), ordered by identities; empty when no configuration has latent metrics."""
    if "smoothness" not in table or table[[c for c, _, _ in LATENT_COLUMNS]].isna().all().all():
        return []
    per_config = table.drop_duplicates("configuration").sort_values("identities", kind="stable")
    parts = []
    for r in per_config.itertuples():
        smooth, plausible, cover = _latent_texts(r)
        why = " (one identity: nothing to interpolate or cover)" if r.identities < 2 else ""
        parts.append(f"{r.configuration} ({r.identities} identit{'y' if r.identities == 1 else 'ies'}): smoothness "
                     f"{smooth}, plausible samples {plausible}, coverage {cover}{why}")
    return ["Latent space by number of training identities (mean over seeds; smoothness 1.0 = even steps, "
            "coverage <= 1 = held-out faces land as close to the training codes as those are to each other): "
            + "; ".join(parts)]


def margins(table: pd.DataFrame) -> list[str]:
    """Per K, the best configuration and each other one's paired difference to it with its interval and verdict
    (the ablation's answer: which gaps are real, which are noise)."""
    lines = []
    for k, group in table.groupby("k"):
        ranked = group.sort_values("psnr_mean", ascending=False, kind="stable")
        best = next(ranked.itertuples())
        behind = "; ".join(f"{r.configuration} {r.psnr_vs_best:+.2f} dB "
                           f"{_ci(r.psnr_vs_best_ci_low, r.psnr_vs_best_ci_high, '+.2f')} ({verdict(r)})"
                           for r in ranked.itertuples() if r.configuration != best.configuration)
        lines.append(f"K={int(k)}: {best.configuration} is best at {best.psnr_mean:.2f} dB "
                     f"{_ci(best.psnr_ci_low, best.psnr_ci_high, '.1f')}" + (f"; {behind}" if behind else ""))
    return lines


def comparison_png(table: pd.DataFrame) -> bytes:
    """Grouped bars: mean few-shot PSNR per configuration, one bar per K, error bars the 95% bootstrap interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configurations = list(dict.fromkeys(table["configuration"]))
    ks = sorted(table["k"].unique())
    width = 0.8 / len(ks)
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(configurations)), 4), dpi=100)
    for j, k in enumerate(ks):
        sub = table[table["k"] == k].set_index("configuration").reindex(configurations)
        x = np.arange(len(configurations)) + (j - (len(ks) - 1) / 2) * width
        mean = sub["psnr_mean"].to_numpy(float)
        yerr = np.nan_to_num(np.stack([mean - sub["psnr_ci_low"].to_numpy(float),
                                       sub["psnr_ci_high"].to_numpy(float) - mean]))
        bars = ax.bar(x, mean, width, yerr=yerr, capsize=3, label=f"K = {k}")
        ax.bar_label(bars, fmt="%.1f", label_type="center", color="white", fontsize=8)
    ax.set_xticks(np.arange(len(configurations)), configurations)
    ax.set_ylabel("few-shot PSNR on held-out frames (dB)")
    ax.set_title(f"few-shot PSNR per configuration ({CONFIDENCE:.0%} bootstrap CI)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def comparison_html(spec: AblationSpec, table: pd.DataFrame, plot: bytes) -> str:
    ci = f"{CONFIDENCE:.0%} CI"
    header = ["configuration", "images = ids x views x exprs", "K", "frames", f"PSNR (dB) [{ci}]", "per seed",
              f"vs best [{ci}]", "verdict", "SSIM", "SSIM in mask", "train steps", "train s", "smoothness",
              "plausible samples", "coverage"]
    rows = [[r.configuration, f"{r.images} = {r.identities} x {r.views_per_identity} x {r.expressions_per_identity}",
             r.k, r.frames, _psnr_text(r), _per_seed_text(r), _vs_best_text(r), verdict(r), f"{r.ssim_mean:.3f}",
             f"{r.ssim_mask_mean:.3f}", r.train_steps, f"{r.train_seconds:.0f}", *_latent_texts(r)]
            for r in table.itertuples()]
    latent = latent_notes(table)
    latent_html = ("<h2>Latent space</h2><p>" + " ".join(
        f"<b>{html.escape(column)}</b>: {html.escape(text)}." for column, _, text in LATENT_COLUMNS) + "</p><ul>"
        + "".join(f"<li>{html.escape(line)}</li>" for line in latent) + "</ul>") if latent else ""
    described = "".join(f"<li><b>{html.escape(c.name)}</b>: {html.escape(c.budget_text())}"
                        f"{' — ' + html.escape(c.description) if c.description else ''}</li>"
                        for c in spec.configurations)
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', '<head><meta charset="utf-8">',
        "<title>Balance ablation report</title>", f"<style>{STYLE}</style></head>", "<body>",
        "<h1>Balance ablation report</h1>",
        "<p>Each configuration spends the same image budget on the training split in a different balance of "
        "identities, views and expressions; its prior is adapted few-shot to the held-out subjects and scored "
        "on their other views and expressions (method: both adaptation stages). Each configuration is repeated "
        f"with seeds {html.escape(', '.join(map(str, spec.seeds)))} (another subset draw and prior initialisation "
        "each); every repeat scores the same held-out frames.</p>",
        f"<p>PSNR is the mean over seeds and frames with its {ci} (bootstrap over frames). A configuration's gap "
        "to the best is the mean over frames of the per-frame difference (averaged over seeds); it is "
        "<i>distinguishable</i> when its interval excludes 0 and every seed's own gap has the same sign, "
        "otherwise <i>within noise</i>. Training cost is per prior, mean over seeds.</p>",
        f"<ul>{described}</ul>", "<h2>Margins</h2>",
        "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in margins(table)) + "</ul>",
        html_table(header, rows),
        f'<img alt="few-shot PSNR per configuration" src="{bytes_data_uri(plot)}">', latent_html,
        f"<details><summary>Spec ({html.escape(spec.source)})</summary><pre>"
        f"{html.escape(json.dumps(spec.to_dict(), indent=2))}</pre></details>",
        "</body>", "</html>", ""])


def write_ablation_report(directory: Path, spec: AblationSpec, table: pd.DataFrame) -> dict[str, Path]:
    """The table (Parquet), HTML, plot and markdown in ``directory`` (names from ``capture_schema.derived_layout``);
    their paths by name (``table``, ``html``, ``plot``, ``markdown``)."""
    plot = comparison_png(table)
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    markdown = "\n".join([comparison_markdown(table), "", *(f"- {line}" for line in margins(table) + latent_notes(table)),
                          ""])
    contents = {"table": (layout.ABLATION_TABLE_FILE, buf.getvalue()),
                "html": (layout.ABLATION_HTML_FILE, comparison_html(spec, table, plot).encode()),
                "plot": (layout.ABLATION_PLOT_FILE, plot),
                "markdown": (layout.ABLATION_MARKDOWN_FILE, markdown.encode())}
    return {name: atomic_write_bytes(Path(directory) / fn, data) for name, (fn, data) in contents.items()}
