"""The training report: loss and PSNR curves as a PNG, plus a markdown summary for Dagster."""

from __future__ import annotations

import io
from typing import Any, Sequence


def curves_png(history: Sequence[dict[str, float]], title: str = "avatar prior training") -> bytes:
    """Loss (log scale) and training-ray PSNR against step, side by side, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, (ax_loss, ax_psnr) = plt.subplots(1, 2, figsize=(8, 3), dpi=100)
    ax_loss.plot(steps, [h["loss"] for h in history], color="tab:blue")
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_psnr.plot(steps, [h["psnr"] for h in history], color="tab:green")
    ax_psnr.set_xlabel("step")
    ax_psnr.set_ylabel("PSNR on training rays (dB)")
    for ax in (ax_loss, ax_psnr):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def summary_markdown(config: dict[str, Any], data: dict[str, Any], final: dict[str, float],
                     rays_per_second: float, evaluation: dict[str, float] | None = None) -> str:
    """Config, data statistics and final metrics as markdown tables."""
    lines = ["| metric | value |", "|---|---|"]
    for k, v in final.items():
        lines.append(f"| {k} | {v:.4g} |")
    lines.append(f"| rays / s | {rays_per_second:.0f} |")
    for k, v in (evaluation or {}).items():
        lines.append(f"| {k} | {v:.4g} |")
    lines += ["", "| data | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in data.items()]
    lines += ["", "| config | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in config.items()]
    return "\n".join(lines)
