"""Few-shot adaptation of a trained prior to one new subject, and the no-prior baseline.

Stage 1 (``adapt_latent``) fits a new identity code to the K input images with
the prior frozen, starting from the mean of the training subjects' codes. Stage 2
(``refine``) continues from there with the code, the network weights (small
learning rate, an L2 pull towards the prior's weights) and, unless disabled, the
input frames' 3DMM expression and head pose plus a small rotation and translation
of each input camera (``GeometryCorrections``), all pulled towards the pipeline's
estimates. ``train_scratch`` trains the same network from random weights on the
same images with the same losses: what the prior is worth.

An adapted avatar is an ``AvatarPrior`` with a single identity code, so every
renderer and ``load_prior`` work on it unchanged.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from fitting.camera_model import axis_angle_to_matrix
from fitting.face_models.base import FaceModel
from training.fewshot.config import ROTATION_SCALE_DEG, TRANSLATION_SCALE_MM, FewShotConfig
from training.prior.frames import posed_vertices
from training.prior.model import AvatarPrior, camera_rays
from training.prior.train import (learning_rate_factor, refresh_occupancy, sample_rays, step_generator,
                                  training_loss)

Log = Callable[[str], None] | None


class GeometryCorrections(nn.Module):
    """Per input image: a camera rotation (about its centre) and translation; per input expression frame
    (shared by the views of one expression): 3DMM expression offsets and a head rotation and translation."""

    def __init__(self, batch: dict, n_expression: int) -> None:
        super().__init__()
        names = sorted(set(batch["expression_name"]))
        self.register_buffer("frame_of_image", torch.tensor([names.index(n) for n in batch["expression_name"]]))
        n_images, n_frames = len(batch["expression_name"]), len(names)
        self.camera_rotation = nn.Parameter(torch.zeros(n_images, 3))
        self.camera_translation = nn.Parameter(torch.zeros(n_images, 3))
        self.head_rotation = nn.Parameter(torch.zeros(n_frames, 3))
        self.head_translation = nn.Parameter(torch.zeros(n_frames, 3))
        self.expression = nn.Parameter(torch.zeros(n_frames, n_expression))

    def apply(self, batch: dict, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Corrected R, t, expression, rotation, translation of the input ``images`` (indices into the inputs)."""
        frames = self.frame_of_image[images]
        turn = axis_angle_to_matrix(self.camera_rotation[images])
        head = axis_angle_to_matrix(self.head_rotation[frames])
        return {"R": turn @ batch["R"], "t": torch.einsum("bij,bj->bi", turn, batch["t"]) + self.camera_translation[images],
                "expression": batch["expression"] + self.expression[frames],
                "rotation": head @ batch["rotation"], "translation": batch["translation"] + self.head_translation[frames]}

    def penalty(self) -> torch.Tensor:
        """Mean squared corrections in natural units (see ``FewShotConfig.geometry_reg``)."""
        rotation = math.radians(ROTATION_SCALE_DEG)
        translation = TRANSLATION_SCALE_MM / 1000.0
        return ((self.camera_rotation / rotation) ** 2).sum(-1).mean() + \
            ((self.head_rotation / rotation) ** 2).sum(-1).mean() + \
            ((self.camera_translation / translation) ** 2).sum(-1).mean() + \
            ((self.head_translation / translation) ** 2).sum(-1).mean() + (self.expression**2).sum(-1).mean()

    def summary(self) -> dict[str, float]:
        """Largest corrections: camera/head rotation in degrees, translations in millimetres."""
        deg, mm = 180.0 / torch.pi, 1000.0
        return {"camera_rotation_deg_max": float(self.camera_rotation.detach().norm(dim=-1).max() * deg),
                "camera_translation_mm_max": float(self.camera_translation.detach().norm(dim=-1).max() * mm),
                "head_rotation_deg_max": float(self.head_rotation.detach().norm(dim=-1).max() * deg),
                "head_translation_mm_max": float(self.head_translation.detach().norm(dim=-1).max() * mm),
                "expression_offset_max": float(self.expression.detach().abs().max())}


@dataclass
class Adapted:
    """An adapted avatar, the geometry corrections it was fitted with (None when frozen) and its loss history."""

    model: AvatarPrior
    geometry: GeometryCorrections | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def new_avatar(prior: AvatarPrior) -> AvatarPrior:
    """The prior's network with one identity code, set to the mean of the training codes."""
    device = next(prior.parameters()).device
    avatar = AvatarPrior.from_architecture({**prior.architecture(), "n_subjects": 1}).to(device)
    state = {k: v for k, v in prior.state_dict().items() if not k.startswith("latents.")}
    avatar.load_state_dict(state, strict=False)
    with torch.no_grad():
        avatar.latents.weight.copy_(prior.mean_latent()[None])
    return avatar


def weight_lr(config: FewShotConfig, k: int) -> float:
    """Stage 2's learning rate of the network weights with ``k`` input images (``weight_lr_per_image``)."""
    return config.weight_lr * (k if config.weight_lr_per_image else 1)


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _network(model: AvatarPrior) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if not n.startswith("latents.")]


def _fit(model: AvatarPrior, face_model: FaceModel, inputs: dict, config: FewShotConfig, steps: int,
         optimizer: torch.optim.Optimizer, geometry: GeometryCorrections | None,
         extra_loss: Callable[[], torch.Tensor] | None, seed: int, log: Log, label: str) -> list[dict[str, float]]:
    """The shared optimisation loop: ``steps`` of photometric + mask + code losses (+ ``extra_loss``).

    Images and rays are drawn on the CPU from (seed, step) as in prior training, then moved to the
    model's device."""
    device = next(model.parameters()).device
    on_device = _to(inputs, device)
    n = len(inputs["key"])
    per_step = min(n, config.images_per_step)
    rays_per_image = max(1, config.rays_per_step // per_step)
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
    subject = torch.zeros(per_step, dtype=torch.long, device=device)
    history: list[dict[str, float]] = []
    model.train()
    for step in range(steps):
        generator = step_generator(seed, step, 0)
        images = torch.randperm(n, generator=generator)[:per_step] if per_step < n else torch.arange(n)
        batch = {k: (v[images] if torch.is_tensor(v) else [v[i] for i in images.tolist()]) for k, v in inputs.items()}
        factor = learning_rate_factor(step, steps)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        rays = _to(sample_rays(batch, rays_per_image, generator), device)
        batch = _to(batch, device)
        jitter = generator if device.type == "cpu" else torch.Generator(device).manual_seed(generator.initial_seed())
        pose = geometry.apply(on_device, images.to(device)) if geometry is not None else batch
        with torch.set_grad_enabled(geometry is not None):
            vertices = posed_vertices(face_model, batch["identity"], pose["expression"], pose["rotation"],
                                      pose["translation"])
        refresh_occupancy(model, step, model.config.occupancy_every, subject, pose, vertices.detach(), generator)
        origins, dirs = camera_rays(rays["dirs"], pose["R"], pose["t"])
        render, latent = model(subject, pose["expression"], vertices, pose["rotation"], pose["translation"],
                               origins, dirs, batch["has_mask"], generator=jitter)
        loss, metrics = training_loss(render, rays, batch["has_mask"], latent, model.config)
        if extra_loss is not None:
            extra = extra_loss()
            loss = loss + extra
            metrics["regulariser"] = float(extra.detach())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append({"step": step + 1, **metrics})
        if log and ((step + 1) % 50 == 0 or step + 1 == steps):
            log(f"{label}: step {step + 1}/{steps}, loss {metrics['loss']:.4f}")
    model.eval()
    return history


def _timed(fn: Callable[[], Adapted]) -> Adapted:
    start = time.perf_counter()
    out = fn()
    out.seconds = time.perf_counter() - start
    return out


def adapt_latent(prior: AvatarPrior, face_model: FaceModel, inputs: dict, config: FewShotConfig,
                 log: Log = None) -> Adapted:
    """Stage 1: a new identity code from the mean code, every weight of the prior frozen."""
    def run() -> Adapted:
        avatar = new_avatar(prior)
        for _, p in _network(avatar):
            p.requires_grad_(False)
        optimizer = torch.optim.Adam(avatar.latents.parameters(), lr=config.latent_lr)
        history = _fit(avatar, face_model, inputs, config, config.stage1_steps, optimizer, None, None,
                       config.seed, log, "stage 1 (code)")
        for _, p in _network(avatar):
            p.requires_grad_(True)
        return Adapted(avatar, None, history)
    return _timed(run)


def refine(stage1: Adapted, face_model: FaceModel, inputs: dict, config: FewShotConfig,
           optimise_geometry: bool = True, log: Log = None) -> Adapted:
    """Stage 2 from a stage-1 avatar: code + weights (pulled to the prior's), and optionally 3DMM + cameras."""
    def run() -> Adapted:
        avatar = copy.deepcopy(stage1.model)
        reference = [p.detach().clone() for _, p in _network(avatar)]
        network = [p for _, p in _network(avatar)]
        groups = [{"params": avatar.latents.parameters(), "lr": config.latent_lr},
                  {"params": network, "lr": weight_lr(config, len(inputs["key"]))}]
        geometry = None
        if optimise_geometry:
            geometry = GeometryCorrections(inputs, face_model.n_expression).to(next(avatar.parameters()).device)
            groups += [{"params": [geometry.expression], "lr": config.expression_lr},
                       {"params": [geometry.camera_rotation, geometry.head_rotation], "lr": config.rotation_lr},
                       {"params": [geometry.camera_translation, geometry.head_translation],
                        "lr": config.translation_lr}]
        count = sum(p.numel() for p in network)

        def regulariser() -> torch.Tensor:
            drift = sum(((p - p0) ** 2).sum() for p, p0 in zip(network, reference)) / count
            out = config.weight_reg * drift
            return out + config.geometry_reg * geometry.penalty() if geometry is not None else out

        optimizer = torch.optim.Adam(groups)
        label = "stage 2 (code, weights" + (", 3DMM, cameras)" if optimise_geometry else ")")
        history = _fit(avatar, face_model, inputs, config, config.stage2_steps, optimizer, geometry, regulariser,
                       config.seed + 1, log, label)
        return Adapted(avatar, geometry, stage1.history + history)
    return _timed(run)


def train_scratch(prior: AvatarPrior, face_model: FaceModel, inputs: dict, config: FewShotConfig,
                  log: Log = None) -> Adapted:
    """The no-prior baseline: the prior's architecture from fresh random weights, trained on the inputs alone
    with the prior's own learning rates for ``config.baseline_steps``."""
    def run() -> Adapted:
        torch.manual_seed(config.seed)
        avatar = AvatarPrior.from_architecture({**prior.architecture(), "n_subjects": 1})
        avatar = avatar.to(next(prior.parameters()).device)
        optimizer = torch.optim.Adam([{"params": [p for _, p in _network(avatar)], "lr": avatar.config.lr},
                                      {"params": avatar.latents.parameters(), "lr": avatar.config.latent_lr}])
        history = _fit(avatar, face_model, inputs, config, config.baseline_steps, optimizer, None, None,
                       config.seed + 2, log, "from scratch")
        return Adapted(avatar, None, history)
    return _timed(run)
