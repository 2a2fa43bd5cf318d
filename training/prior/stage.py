"""Train (or resume) a prior into a storage folder and write its report: the ``avatar_prior`` and
``ablation_prior`` stage, callable without Dagster.

The resume rule lives here and nowhere else: a run continues only from a checkpoint of the same
config, data and face model; anything else trains from scratch. Training happens in the
folder's staging sibling (``Storage.resumable_directory``), so a crash leaves the published
prior untouched and the next run resumes from the staging checkpoint; the finished folder
(checkpoint, ``report.json``, ``curves.png``) replaces the old one whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from capture_schema import derived_layout as layout
from capture_schema.atomic import canonical_json, write_if_changed
from capture_schema.storage import Storage
from fitting.face_models.base import FaceModel
from training.prior.config import PriorConfig
from training.prior.dataset import PriorData
from training.stage_io import StageError, finite

Log = Callable[[str], None]


@dataclass(frozen=True)
class PriorRun:
    """What a training stage reports: the run, the held-in evaluation and the published report."""

    steps: int
    resumed_from: int
    final: dict[str, float]
    train_seconds: float
    rays_per_second: float
    """Averaged over the whole run, so a resumed (or no-op) run reports the same figure."""
    evaluation: dict[str, float]
    report: dict[str, Any]
    curves_png: bytes


def should_resume(work: Path, config: PriorConfig, data: PriorData, face_model_name: str, wanted: bool,
                  log: Log = print, warn: Log = print) -> bool:
    """Resume only from a checkpoint of this config, data and face model; anything else trains from scratch."""
    from training.prior.checkpoint import load_checkpoint
    from training.prior.train import checkpoint_matches

    path = work / layout.CHECKPOINT_FILE
    if not path.is_file():
        return wanted
    if not wanted:
        log(f"resume is off: training from scratch over {path}")
        return False
    try:
        ckpt = load_checkpoint(path)
    except ValueError as exc:
        warn(f"unreadable checkpoint, training from scratch: {exc}")
        return False
    if not checkpoint_matches(ckpt, config, data, face_model_name):
        warn(f"{path} came from other data, another config or another face model (new dataset index or new "
             "settings): training from scratch")
        return False
    return True


def train_prior_into(store: Storage, target: str, config: PriorConfig, data: PriorData, model: FaceModel, *,
                     resume: bool = True, eval_frames: int = 0, title: str = "avatar prior",
                     report_extra: Mapping[str, Any] | None = None, log: Log = print, warn: Log = print) -> PriorRun:
    """Train ``config`` on ``data`` into the store folder ``target`` and publish it whole; ``StageError`` if impossible."""
    from training.prior.checkpoint import load_prior
    from training.prior.evaluate import score_frames, summarize
    from training.prior.report import curves_png
    from training.prior.train import train_prior

    with store.resumable_directory(target, first=(layout.CHECKPOINT_FILE,)) as work:
        resumed = should_resume(work, config, data, model.name, resume, log, warn)
        if not resumed:
            for name in layout.PRIOR_REPORT_FILES:  # a report of the replaced checkpoint would describe the wrong model
                (work / name).unlink(missing_ok=True)
        try:
            result = train_prior(config, data, model, work, resume=resumed, log=log)
        except (ValueError, RuntimeError) as exc:
            raise StageError(f"training the prior failed: {exc}") from None
        total_rays = result.steps * config.images_per_batch * config.rays_per_image * result.world_size
        rays_per_second = total_rays / result.train_seconds if result.train_seconds else result.rays_per_second
        evaluation = summarize([])
        if eval_frames:
            trained, _ = load_prior(result.checkpoint)
            evaluation = summarize(score_frames(trained, model, data, max_frames=eval_frames))
            log(f"held-in PSNR over {evaluation['frames']} whole training frames: "
                f"{evaluation['psnr_mean']:.2f} dB (median {evaluation['psnr_median']:.2f})")
        curves = curves_png(result.history, title)
        report = {
            "checkpoint": store.uri(layout.join(target, layout.CHECKPOINT_FILE)), **dict(report_extra or {}),
            "config": config.to_dict(), "face_model": model.name, "subjects": list(data.subjects),
            "data": dict(data.stats), "data_fingerprint": data.fingerprint, "steps": result.steps,
            "resumed_from": result.resumed_from, "final": result.final, "evaluation": evaluation,
            "rays_per_second": rays_per_second, "train_seconds": result.train_seconds, "history": result.history,
        }
        write_if_changed(work / layout.PRIOR_CURVES_FILE, curves)
        write_if_changed(work / layout.PRIOR_REPORT_FILE, canonical_json(finite(report)).encode())
    return PriorRun(steps=result.steps, resumed_from=result.resumed_from, final=dict(result.final),
                    train_seconds=result.train_seconds, rays_per_second=rays_per_second, evaluation=evaluation,
                    report=report, curves_png=curves)


def load_stored_prior(store: Storage, relpath: str, step: str):
    """``(prior, checkpoint)`` read from the store (via a local copy); ``StageError`` naming ``step`` to rerun."""
    import tempfile

    from training.prior.checkpoint import CheckpointError, load_prior
    from training.prior.train import pick_device
    from training.stage_io import require

    require(store, relpath, "prior", step)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / layout.CHECKPOINT_FILE
        local.write_bytes(store.read_bytes(relpath))
        try:
            return load_prior(local, pick_device())
        except CheckpointError as exc:
            raise StageError(f"the prior at {store.uri(relpath)} cannot be used: {exc}; re-materialise {step}") from None
