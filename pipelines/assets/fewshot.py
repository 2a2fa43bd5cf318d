"""``fewshot_report``: adapt the avatar prior to each held-out subject from K images, and report.

Thin by design: the protocol is ``training.fewshot`` (selection, adaptation,
metrics, report). Everything goes into ``derived_layout.fewshot_dir(backbone)``: ``scores.parquet``
(one row per rendered frame, method, K and camera condition), ``report.html``
(self-contained, images embedded), ``psnr_vs_k.png``, ``summary.md``, ``runs.json``
(adaptation time, loss and corrections per run) and the adapted avatars
``adapted/<subject>/<condition>/k<K>/checkpoint.pt`` (prior checkpoints with one
subject: ``load_prior`` renders any camera and expression).
"""

import base64
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import dagster as dg

from capture_schema import derived_layout as layout
from capture_schema.atomic import atomic_write_bytes, canonical_json
from pipelines.assets.dataset_index import dataset_index
from pipelines.assets.prior import avatar_prior
from pipelines.assets.store_io import load_face_model, read_index, require
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


@dg.asset(deps=[avatar_prior, dataset_index], group_name="prior", kinds={"pytorch", "html"})
def fewshot_report(context: dg.AssetExecutionContext, config: FewShotReportConfig, storage: StorageResource,
                   face_model: FaceModelResource) -> dg.MaterializeResult:
    """Few-shot adaptation (prior vs no prior, latent only, frozen geometry) scored on held-out subjects."""
    import pandas as pd

    from training.fewshot.evaluate import evaluate_subjects, held_out_subjects
    from training.fewshot.metrics import load_lpips
    from training.fewshot.report import summary_markdown, summary_table, write_report
    from training.fewshot.selection import INPUT_RULE
    from training.prior.checkpoint import CheckpointError, load_prior
    from training.prior.train import pick_device

    fs_config = _fewshot_config(config)
    store = storage.storage()
    prior_path = layout.prior_checkpoint(config.backbone)
    index = read_index(store)
    require(store, prior_path, "prior", "avatar_prior")
    subjects = held_out_subjects(index, config.splits)
    if config.subjects:
        missing = sorted(set(config.subjects) - set(subjects))
        if missing:
            raise dg.Failure(f"subject(s) {', '.join(missing)} are not in the index's {'/'.join(config.splits)} "
                             f"split(s) (held out: {', '.join(subjects) or 'none'})")
        subjects = sorted(config.subjects)
    if not subjects:
        raise dg.Failure(f"the dataset index has no subject in split(s) {', '.join(config.splits)}: "
                         "capture more subjects (the split is 80/10/10 by subject) or choose other splits")
    model = load_face_model(face_model)
    with tempfile.TemporaryDirectory() as tmp:
        local_prior = Path(tmp) / layout.CHECKPOINT_FILE
        local_prior.write_bytes(store.read_bytes(prior_path))
        try:
            prior, ckpt = load_prior(local_prior, pick_device())
        except CheckpointError as exc:
            raise dg.Failure(f"the avatar prior cannot be used: {exc}; re-materialise avatar_prior") from None
    if ckpt.get("face_model") not in (None, model.name):
        raise dg.Failure(f"the prior was trained with face model {ckpt.get('face_model')!r}, not {model.name!r}")
    lpips_model, lpips_note = load_lpips()
    context.log.info(lpips_note)
    target = layout.fewshot_dir(config.backbone)
    with tempfile.TemporaryDirectory() as tmp:
        work = store.local_path(target) if store.is_local else Path(tmp)
        shutil.rmtree(work / layout.ADAPTED_DIR, ignore_errors=True)  # avatars of subjects no longer evaluated
        result = evaluate_subjects(prior, model, index, subjects, fs_config, work / layout.ADAPTED_DIR,
                                   context.log.info, lpips_model)
        rows, grids, runs = result.rows, result.grids, result.runs
        scores = pd.DataFrame(rows)
        notes = [lpips_note, "Inputs: " + INPUT_RULE,
                 f"Scores are over {fs_config.eval_frames or 'all'} held-out frames per subject, "
                 "the same for every K and method; crops are 64 px composited onto the mask background."]
        settings = {"fewshot": fs_config.to_dict(), "prior": ckpt["architecture"]["config"],
                    "prior_checkpoint": store.uri(prior_path), "subjects": subjects, "splits": list(config.splits)}
        paths = write_report(work, scores, grids, notes, settings)
        atomic_write_bytes(work / layout.FEWSHOT_RUNS_FILE, canonical_json(runs).encode())
        store.put_directory(work, target)
        summary = summary_table(scores)
        plot = paths["plot"].read_bytes()

    def cell(condition: str, method: str, k: int) -> float:
        hit = summary[(summary["condition"] == condition) & (summary["method"] == method) & (summary["k"] == k)]
        return float(hit["psnr_mean"].iloc[0]) if len(hit) else float("nan")

    k_small = min(fs_config.ks)
    methods = list(fs_config.methods)
    metadata: dict[str, Any] = {
        "report": dg.MetadataValue.url(store.uri(layout.fewshot_report(config.backbone))),
        "report_path": dg.MetadataValue.path(store.uri(layout.fewshot_report(config.backbone))),
        "scores": dg.MetadataValue.path(store.uri(layout.fewshot_scores(config.backbone))),
        "summary": dg.MetadataValue.md(summary_markdown(summary)),
        "psnr_vs_k": dg.MetadataValue.md(f"![PSNR vs K](data:image/png;base64,{base64.b64encode(plot).decode()})"),
        "subjects": len(subjects),
        "frames_scored": len(scores),
        **{f"psnr_{method}_k{k_small}": cell("estimated", method, k_small) for method in methods},
        "lpips": lpips_note,
    }
    return dg.MaterializeResult(metadata=metadata)
