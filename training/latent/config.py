"""``LatentConfig``: what the latent-space report renders and measures (plain data, so it travels as JSON)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from capture_schema.layout import DEFAULT_CAMERAS
from training.fewshot.selection import NEUTRAL
from training.latent.plausibility import DETECT_PX


@dataclass(frozen=True)
class LatentConfig:
    """Interpolations, samples and where they are rendered. The defaults keep the report to seconds on a CPU."""

    steps: int = 8
    """Images per interpolation, both ends included."""
    pairs: int = 3
    """Pairs of training subjects interpolated (a seeded draw; every pair when there are fewer): smoothness
    is their mean."""
    samples: int = 16
    """Codes drawn from the Gaussian fitted to the training codes (plus the mean code, rendered apart)."""
    seed: int = 0
    """Seeds the pair draw and the samples."""
    camera: str = DEFAULT_CAMERAS[0]
    """Camera id every image is rendered from (the frontal camera of the default rig)."""
    expression: str = NEUTRAL
    """Expression every image is rendered with (each end's own fitted coefficients for it)."""
    resolution: int = 0
    """Rendered side in pixels; 0 = the prior's training resolution (64 px at the cpu preset)."""
    detect_px: int = DETECT_PX
    """Side renders are upsampled to for mediapipe (>= 192)."""
    frame_ms: int = 150
    """Duration of each frame of the animated GIFs."""

    def __post_init__(self) -> None:
        for name in ("samples", "frame_ms"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps < 2:
            raise ValueError(f"steps must be >= 2 (both ends), got {self.steps}")
        if self.pairs < 0 or self.resolution < 0:
            raise ValueError("pairs and resolution must be >= 0")
        if self.detect_px < 192:
            raise ValueError(f"detect_px must be >= 192 (mediapipe misses small faces), got {self.detect_px}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LatentConfig":
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown LatentConfig field(s): {', '.join(unknown)}")
        return cls(**data)

    def with_changes(self, **changes: Any) -> "LatentConfig":
        return replace(self, **changes)
