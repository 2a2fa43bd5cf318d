"""``avatar_prior``: the 3DMM-anchored radiance-field prior trained on the index's ``train`` split.

Thin by design: the stage is ``training.prior.stage.train_prior_into`` (resume rule
included). Everything goes into ``derived_layout.prior_dir(backbone)``: ``checkpoint.pt``
(resumable, ``weights_only`` loadable), ``curves.png`` and ``report.json``. Training happens in the
folder's staging sibling, so an interrupted materialisation resumes from its last
checkpoint while the published prior stays whole; a checkpoint from other data or
another config is replaced.
"""

import base64
import math
from typing import Optional

import dagster as dg

from capture_schema import derived_layout as layout
from pipelines import pools
from pipelines.assets.dataset_index import dataset_index
from pipelines.assets.store_io import load_face_model, stage_failures
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


@dg.asset(deps=[dataset_index], group_name="prior", kinds={"pytorch"}, pool=pools.TRAINING)
def avatar_prior(context: dg.AssetExecutionContext, config: AvatarPriorConfig, storage: StorageResource,
                 face_model: FaceModelResource) -> dg.MaterializeResult:
    """One identity code per training subject plus a radiance field anchored to the fitted 3DMM."""
    import pyarrow as pa

    from training.prior.dataset import prior_data_from_index
    from training.prior.report import summary_markdown
    from training.prior.stage import train_prior_into
    from training.stage_io import read_index

    prior_config = _prior_config(config)
    store = storage.storage()
    try:
        with stage_failures():
            data = prior_data_from_index(read_index(store), split="train")
    except (ValueError, KeyError, pa.ArrowException) as exc:
        raise dg.Failure(f"dataset index {store.uri(layout.INDEX)} cannot be trained on: {exc}") from None
    model = load_face_model(face_model)
    target = layout.prior_dir(config.backbone)
    context.log.info(f"training the {config.backbone} prior ({config.preset} preset, {prior_config.iterations} "
                     f"steps) on {data.stats['images']} images of {len(data.subjects)} subjects "
                     f"({data.stats['shards']} shards), {model.name} face model -> {store.uri(target)}")
    with stage_failures():
        run = train_prior_into(store, target, prior_config, data, model, resume=config.resume,
                               eval_frames=config.eval_frames, report_extra={"preset": config.preset},
                               title=f"avatar prior ({config.backbone}, {config.preset} preset)",
                               log=context.log.info, warn=context.log.warning)
    return dg.MaterializeResult(
        metadata={
            "checkpoint": dg.MetadataValue.path(store.uri(layout.prior_checkpoint(config.backbone))),
            "report": dg.MetadataValue.md(summary_markdown(prior_config.to_dict(), dict(data.stats), run.final,
                                                           run.rays_per_second, run.evaluation)),
            "curves": dg.MetadataValue.md(f"![training curves](data:image/png;base64,"
                                          f"{base64.b64encode(run.curves_png).decode()})"),
            "psnr_train_rays": float(run.final.get("psnr", math.nan)),
            "psnr_heldin_frames": float(run.evaluation["psnr_mean"]),
            "steps": int(run.steps),
            "resumed_from": int(run.resumed_from),
            "rays_per_second": round(float(run.rays_per_second), 1),
            "train_seconds": round(float(run.train_seconds), 2),
            "subjects": len(data.subjects),
            "train_images": int(data.stats["images"]),
            "backbone": config.backbone,
            "preset": config.preset,
            "report_json": dg.MetadataValue.path(store.uri(layout.prior_report(config.backbone))),
        },
    )
