"""``PriorConfig``: every knob of the avatar prior and its training, with presets.

The CPU preset is what the demo and the tests train (64 px head crops, a few
minutes on 2 cores); the GPU preset is the full-size starting point (see the
README). Every field is plain data so the config travels inside checkpoints and
Dagster metadata as JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

BACKBONES = ("anchored", "triplane")
SAMPLERS = ("occupancy", "sphere")
NEIGHBOUR_SEARCHES = ("grid", "tree")
PHOTOMETRIC_LOSSES = ("l1", "l2")
OFFSET_ENCODINGS = ("mean", "each")
DECODER_PRECISIONS = ("auto", "float32", "bfloat16")


@dataclass(frozen=True)
class PriorConfig:
    """Model size, rendering and optimisation of one prior training run."""

    backbone: str = "anchored"
    """``anchored`` (features on the 3DMM vertices) or ``triplane`` (identity -> tri-plane generator)."""
    resolution: int = 64
    """Side of the square head crop the field is trained on, in pixels."""
    load_resolution: int = 128
    """Longer image side the loader decodes (the shards' ``train.png`` when it matches) before cropping."""
    crop_scale: float = 1.25
    """Crop side as a multiple of the projected head's larger extent (face mesh plus ``head_depth``)."""
    head_depth: float = 0.12
    """Metres the head reaches behind the face mesh (3DMMs stop at the ears): frames the crop."""
    images_per_batch: int = 4
    """Images per step (per process under DDP)."""
    rays_per_image: int = 256
    """Rays drawn per image per step (uniformly over the crop)."""
    coarse_samples: int = 16
    """Stratified samples per ray: they place the fine samples (and, for the ``sphere`` sampler, carry gradient)."""
    fine_samples: int = 8
    """Importance samples per ray; the rendered ray uses coarse + fine samples."""
    sampler: str = "occupancy"
    """``occupancy``: each ray only from its first occupied cell of the learned head-frame grid to where the
    grid's densities block it (``training.prior.occupancy``), rays that cross none render the background
    unsampled, and only the fine samples carry gradient. ``sphere``: the exhaustive sampler (a sphere around the mesh,
    every sample with gradient), the yardstick."""
    neighbour_search: str = "grid"
    """``grid``: the k template anchors nearest the point's head-frame cell (``NeighbourGrid``, one gather);
    ``tree``: the exact k nearest posed anchors, a k-d tree per frame (CPU) or the distance matrix (GPU)."""
    grid_resolution: int = 32
    """Cells per side of the occupancy grid's head-frame box."""
    neighbour_resolution: int = 64
    """Cells per side of the ``grid`` neighbour table over the same box (finer cells: closer to the exact
    k nearest, a larger table)."""
    occupancy_every: int = 16
    """Training steps between refreshes of the occupancy grid."""
    occupancy_opacity: float = 0.01
    """A cell is occupied when one cell of its density is more opaque than this."""
    latent_dim: int = 32
    """Size of each training subject's identity code."""
    latent_init_std: float = 0.3
    """Identity codes start as N(0, std^2): distinct from step 0, so the generator learns to use them
    within a short CPU run (zero-initialised codes separate only over many epochs)."""
    feature_dim: int = 16
    """Per-vertex feature size of each branch (identity, expression, shared base)."""
    hidden_dim: int = 64
    """Width of the MLPs (generators and decoder)."""
    k_neighbors: int = 4
    """Posed vertices each sample point gathers features from."""
    offset_encoding: str = "mean"
    """Anchored field: how a point's position relative to its anchors reaches the decoder. ``mean``: the
    positional encoding of the weighted mean offset (one encoding per point); ``each``: the weighted mean of
    every neighbour's encoded offset (k encodings per point, the design before the fast sampler: a quarter
    slower per step and no sharper, ``benchmarks.prior``)."""
    max_anchors: int = 1024
    """Dense models (ICT) are anchored on an evenly spread subset of this many vertices."""
    max_distance: float = 0.1
    """Metres: sample points farther than this from every anchor have zero density (reaches the back
    of the head and the hair, which face models do not cover)."""
    decoder_precision: str = "auto"
    """Arithmetic of the decoder MLP (most of a step's work; weights stay float32): ``bfloat16`` halves
    its time on CPUs with native bfloat16 (AVX512-BF16, AMX) at an equal held-in PSNR (``benchmarks.prior``);
    ``auto`` uses it where the device has it natively, float32 elsewhere (emulated bfloat16 is slower)."""
    triplane_resolution: int = 32
    """Tri-plane backbone: side of each feature plane."""
    triplane_extent: float = 0.16
    """Tri-plane backbone: half-size of the cube (head frame, metres) the planes cover."""
    photometric_loss: str = "l1"
    """``l1`` or ``l2`` on rendered ray colours."""
    mask_weight: float = 0.1
    """Weight of the accumulated-opacity vs head-mask loss (samples with a mask only)."""
    latent_weight: float = 1e-4
    """Weight of the identity-code L2 regulariser (mean over the batch's codes)."""
    lr: float = 2e-3
    """Adam learning rate of the network weights (cosine decay to 10 % over ``iterations``)."""
    latent_lr: float = 1e-2
    """Adam learning rate of the identity codes."""
    iterations: int = 5000
    """Optimisation steps (the CPU preset's 5000 take the wall time 1000 steps of the exhaustive sampler did:
    about 2 minutes on 2 free cores)."""
    checkpoint_every: int = 500
    """Write a checkpoint every this many steps (and at the end)."""
    log_every: int = 50
    """Record loss / PSNR (and report progress) every this many steps."""
    num_workers: int = 0
    """DataLoader worker processes per training process."""
    shuffle_buffer: int = 200
    """Sample shuffle buffer of the loader."""
    shards_in_flight: int = 8
    """Shards (sessions) each loader worker reads at once, interleaved: batches mix subjects."""
    seed: int = 0
    """Seeds weights, identity codes, data order and ray draws: a run is reproducible."""

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}; got {self.backbone!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}; got {self.sampler!r}")
        if self.neighbour_search not in NEIGHBOUR_SEARCHES:
            raise ValueError(f"neighbour_search must be one of {', '.join(NEIGHBOUR_SEARCHES)}; "
                             f"got {self.neighbour_search!r}")
        if not 0 < self.occupancy_opacity < 1:
            raise ValueError(f"occupancy_opacity must be in (0, 1), got {self.occupancy_opacity}")
        if self.offset_encoding not in OFFSET_ENCODINGS:
            raise ValueError(f"offset_encoding must be one of {', '.join(OFFSET_ENCODINGS)}; "
                             f"got {self.offset_encoding!r}")
        if self.decoder_precision not in DECODER_PRECISIONS:
            raise ValueError(f"decoder_precision must be one of {', '.join(DECODER_PRECISIONS)}; "
                             f"got {self.decoder_precision!r}")
        if self.photometric_loss not in PHOTOMETRIC_LOSSES:
            raise ValueError(f"photometric_loss must be one of {', '.join(PHOTOMETRIC_LOSSES)}; "
                             f"got {self.photometric_loss!r}")
        for name in ("resolution", "load_resolution", "images_per_batch", "rays_per_image", "coarse_samples",
                     "latent_dim", "feature_dim", "hidden_dim", "k_neighbors", "max_anchors", "iterations",
                     "checkpoint_every", "log_every", "triplane_resolution", "shards_in_flight", "grid_resolution",
                     "neighbour_resolution", "occupancy_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.fine_samples < 0 or self.num_workers < 0 or self.shuffle_buffer < 0:
            raise ValueError("fine_samples, num_workers and shuffle_buffer must be >= 0")
        if self.latent_init_std < 0:
            raise ValueError("latent_init_std must be >= 0")
        if self.crop_scale <= 1.0:
            raise ValueError("crop_scale must be > 1 (the crop must hold the whole mesh)")
        if self.max_distance <= 0 or self.triplane_extent <= 0 or self.head_depth < 0:
            raise ValueError("max_distance and triplane_extent must be positive, head_depth >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PriorConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown PriorConfig field(s): {', '.join(unknown)}")
        return cls(**data)

    def with_changes(self, **changes: Any) -> "PriorConfig":
        return replace(self, **changes)


PRESETS: dict[str, PriorConfig] = {
    # 64 px crops, ~0.024 s/step on 2 free CPU cores (about 2 minutes): the demo and the tests.
    "cpu": PriorConfig(),
    # The full-size starting point for one GPU (scale images_per_batch with GPUs under torchrun).
    "gpu": PriorConfig(resolution=256, load_resolution=512, images_per_batch=16, rays_per_image=1024,
                       coarse_samples=48, fine_samples=48, latent_dim=128, feature_dim=32, hidden_dim=128,
                       k_neighbors=8, max_anchors=4096, triplane_resolution=128, iterations=100_000,
                       checkpoint_every=2000, log_every=100, num_workers=4, shuffle_buffer=2000, lr=1e-3,
                       latent_lr=1e-3),
}


def preset(name: str, **changes: Any) -> PriorConfig:
    """A named preset (``cpu``/``gpu``) with optional field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].with_changes(**changes)
