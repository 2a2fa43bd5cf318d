"""Render whole frames with a prior and score them against the captured crops.

The score compares the rendering with the crop as the prior is trained to
reproduce it: the head composited onto ``MASKED_BACKGROUND`` by its mask (the
raw crop for samples without a mask). PSNR is over the whole crop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from fitting.face_models.base import FaceModel
from training.prior.dataset import PriorData, frame_loader
from training.prior.frames import masked_target, posed_vertices
from training.prior.model import AvatarPrior, render_frames


@dataclass
class FrameScore:
    key: str
    subject_id: str
    expression: str
    camera_id: str
    psnr: float


def target_images(batch: dict) -> torch.Tensor:
    """(B, 3, H, W) what the prior should render: masked crops on the background, raw crops without a mask."""
    return masked_target(batch["rgb"], batch["mask"], batch["has_mask"])


def image_psnr(rendered: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of (B, 3, H, W) images in [0, 1]."""
    mse = ((rendered - target) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return -10.0 * torch.log10(mse)


def render_batch(model: AvatarPrior, face_model: FaceModel, batch: dict, latent: torch.Tensor | None = None,
                 expression: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 3, H, W) renderings of a frame batch; ``latent``/``expression`` override the batch's own."""
    device = next(model.parameters()).device
    b = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    latent = model.latents(b["subject"]) if latent is None else latent.to(device)
    expression = b["expression"] if expression is None else expression.to(device)
    with torch.no_grad():
        vertices = posed_vertices(face_model, b["identity"], expression, b["rotation"], b["translation"])
        out = render_frames(model, latent, expression, vertices, b["rotation"], b["translation"], b["dirs"], b["R"],
                            b["t"], b["has_mask"])
    return out["rgb"].cpu()


def score_frames(model: AvatarPrior, face_model: FaceModel, data: PriorData, max_frames: int | None = None,
                 ) -> list[FrameScore]:
    """PSNR of every frame of ``data`` (in shard order, first ``max_frames``), rendered with its own subject code."""
    loader = frame_loader(data, face_model, model.config.with_changes(num_workers=0), shuffle=False,
                          rank=0, world_size=1)
    scores: list[FrameScore] = []
    for batch in loader:
        rendered = render_batch(model, face_model, batch)
        for i, value in enumerate(image_psnr(rendered, target_images(batch)).tolist()):
            scores.append(FrameScore(batch["key"][i], batch["subject_id"][i], batch["expression_name"][i],
                                     batch["camera_id"][i], value))
        if max_frames is not None and len(scores) >= max_frames:
            return scores[:max_frames]
    return scores


def summarize(scores: list[FrameScore]) -> dict[str, float]:
    values = np.array([s.psnr for s in scores])
    if len(values) == 0:
        return {"frames": 0, "psnr_mean": math.nan, "psnr_median": math.nan, "psnr_p10": math.nan}
    return {"frames": int(len(values)), "psnr_mean": float(values.mean()), "psnr_median": float(np.median(values)),
            "psnr_p10": float(np.percentile(values, 10))}
