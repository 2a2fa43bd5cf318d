"""The ablation comparison: every configuration's few-shot scores and training cost side by side.

One row per (configuration, K) of the prior-based few-shot method: the budget split
(identities x views x expressions), mean PSNR / SSIM / SSIM in the head mask over
the held-out frames, and what training the prior cost. Written as Parquet, a
markdown table (Dagster metadata), a PNG and a self-contained HTML page.
"""

from __future__ import annotations

import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from capture_schema import derived_layout as layout
from capture_schema.atomic import atomic_write_bytes
from training.ablation.spec import AblationSpec
from training.fewshot.report import STYLE, bytes_data_uri, html_table

METHOD = "prior"


def comparison_table(spec: AblationSpec, scores: dict[str, pd.DataFrame], costs: dict[str, dict[str, Any]]
                     ) -> pd.DataFrame:
    """Rows (configuration in spec order, K): budget split, few-shot means, training cost, and the paired
    comparison with the best configuration at that K (every configuration scores the same held-out frames)."""
    rows, frames = [], {}
    for config in spec.configurations:
        df = scores[config.name]
        df = df[(df["method"] == METHOD) & (df["condition"] == "estimated")]
        cost = costs[config.name]
        for k, group in df.groupby("k"):
            frames[config.name, int(k)] = group.set_index(["subject_id", "key"])["psnr"]
            rows.append({"configuration": config.name, "images": config.images, "identities": config.identities,
                         "views_per_identity": config.n_views, "expressions_per_identity": config.n_expressions,
                         "k": int(k), "frames": len(group), "subjects": group["subject_id"].nunique(),
                         "psnr_mean": float(group["psnr"].mean()), "psnr_std": float(group["psnr"].std()),
                         "ssim_mean": float(group["ssim"].mean()),
                         "ssim_mask_mean": float(np.nanmean(group["ssim_mask"])) if group["ssim_mask"].notna().any()
                         else float("nan"),
                         "train_steps": int(cost.get("steps", 0)), "train_seconds": float(cost.get("train_seconds", 0))})
    if not rows:
        raise ValueError("no few-shot scores of the prior method in any configuration")
    table = pd.DataFrame(rows)
    table["psnr_vs_best"] = table["psnr_mean"] - table.groupby("k")["psnr_mean"].transform("max")
    best = table.loc[table.groupby("k")["psnr_mean"].idxmax()].set_index("k")["configuration"]
    table["best_configuration"] = table["k"].map(best)
    below, shared = [], []
    for r in table.itertuples():
        mine, theirs = frames[r.configuration, r.k].align(frames[best[r.k], r.k], join="inner")
        below.append(int((mine < theirs).sum()))
        shared.append(len(mine))
    table["frames_below_best"], table["frames_shared_with_best"] = below, shared
    return table


def comparison_markdown(table: pd.DataFrame) -> str:
    lines = ["| configuration | images = ids x views x exprs | K | PSNR (dB) | vs best | SSIM | SSIM in mask "
             "| train steps | train s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.configuration} | {r.images} = {r.identities} x {r.views_per_identity} x "
                     f"{r.expressions_per_identity} | {r.k} | {r.psnr_mean:.2f} ± {r.psnr_std:.2f} | "
                     f"{r.psnr_vs_best:+.2f} | {r.ssim_mean:.3f} | {r.ssim_mask_mean:.3f} | {r.train_steps} | "
                     f"{r.train_seconds:.0f} |")
    return "\n".join(lines)


def margins(table: pd.DataFrame) -> list[str]:
    """Per K, the best configuration and how far behind it each other one is (the ablation's answer)."""
    lines = []
    for k, group in table.groupby("k"):
        ranked = group.sort_values("psnr_mean", ascending=False)
        best = ranked.iloc[0]
        behind = ", ".join(f"{r.configuration} {r.psnr_vs_best:+.2f} dB (below on {r.frames_below_best}/"
                           f"{r.frames_shared_with_best} frames)" for r in ranked.iloc[1:].itertuples())
        lines.append(f"K={int(k)}: {best.configuration} is best at {best.psnr_mean:.2f} dB"
                     + (f"; {behind}" if behind else ""))
    return lines


def comparison_png(table: pd.DataFrame) -> bytes:
    """Grouped bars: mean few-shot PSNR per configuration, one bar per K (± std over frames)."""
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
        bars = ax.bar(x, sub["psnr_mean"], width, yerr=np.nan_to_num(sub["psnr_std"].to_numpy(float)), capsize=3,
                      label=f"K = {k}")
        ax.bar_label(bars, fmt="%.1f", label_type="center", color="white", fontsize=8)
    ax.set_xticks(np.arange(len(configurations)), configurations)
    ax.set_ylabel("few-shot PSNR on held-out frames (dB)")
    ax.set_title("few-shot PSNR per configuration (± std over frames)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def comparison_html(spec: AblationSpec, table: pd.DataFrame, plot: bytes) -> str:
    header = ["configuration", "images = ids x views x exprs", "K", "frames", "PSNR (dB)", "vs best", "SSIM",
              "SSIM in mask", "train steps", "train s"]
    rows = [[r.configuration, f"{r.images} = {r.identities} x {r.views_per_identity} x {r.expressions_per_identity}",
             r.k, r.frames, f"{r.psnr_mean:.2f} ± {r.psnr_std:.2f}", f"{r.psnr_vs_best:+.2f}", f"{r.ssim_mean:.3f}",
             f"{r.ssim_mask_mean:.3f}", r.train_steps, f"{r.train_seconds:.0f}"] for r in table.itertuples()]
    described = "".join(f"<li><b>{html.escape(c.name)}</b>: {html.escape(c.budget_text())}"
                        f"{' — ' + html.escape(c.description) if c.description else ''}</li>"
                        for c in spec.configurations)
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', '<head><meta charset="utf-8">',
        "<title>Balance ablation report</title>", f"<style>{STYLE}</style></head>", "<body>",
        "<h1>Balance ablation report</h1>",
        "<p>Each configuration spends the same image budget on the training split in a different balance of "
        "identities, views and expressions; its prior is adapted few-shot to the held-out subjects and scored "
        "on their other views and expressions (method: both adaptation stages).</p>",
        f"<ul>{described}</ul>", "<h2>Margins</h2>",
        "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in margins(table)) + "</ul>",
        html_table(header, rows),
        f'<img alt="few-shot PSNR per configuration" src="{bytes_data_uri(plot)}">',
        f"<details><summary>Spec ({html.escape(spec.source)})</summary><pre>"
        f"{html.escape(json.dumps(spec.to_dict(), indent=2))}</pre></details>",
        "</body>", "</html>", ""])


def write_ablation_report(directory: Path, spec: AblationSpec, table: pd.DataFrame) -> dict[str, Path]:
    """The table (Parquet), HTML, plot and markdown in ``directory`` (names from ``capture_schema.derived_layout``);
    their paths by name (``table``, ``html``, ``plot``, ``markdown``)."""
    plot = comparison_png(table)
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    markdown = "\n".join([comparison_markdown(table), "", *(f"- {line}" for line in margins(table)), ""])
    contents = {"table": (layout.ABLATION_TABLE_FILE, buf.getvalue()),
                "html": (layout.ABLATION_HTML_FILE, comparison_html(spec, table, plot).encode()),
                "plot": (layout.ABLATION_PLOT_FILE, plot),
                "markdown": (layout.ABLATION_MARKDOWN_FILE, markdown.encode())}
    return {name: atomic_write_bytes(Path(directory) / fn, data) for name, (fn, data) in contents.items()}
