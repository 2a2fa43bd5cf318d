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

from training.prior.anchors import NeighbourGrid, nearest_anchors, support_falloff
from training.prior.config import PriorConfig
from training.prior.fields import FrameCondition, build_field
from training.prior.frames import MASKED_BACKGROUND
from training.prior.occupancy import OccupancyGrid, box_around, cells_near
from training.prior.rays import composite, importance_samples, sphere_bounds, stratified_samples

#: Metres the head-frame grids reach beyond the template's support: other identities and expressions.
GRID_MARGIN = 0.02


class AvatarPrior(nn.Module):
    def __init__(self, config: PriorConfig, n_subjects: int, n_expression: int, anchor_ids: np.ndarray,
                 anchor_template: np.ndarray | None = None) -> None:
        """``anchor_template`` (V, 3): the anchors of the face model's mean face in its model frame, which
        the head-frame grids (occupancy, neighbour table) are laid over; needed unless the config
        asks for the ``sphere`` sampler and ``tree`` search."""
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
        self.anchor_template = None if anchor_template is None else np.asarray(anchor_template, np.float64)
        self.occupancy: OccupancyGrid | None = None
        self.neighbour_grid: NeighbourGrid | None = None
        if config.sampler == "occupancy" or config.neighbour_search == "grid":
            if self.anchor_template is None or self.anchor_template.shape != (len(anchor_ids), 3):
                raise ValueError(f"sampler {config.sampler!r} / neighbour_search {config.neighbour_search!r} need "
                                 "the anchors' template positions (V, 3)")
            low, high = box_around(torch.as_tensor(self.anchor_template), config.max_distance + GRID_MARGIN)
            if config.sampler == "occupancy":
                supported = cells_near(self.anchor_template, low.numpy(), high.numpy(), config.grid_resolution,
                                       config.max_distance + GRID_MARGIN)
                self.occupancy = OccupancyGrid(low, high, config.grid_resolution, config.occupancy_opacity, supported)
            if config.neighbour_search == "grid":
                self.neighbour_grid = NeighbourGrid(self.anchor_template, low.numpy(), high.numpy(),
                                                    config.neighbour_resolution, config.k_neighbors)

    def architecture(self) -> dict[str, Any]:
        """What ``from_architecture`` needs to rebuild this module (weights aside)."""
        arch = {"config": self.config.to_dict(), "n_subjects": self.latents.num_embeddings,
                "n_expression": self.n_expression, "anchor_ids": self.anchor_ids.tolist()}
        if self.anchor_template is not None:
            arch["anchor_template"] = self.anchor_template.tolist()
        return arch

    @classmethod
    def from_architecture(cls, arch: dict[str, Any]) -> "AvatarPrior":
        config = dict(arch["config"])
        if "sampler" not in config:  # written before the occupancy sampler: render as it was trained
            config.update(sampler="sphere", neighbour_search="tree")
        config.setdefault("offset_encoding", "each")  # written before the mean offset's encoding
        config.setdefault("decoder_precision", "float32")  # and before bfloat16
        return cls(PriorConfig.from_dict(config), arch["n_subjects"], arch["n_expression"],
                   np.asarray(arch["anchor_ids"]), arch.get("anchor_template"))

    def forward(self, subject: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``render_rays`` with the identity codes of ``subject`` (B,) looked up; returns (render, codes).

        Training goes through ``forward`` so DistributedDataParallel sees every parameter use.
        """
        latent = self.latents(subject)
        return self.render_rays(latent, *args, **kwargs), latent

    def mean_latent(self) -> torch.Tensor:
        return self.latents.weight.detach().mean(0)

    def _condition(self, latent: torch.Tensor, expression: torch.Tensor, anchors: torch.Tensor,
                   rotation: torch.Tensor, translation: torch.Tensor) -> FrameCondition:
        """The frames' condition with the field's per-frame features computed once (every pass reuses them)."""
        condition = FrameCondition(latent, expression, anchors, rotation, translation)
        condition.features = self.field.frame_features(condition)
        return condition

    def _field(self, points: torch.Tensor, condition: FrameCondition) -> tuple[torch.Tensor, torch.Tensor]:
        index = None
        if self.neighbour_grid is not None:
            index = self.neighbour_grid.search(points.detach(), condition.head_rotation.detach(),
                                               condition.head_translation.detach())
        neighbours = nearest_anchors(points, condition.anchors, self.config.k_neighbors, index)
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
        condition = self._condition(latent, expression, anchors, rotation, translation)
        background = self._background(has_mask)
        if self.occupancy is None:
            centre = anchors.detach().mean(1)
            radius = (anchors.detach() - centre[:, None]).norm(dim=-1).amax(1) + cfg.max_distance
            near, far, _ = sphere_bounds(origins, dirs, centre, radius)
            depths = stratified_samples(near, far, cfg.coarse_samples, generator)
            return self._sample(origins, dirs, depths, far, condition, background, generator, coarse_gradient=True)
        near, far, hit = self.occupancy.intervals(origins.detach(), dirs.detach(), rotation.detach(),
                                                  translation.detach())
        # Only rays that cross an occupied cell are sampled: each frame's hits first, padded to the most hits.
        B, R = hit.shape
        kept = max(1, int(hit.sum(1).max()))  # one padding ray when none hits keeps the shapes (and graph) whole
        order = torch.argsort((~hit).to(torch.uint8), dim=1, stable=True)[:, :kept]

        def take(x: torch.Tensor) -> torch.Tensor:
            return x.gather(1, order[..., None].expand(-1, -1, x.shape[-1]))

        depths = stratified_samples(near.gather(1, order), far.gather(1, order), cfg.coarse_samples, generator)
        out = self._sample(take(origins), take(dirs), depths, far.gather(1, order), condition, background,
                           generator, coarse_gradient=cfg.fine_samples == 0)
        samples = out["weights"].shape[-1]
        return {"rgb": background[:, None, :].expand(B, R, 3).scatter(1, order[..., None].expand(-1, -1, 3),
                                                                      out["rgb"]),
                "acc": out["acc"].new_zeros(B, R).scatter(1, order, out["acc"]),
                "depth": out["depth"].new_zeros(B, R).scatter(1, order, out["depth"]),
                "weights": out["weights"].new_zeros(B, R, samples).scatter(
                    1, order[..., None].expand(-1, -1, samples), out["weights"])}

    def _sample(self, origins: torch.Tensor, dirs: torch.Tensor, depths: torch.Tensor, far: torch.Tensor,
                condition: FrameCondition, background: torch.Tensor, generator: torch.Generator | None,
                coarse_gradient: bool) -> dict[str, torch.Tensor]:
        """The field at the coarse ``depths`` (B, R, N), importance fine samples, one composite of both.

        Without ``coarse_gradient`` the coarse samples only place the fine ones and fill
        in the composite (a third of the cost of a sample with gradient); the field
        learns at the fine samples, which the coarse weights put where the ray meets
        the head (and on anything the field wrongly puts in empty space).
        """
        cfg = self.config
        B, R, _ = depths.shape
        with torch.set_grad_enabled(coarse_gradient and torch.is_grad_enabled()):
            sigma, rgb = self._field(self._points(origins, dirs, depths), condition)
        sigma, rgb = sigma.view(B, R, -1), rgb.view(B, R, -1, 3)
        if cfg.fine_samples:
            # The coarse samples' values are kept for the final composite (not evaluated twice):
            # the field is pointwise, so this is the same render with a third fewer field evaluations.
            with torch.no_grad():
                coarse = composite(sigma.detach(), rgb.detach(), depths, far, background.new_zeros(B, 3))
            fine = importance_samples(depths, coarse["weights"], cfg.fine_samples, generator)
            sigma_fine, rgb_fine = self._field(self._points(origins, dirs, fine), condition)
            depths, order = torch.sort(torch.cat([depths, fine], -1), -1)
            sigma = torch.cat([sigma, sigma_fine.view(B, R, -1)], -1).gather(-1, order)
            rgb = torch.cat([rgb, rgb_fine.view(B, R, -1, 3)], -2).gather(-2, order[..., None].expand(-1, -1, -1, 3))
        return composite(sigma, rgb, depths, far, background)

    @torch.no_grad()
    def refresh_occupancy(self, latent: torch.Tensor, expression: torch.Tensor, vertices: torch.Tensor,
                          rotation: torch.Tensor, translation: torch.Tensor, generator: torch.Generator | None) -> None:
        """Fold the densities one of these frames produces into the occupancy grid (no-op for the sphere sampler).

        One frame per refresh, taken in turn: the grid keeps a decaying maximum over many refreshes
        anyway, and a refresh of every frame of a batch cost a third of each training step.
        """
        if self.occupancy is None:
            return
        b = slice(i := int(self.occupancy.refreshes) % len(latent), i + 1)
        condition = self._condition(latent[b], expression[b], vertices[b][:, self.anchor_ids], rotation[b],
                                    translation[b])
        self.occupancy.refresh(lambda points: self._field(points, condition)[0], rotation[b], translation[b],
                               generator)

    @staticmethod
    def _points(origins: torch.Tensor, dirs: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
        B, R, N = depths.shape
        return (origins[:, :, None, :] + dirs[:, :, None, :] * depths[..., None]).reshape(B, R * N, 3)


def with_sampler(model: AvatarPrior, **changes: Any) -> AvatarPrior:
    """The same weights under other sampling settings (e.g. ``sampler="sphere"``, more samples): the
    exhaustive render a fast one is checked against. Grids the new settings do not use are dropped."""
    arch = {**model.architecture(), "config": model.config.with_changes(**changes).to_dict()}
    if model.anchor_template is None:
        arch.pop("anchor_template", None)
    other = AvatarPrior.from_architecture(arch).to(next(model.parameters()).device)
    state = model.state_dict()
    own = other.state_dict()
    other.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return other.eval()


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
