"""``avatar_prior``: the 3DMM-anchored radiance-field prior trained on the index's ``train`` split.

Thin by design: the work is ``training.prior`` (``train_prior``, ``score_frames``,
``report``). Everything goes into ``derived_layout.prior_dir(backbone)``: ``checkpoint.pt`` (resumable,
``weights_only`` loadable), ``curves.png`` and ``report.json``. On a local store the
run trains in that folder itself, so an interrupted materialisation resumes from the
last checkpoint; a checkpoint from other data or another config is replaced.
"""

import base64
import math
from pathlib import Path
from typing import Optional

import dagster as dg

from capture_schema import derived_layout as layout
from capture_schema.atomic import canonical_json, write_if_changed
from pipelines.assets.dataset_index import dataset_index
from pipelines.assets.store_io import finite, load_face_model, read_index, work_directory
from pipelines.resources import FaceModelResource, StorageResource
from pipelines.run_config import from_run_config, mirrored
from training.prior.config import PriorConfig
from training.settings import default_of


class AvatarPriorConfig(dg.Config):
    """Which prior to train, and how long."""

    preset: str = "cpu"
    """``cpu`` (64 px crops, minutes on 2 cores: demo and tests) or ``gpu`` (full size, see the README)."""
    backbone: str = default_of(PriorConfig, "backbone")
    """``anchored`` (features on the 3DMM vertices) or ``triplane``; each trains into ``prior/<backbone>/``."""
    iterations: Optional[int] = None
    """Optimisation steps (None = the preset's)."""
    eval_frames: int = 24
    """Training frames rendered whole for the held-in PSNR (0 = skip the evaluation)."""
    resume: bool = True
    """Continue from a matching checkpoint in the output folder (a non-matching one is always replaced)."""


def _prior_config(config: AvatarPriorConfig):
    from training.prior.config import PRESETS

    if config.preset not in PRESETS:
        raise dg.Failure(f"unknown preset {config.preset!r}; choose one of {', '.join(sorted(PRESETS))}")
    if config.eval_frames < 0:
        raise dg.Failure(f"eval_frames must be >= 0 (0 = skip the evaluation), got {config.eval_frames}")
    return from_run_config(PRESETS[config.preset], mirrored(config, PriorConfig), "avatar_prior")


def should_resume(context: dg.AssetExecutionContext, work: Path, prior_config, data, face_model_name: str,
                   wanted: bool) -> bool:
    """Resume only from a checkpoint of this config, data and face model; anything else trains from scratch."""
    from training.prior.checkpoint import load_checkpoint
    from training.prior.train import checkpoint_matches

    path = work / layout.CHECKPOINT_FILE
    if not path.is_file():
        return wanted
    if not wanted:
        context.log.info(f"resume is off: training from scratch over {path}")
        return False
    try:
        ckpt = load_checkpoint(path)
    except ValueError as exc:
        context.log.warning(f"unreadable checkpoint, training from scratch: {exc}")
        return False
    if not checkpoint_matches(ckpt, prior_config, data, face_model_name):
        context.log.warning(f"{path} came from other data, another config or another face model (new dataset "
                            "index or new settings): training from scratch")
        return False
    return True


@dg.asset(deps=[dataset_index], group_name="prior", kinds={"pytorch"})
def avatar_prior(context: dg.AssetExecutionContext, config: AvatarPriorConfig, storage: StorageResource,
                 face_model: FaceModelResource) -> dg.MaterializeResult:
    """One identity code per training subject plus a radiance field anchored to the fitted 3DMM."""
    import pyarrow as pa

    from training.prior.checkpoint import load_prior
    from training.prior.dataset import prior_data_from_index
    from training.prior.evaluate import score_frames, summarize
    from training.prior.report import curves_png, summary_markdown
    from training.prior.train import train_prior

    prior_config = _prior_config(config)
    store = storage.storage()
    try:
        data = prior_data_from_index(read_index(store), split="train")
    except (ValueError, KeyError, pa.ArrowException) as exc:
        raise dg.Failure(f"dataset index {store.uri(layout.INDEX)} cannot be trained on: {exc}") from None
    model = load_face_model(face_model)
    target = layout.prior_dir(config.backbone)
    context.log.info(f"training the {config.backbone} prior ({config.preset} preset, {prior_config.iterations} "
                     f"steps) on {data.stats['images']} images of {len(data.subjects)} subjects "
                     f"({data.stats['shards']} shards), {model.name} face model -> {store.uri(target)}")
    with work_directory(store, target) as work:
        resume = should_resume(context, work, prior_config, data, model.name, config.resume)
        if not resume:
            for name in layout.PRIOR_REPORT_FILES:  # a report of the replaced checkpoint would describe the wrong model
                (work / name).unlink(missing_ok=True)
        try:
            result = train_prior(prior_config, data, model, work, resume=resume, log=context.log.info)
        except (ValueError, RuntimeError) as exc:
            raise dg.Failure(f"training the prior failed: {exc}") from None
        # Average over the whole run, so a resumed (or no-op) materialisation reports the same figure.
        total_rays = result.steps * prior_config.images_per_batch * prior_config.rays_per_image * result.world_size
        rays_per_second = total_rays / result.train_seconds if result.train_seconds else result.rays_per_second
        evaluation = summarize([])
        if config.eval_frames:
            trained, _ = load_prior(result.checkpoint)
            evaluation = summarize(score_frames(trained, model, data, max_frames=config.eval_frames))
            context.log.info(f"held-in PSNR over {evaluation['frames']} whole training frames: "
                             f"{evaluation['psnr_mean']:.2f} dB (median {evaluation['psnr_median']:.2f})")
        curves = curves_png(result.history, f"avatar prior ({config.backbone}, {config.preset} preset)")
        report = {
            "checkpoint": store.uri(layout.prior_checkpoint(config.backbone)), "config": prior_config.to_dict(),
            "preset": config.preset, "face_model": model.name, "subjects": list(data.subjects),
            "data": dict(data.stats), "data_fingerprint": data.fingerprint, "steps": result.steps,
            "resumed_from": result.resumed_from, "final": result.final, "evaluation": evaluation,
            "rays_per_second": rays_per_second, "train_seconds": result.train_seconds, "history": result.history,
        }
        write_if_changed(work / layout.PRIOR_CURVES_FILE, curves)
        write_if_changed(work / layout.PRIOR_REPORT_FILE, canonical_json(finite(report)).encode())
        store.put_directory(work, target, first=(layout.CHECKPOINT_FILE,))

    final = result.final
    return dg.MaterializeResult(
        metadata={
            "checkpoint": dg.MetadataValue.path(store.uri(layout.prior_checkpoint(config.backbone))),
            "report": dg.MetadataValue.md(summary_markdown(prior_config.to_dict(), dict(data.stats), final,
                                                           rays_per_second, evaluation)),
            "curves": dg.MetadataValue.md(f"![training curves](data:image/png;base64,"
                                          f"{base64.b64encode(curves).decode()})"),
            "psnr_train_rays": float(final.get("psnr", math.nan)),
            "psnr_heldin_frames": float(evaluation["psnr_mean"]),
            "steps": int(result.steps),
            "resumed_from": int(result.resumed_from),
            "rays_per_second": round(float(rays_per_second), 1),
            "train_seconds": round(float(result.train_seconds), 2),
            "subjects": len(data.subjects),
            "train_images": int(data.stats["images"]),
            "backbone": config.backbone,
            "preset": config.preset,
            "report_json": dg.MetadataValue.path(store.uri(layout.prior_report(config.backbone))),
        },
    )
