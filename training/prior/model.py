"""``AvatarPrior``: identity codes (auto-decoding) + a field + a background, rendered by volume rendering.

The model never sees images or the face model: a caller poses the 3DMM (see
``frames.posed_vertices``) and hands over rays, so the same module serves
training, few-shot adaptation (which also optimises the pose and the cameras)
and evaluation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from training.prior.anchors import nearest_anchors, support_falloff
from training.prior.config import PriorConfig
from training.prior.fields import FrameCondition, build_field
from training.prior.frames import MASKED_BACKGROUND
from training.prior.rays import composite, importance_samples, sphere_bounds, stratified_samples

class AvatarPrior(nn.Module):
    def __init__(self, config: PriorConfig, n_subjects: int, n_expression: int, anchor_ids: np.ndarray) -> None:
        super().__init__()
        if n_subjects < 1:
            raise ValueError("the prior needs at least one training subject")
        self.config = config
        self.n_expression = int(n_expression)
        self.register_buffer("anchor_ids", torch.as_tensor(np.asarray(anchor_ids), dtype=torch.long))
        self.latents = nn.Embedding(n_subjects, config.latent_dim)
        nn.init.normal_(self.latents.weight, std=config.latent_init_std)
        self.field = build_field(config, len(anchor_ids), n_expression)
        self.background_logit = nn.Parameter(torch.zeros(3))

    def architecture(self) -> dict[str, Any]:
        """What ``from_architecture`` needs to rebuild this module (weights aside)."""
        return {"config": self.config.to_dict(), "n_subjects": self.latents.num_embeddings,
                "n_expression": self.n_expression, "anchor_ids": self.anchor_ids.tolist()}

    @classmethod
    def from_architecture(cls, arch: dict[str, Any]) -> "AvatarPrior":
        return cls(PriorConfig.from_dict(arch["config"]), arch["n_subjects"], arch["n_expression"],
                   np.asarray(arch["anchor_ids"]))

    def forward(self, subject: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``render_rays`` with the identity codes of ``subject`` (B,) looked up; returns (render, codes).

        Training goes through ``forward`` so DistributedDataParallel sees every parameter use.
        """
        latent = self.latents(subject)
        return self.render_rays(latent, *args, **kwargs), latent

    def mean_latent(self) -> torch.Tensor:
        return self.latents.weight.detach().mean(0)

    def _field(self, points: torch.Tensor, condition: FrameCondition) -> tuple[torch.Tensor, torch.Tensor]:
        neighbours = nearest_anchors(points, condition.anchors, self.config.k_neighbors)
        sigma, rgb = self.field(points, condition, neighbours)
        return sigma * support_falloff(neighbours.nearest, self.config.max_distance), rgb

    def _background(self, has_mask: torch.Tensor) -> torch.Tensor:
        learned = torch.sigmoid(self.background_logit).expand(len(has_mask), 3)
        return torch.where(has_mask[:, None], torch.full_like(learned, MASKED_BACKGROUND), learned)

    def render_rays(self, latent: torch.Tensor, expression: torch.Tensor, vertices: torch.Tensor,
                    rotation: torch.Tensor, translation: torch.Tensor, origins: torch.Tensor, dirs: torch.Tensor,
                    has_mask: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Colour (B, R, 3), opacity and depth of unit rays ``origins``/``dirs`` (B, R, 3).

        ``vertices`` (B, N, 3) is the posed 3DMM of each frame, ``rotation``/``translation``
        its head pose. ``generator`` jitters the samples (training); None gives the
        deterministic bin centres (evaluation).
        """
        cfg = self.config
        anchors = vertices[:, self.anchor_ids]
        condition = FrameCondition(latent, expression, anchors, rotation, translation)
        centre = anchors.detach().mean(1)
        radius = (anchors.detach() - centre[:, None]).norm(dim=-1).amax(1) + cfg.max_distance
        near, far, _ = sphere_bounds(origins, dirs, centre, radius)
        depths = stratified_samples(near, far, cfg.coarse_samples, generator)
        B, R, _ = depths.shape
        sigma, rgb = self._field(self._points(origins, dirs, depths), condition)
        sigma, rgb = sigma.view(B, R, -1), rgb.view(B, R, -1, 3)
        if cfg.fine_samples:
            # The coarse samples' values are kept for the final composite (not evaluated twice):
            # the field is pointwise, so this is the same render with a third fewer field evaluations.
            with torch.no_grad():
                coarse = composite(sigma.detach(), rgb.detach(), depths, far, latent.new_zeros(latent.shape[0], 3))
            fine = importance_samples(depths, coarse["weights"], cfg.fine_samples, generator)
            sigma_fine, rgb_fine = self._field(self._points(origins, dirs, fine), condition)
            depths, order = torch.sort(torch.cat([depths, fine], -1), -1)
            sigma = torch.cat([sigma, sigma_fine.view(B, R, -1)], -1).gather(-1, order)
            rgb = torch.cat([rgb, rgb_fine.view(B, R, -1, 3)], -2).gather(-2, order[..., None].expand(-1, -1, -1, 3))
        return composite(sigma, rgb, depths, far, self._background(has_mask))

    @staticmethod
    def _points(origins: torch.Tensor, dirs: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
        B, R, N = depths.shape
        return (origins[:, :, None, :] + dirs[:, :, None, :] * depths[..., None]).reshape(B, R * N, 3)


def camera_rays(dirs_camera: torch.Tensor, R: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World origins and unit directions (B, R, 3) from camera-frame directions and world-to-camera R, t."""
    origins = -torch.einsum("bji,bj->bi", R, t)
    dirs = torch.einsum("bji,brj->bri", R, dirs_camera)
    return origins[:, None, :].expand_as(dirs), dirs


#: Rays per ``render_rays`` call when rendering whole frames on a CPU. Each call's intermediates (rays x
#: samples x neighbours x features) stay small enough to be reused by the allocator instead of mapped and
#: faulted in afresh: 16 whole 64 px frames at once took 10.4 s on one thread, frame by frame in 2048-ray
#: chunks 4.7 s (half of the first was page faults).
CPU_RAYS_PER_CALL = 2048
#: The same on an accelerator, where bigger calls keep it busy.
ACCELERATOR_RAYS_PER_CALL = 1 << 16


@torch.no_grad()
def render_frames(model: AvatarPrior, latent: torch.Tensor, expression: torch.Tensor, vertices: torch.Tensor,
                  rotation: torch.Tensor, translation: torch.Tensor, dirs: torch.Tensor, R: torch.Tensor,
                  t: torch.Tensor, has_mask: torch.Tensor, chunk: int | None = None) -> dict[str, torch.Tensor]:
    """Whole images: ``dirs`` (B, H, W, 3) camera-frame rays -> rgb (B, 3, H, W) and acc (B, 1, H, W).

    At most ``chunk`` rays per call (default by device: ``CPU_RAYS_PER_CALL`` or
    ``ACCELERATOR_RAYS_PER_CALL``): several whole frames per call when they fit, else
    one frame in pieces.
    """
    B, H, W, _ = dirs.shape
    if chunk is None:
        chunk = CPU_RAYS_PER_CALL if dirs.device.type == "cpu" else ACCELERATOR_RAYS_PER_CALL
    rays = min(chunk, H * W)
    frames = max(1, chunk // rays)
    flat = dirs.reshape(B, H * W, 3)
    rgb, acc = flat.new_empty(B, H * W, 3), flat.new_empty(B, H * W)
    for f in range(0, B, frames):
        i = slice(f, f + frames)
        for s in range(0, H * W, rays):
            origins, world = camera_rays(flat[i, s:s + rays], R[i], t[i])
            out = model.render_rays(latent[i], expression[i], vertices[i], rotation[i], translation[i], origins,
                                    world, has_mask[i])
            rgb[i, s:s + rays], acc[i, s:s + rays] = out["rgb"], out["acc"]
    return {"rgb": rgb.reshape(B, H, W, 3).permute(0, 3, 1, 2), "acc": acc.reshape(B, 1, H, W)}
