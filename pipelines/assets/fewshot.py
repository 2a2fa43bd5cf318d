"""``fewshot_report``: adapt the avatar prior to each held-out subject from K images, and report.

Thin by design: the stage is ``training.fewshot.stage.run_fewshot`` (also ``o2a fewshot``). Everything goes into ``derived_layout.fewshot_dir(backbone)``: ``scores.parquet``
(one row per rendered frame, method, K and camera condition), ``report.html``
(self-contained, images embedded), ``psnr_vs_k.png``, ``summary.md``, ``runs.json``
(adaptation time, loss and corrections per run) and the adapted avatars
``adapted/<subject>/<condition>/k<K>/checkpoint.pt`` (prior checkpoints with one
subject: ``load_prior`` renders any camera and expression). The folder is replaced whole.
"""

import base64
from typing import Optional

import dagster as dg

from capture_schema import derived_layout as layout
from pipelines import pools
from pipelines.assets.dataset_index import dataset_index
from pipelines.assets.prior import avatar_prior
from pipelines.assets.store_io import load_face_model, stage_failures
from pipelines.resources import FaceModelResource, StorageResource
from pipelines.run_config import from_run_config, mirrored


class FewShotReportConfig(dg.Config):
    """Which prior to adapt, to whom, and how."""

    preset: str = "cpu"
    """Few-shot preset: ``cpu`` (demo and tests) or ``gpu`` (longer stages, every held-out frame)."""
    backbone: str = "anchored"
    """The avatar prior to adapt (``prior/<backbone>/checkpoint.pt``)."""
    splits: list[str] = ["test"]
    """Index splits whose subjects are adapted to (the prior never trained on them)."""
    subjects: list[str] = []
    """Only these subjects (empty = every subject of ``splits``)."""
    ks: Optional[list[int]] = None
    """Numbers of input images (None = the preset's, 1, 3 and 5)."""
    eval_frames: Optional[int] = None
    """Held-out frames scored per subject (None = the preset's, 0 = every non-input frame)."""
    methods: Optional[list[str]] = None
    """Methods under the estimated cameras (None = all: prior, prior_fixed_geometry, latent_only, scratch)."""
    perturbed_ks: Optional[list[int]] = None
    """K evaluated with 1-degree perturbed input cameras (None = the preset's, [] = none)."""
    stage1_steps: Optional[int] = None
    """Stage 1 steps (None = the preset's)."""
    stage2_steps: Optional[int] = None
    """Stage 2 steps (None = the preset's)."""


def _fewshot_config(config: FewShotReportConfig):
    from training.fewshot.config import PRESETS, FewShotConfig

    if config.preset not in PRESETS:
        raise dg.Failure(f"unknown few-shot preset {config.preset!r}; choose one of {', '.join(sorted(PRESETS))}")
    return from_run_config(PRESETS[config.preset], mirrored(config, FewShotConfig), "fewshot_report")


@dg.asset(deps=[avatar_prior, dataset_index], group_name="prior", kinds={"pytorch", "html"}, pool=pools.TRAINING)
def fewshot_report(context: dg.AssetExecutionContext, config: FewShotReportConfig, storage: StorageResource,
                   face_model: FaceModelResource) -> dg.MaterializeResult:
    """Few-shot adaptation (prior vs no prior, latent only, frozen geometry) scored on held-out subjects."""
    from training.fewshot.stage import psnr_cell, run_fewshot
    from training.fewshot.report import summary_markdown

    fs_config = _fewshot_config(config)
    store = storage.storage()
    with stage_failures():
        run = run_fewshot(store, load_face_model(face_model), fs_config, config.backbone, config.splits,
                          config.subjects, log=context.log.info)
    k_small = min(fs_config.ks)
    return dg.MaterializeResult(metadata={
        "report": dg.MetadataValue.url(store.uri(layout.fewshot_report(config.backbone))),
        "report_path": dg.MetadataValue.path(store.uri(layout.fewshot_report(config.backbone))),
        "scores": dg.MetadataValue.path(store.uri(layout.fewshot_scores(config.backbone))),
        "summary": dg.MetadataValue.md(summary_markdown(run.summary)),
        "psnr_vs_k": dg.MetadataValue.md(f"![PSNR vs K](data:image/png;base64,{base64.b64encode(run.plot_png).decode()})"),
        "subjects": len(run.subjects),
        "frames_scored": len(run.scores),
        **{f"psnr_{method}_k{k_small}": psnr_cell(run.summary, "estimated", method, k_small)
           for method in fs_config.methods},
        "lpips": run.lpips_note,
    })
