"""``latent_space_report``: how the avatar prior's identity latent space behaves.

Thin by design: the stage is ``training.latent.stage.run_latent_report``. Everything goes into
``derived_layout.latent_dir(backbone)``, replaced whole: ``metrics.parquet`` (one row: smoothness of
interpolations between training subjects, the plausible share of sampled identities, the coverage
of the held-out subjects' adapted codes), ``interpolations.parquet``, ``samples.parquet``,
``coverage.parquet``, ``report.html`` (self-contained), ``profiles.png``, ``samples.png`` and one
strip (PNG) and animation (GIF) per interpolation under ``interpolations/<start>/<end>``.
Coverage reads the codes the few-shot report adapted (``fewshot/<backbone>/codes.parquet``), so the
asset runs after ``fewshot_report``. A few seconds on a CPU at the cpu preset.
"""

from typing import Optional

import dagster as dg

from capture_schema import derived_layout as layout
from pipelines.assets.dataset_index import dataset_index
from pipelines.assets.fewshot import fewshot_report
from pipelines.assets.metadata_images import png_markdown
from pipelines.assets.prior import avatar_prior
from pipelines.assets.store_io import load_face_model, stage_failures
from pipelines.resources import FaceModelResource, StorageResource
from pipelines.run_config import from_run_config, mirrored
from training.latent.config import LatentConfig
from training.settings import default_of


class LatentSpaceReportConfig(dg.Config):
    """Which prior, and what to render and measure (defaults: ``training.latent.config.LatentConfig``)."""

    backbone: str = "anchored"
    """The prior to examine (``prior/<backbone>/checkpoint.pt``)."""
    steps: int = default_of(LatentConfig, "steps")
    """Images per interpolation, both ends included."""
    pairs: int = default_of(LatentConfig, "pairs")
    """Pairs of training subjects interpolated (a seeded draw)."""
    samples: int = default_of(LatentConfig, "samples")
    """Identities sampled from the Gaussian fitted to the training codes."""
    seed: int = default_of(LatentConfig, "seed")
    """Seeds the pair draw and the samples."""
    camera: str = default_of(LatentConfig, "camera")
    """Camera id every image is rendered from."""
    expression: str = default_of(LatentConfig, "expression")
    """Expression every image is rendered with."""
    resolution: Optional[int] = None
    """Rendered side in pixels (None = the prior's training resolution)."""


@dg.asset(deps=[avatar_prior, fewshot_report, dataset_index], group_name="prior", kinds={"pytorch", "html"})
def latent_space_report(context: dg.AssetExecutionContext, config: LatentSpaceReportConfig,
                        storage: StorageResource, face_model: FaceModelResource) -> dg.MaterializeResult:
    """Interpolations, sampled identities and coverage of the prior's identity codes, with their metrics."""
    from training.latent.report import EXPLAINED, summary_markdown
    from training.latent.stage import run_latent_report

    latent_config = from_run_config(LatentConfig(), mirrored(config, LatentConfig), "latent_space_report")
    store = storage.storage()
    with stage_failures():
        analysis = run_latent_report(store, load_face_model(face_model), latent_config, config.backbone,
                                     log=context.log.info)
    summary = analysis.summary()
    strip = store.read_bytes(layout.join(layout.latent_dir(config.backbone), layout.LATENT_SAMPLES_IMAGE))
    return dg.MaterializeResult(metadata={
        "report": dg.MetadataValue.url(store.uri(layout.latent_report(config.backbone))),
        "report_path": dg.MetadataValue.path(store.uri(layout.latent_report(config.backbone))),
        "metrics": dg.MetadataValue.path(store.uri(layout.latent_metrics(config.backbone))),
        "summary": dg.MetadataValue.md(summary_markdown(summary)),
        "explained": dg.MetadataValue.md("\n".join(f"- **{k}**: {v}" for k, v in EXPLAINED.items())),
        "samples_picture": dg.MetadataValue.md(png_markdown(strip, "mean code and sampled identities")),
        **{k: dg.MetadataValue.float(float(summary[k])) for k in
           ("smoothness", "smoothness_max", "monotonic_share", "plausible_share", "detected_share", "mean_code_nme",
            "coverage_mean", "coverage_max")},
        "mean_code_plausible": bool(summary["mean_code_plausible"]),
        "identities": int(summary["identities"]), "samples": int(summary["samples"]),
        "held_out": int(summary["held_out"]), "seconds": round(float(summary["seconds"]), 2),
    })
