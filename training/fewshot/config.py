"""``FewShotConfig``: how a prior is adapted to a new subject and how that is evaluated, with presets.

Adaptation has two stages (the reference recipe): stage 1 fits a new identity
code with the prior frozen, starting from the mean code; stage 2 refines the
code, the network weights (small learning rate, pulled back towards the prior),
the 3DMM expression and head pose of each input frame, and small corrections of
the input cameras. The evaluation adapts on K images per held-out subject and
scores renderings of the subject's other views and expressions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

METHODS = ("prior", "prior_fixed_geometry", "latent_only", "scratch")
"""``prior``: both stages, 3DMM and cameras refined; ``prior_fixed_geometry``: both stages, the pipeline's
3DMM fits and cameras kept; ``latent_only``: stage 1 only; ``scratch``: the same network trained on the K
images alone (no prior)."""
CONDITIONS = ("estimated", "perturbed")
"""``estimated``: the pipeline's calibrated cameras; ``perturbed``: the input cameras rotated by
``camera_noise_deg`` about their centres (robustness to calibration error)."""


ROTATION_SCALE_DEG = 1.0
"""A camera or head rotation correction of this size costs as much as ..."""
TRANSLATION_SCALE_MM = 5.0
"""... a translation correction of this size, or an expression coefficient change of 1."""


@dataclass(frozen=True)
class FewShotConfig:
    """Optimisation of both adaptation stages, the no-prior baseline, and the evaluation protocol."""

    stage1_steps: int = 60
    """Stage 1 steps: the identity code alone, prior frozen."""
    stage2_steps: int = 100
    """Stage 2 steps: code + weights (+ 3DMM and cameras for ``prior``)."""
    scratch_steps: int = 0
    """Steps of the no-prior baseline; 0 = stage1_steps + stage2_steps (the same budget)."""
    rays_per_step: int = 512
    """Rays per step, spread evenly over the step's input images."""
    images_per_step: int = 8
    """Input images per step (all of them when K is smaller)."""
    latent_lr: float = 1e-2
    """Adam learning rate of the identity code (both stages)."""
    weight_lr: float = 2e-4
    """Stage 2 learning rate of the network weights from one input image (the prior's own is 10x larger)."""
    weight_lr_per_image: bool = True
    """Stage 2 moves the weights ``weight_lr`` x K fast with K input images: each image pins down more of the
    subject, so more of it may leave the prior (with one rate for every K, K = 5 hardly beat K = 1 because the
    weights barely moved: 17.94 / 18.42 / 18.34 dB at K = 1 / 3 / 5 against 17.94 / 18.96 / 19.52 with it, test
    subject of the 12-subject simulated set, cpu presets). K = 1 is unchanged."""
    weight_reg: float = 100.0
    """Stage 2 pull of the weights towards the prior: weight_reg x mean squared deviation."""
    expression_lr: float = 5e-3
    """Stage 2 learning rate of the input frames' 3DMM expression coefficients."""
    rotation_lr: float = 1e-3
    """Stage 2 learning rate of the head and camera rotation corrections (radians)."""
    translation_lr: float = 1e-4
    """Stage 2 learning rate of the head and camera translation corrections (metres)."""
    geometry_reg: float = 1e-3
    """Pull of the corrections towards the pipeline's estimates: geometry_reg x the mean squared correction
    in units of ``ROTATION_SCALE_DEG``, ``TRANSLATION_SCALE_MM`` and one expression coefficient."""
    ks: tuple[int, ...] = (1, 3, 5)
    """Numbers of input images evaluated; the inputs of a smaller K are the first ones of a larger K."""
    methods: tuple[str, ...] = METHODS
    """Methods evaluated under the estimated cameras."""
    eval_frames: int = 13
    """Held-out frames rendered per subject (0 = every frame that is not an input); a smaller number
    is a seeded choice that still covers every camera and every expression."""
    camera_noise_deg: float = 1.0
    """Rotation of each input camera in the ``perturbed`` condition (random axis, seeded)."""
    perturbed_ks: tuple[int, ...] = (3,)
    """K evaluated with perturbed cameras (``prior`` vs ``prior_fixed_geometry``); empty = skip."""
    grid_rows: int = 2
    """Held-out frames shown per (subject, K) in the report's image grids."""
    seed: int = 0
    """Seeds input choice, evaluation frames, perturbations, ray draws and the baseline's weights."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "ks", tuple(int(k) for k in self.ks))
        object.__setattr__(self, "perturbed_ks", tuple(int(k) for k in self.perturbed_ks))
        object.__setattr__(self, "methods", tuple(self.methods))
        for name in ("stage1_steps", "rays_per_step", "images_per_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("stage2_steps", "scratch_steps", "eval_frames", "grid_rows", "weight_reg", "geometry_reg",
                     "camera_noise_deg"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.ks or min(self.ks) < 1 or min(self.perturbed_ks, default=1) < 1:
            raise ValueError(f"ks must be a non-empty list of K >= 1, got {self.ks} (perturbed {self.perturbed_ks})")
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown or not self.methods:
            raise ValueError(f"unknown method(s) {unknown}; choose from {METHODS}")

    @property
    def max_k(self) -> int:
        return max(self.ks + self.perturbed_ks)

    @property
    def baseline_steps(self) -> int:
        return self.scratch_steps or self.stage1_steps + self.stage2_steps

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FewShotConfig":
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown FewShotConfig field(s): {', '.join(unknown)}")
        return cls(**data)

    def with_changes(self, **changes: Any) -> "FewShotConfig":
        return replace(self, **changes)


PRESETS: dict[str, FewShotConfig] = {
    # the demo and the tests: 64 px crops, about 5 minutes per held-out subject on 2 CPU cores
    "cpu": FewShotConfig(),
    # full size: longer stages, every held-out frame, perturbed cameras at every K
    "gpu": FewShotConfig(stage1_steps=300, stage2_steps=1000, rays_per_step=4096, eval_frames=0,
                         perturbed_ks=(1, 3, 5), grid_rows=4),
}


def fewshot_preset(name: str, **changes: Any) -> FewShotConfig:
    """A named preset (``cpu``/``gpu``) with optional field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown few-shot preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].with_changes(**changes)
