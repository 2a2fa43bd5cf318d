"""The two backbones behind one interface: ``field(points, condition, neighbours) -> (density, colour)``.

``AnchoredField`` (the reference design): features live on the posed 3DMM
anchors. A generator maps the identity code to per-vertex identity features; the
frame's 3DMM expression coefficients map to per-vertex expression features; a
learned per-vertex base is shared by everyone. A point takes the inverse-distance
weighted mix of its k anchors' features plus the encoded weighted mean of the offsets
to them, in the head's frame (rotation removed, so the offset means the same on
every frame), and an MLP decodes density and colour. The reference produces vertex features
with a CNN in the mesh's UV space; an MLP over the flattened vertex table is the
same map without needing a UV layout for every face model.

``TriplaneField``: identity code + encoded expression -> a small conv generator
-> three axis-aligned feature planes in the head frame; a point reads the three
planes bilinearly. Same decoder, same support (density zero far from the mesh).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.prior.anchors import Neighbours, encoding_size, positional_encoding, weighted_rows
from training.prior.config import PriorConfig
from training.prior.head_frame import points_to_head_frame, vectors_to_head_frame

OFFSET_FREQUENCIES = 4
DENSITY_SCALE = 200.0  # 1/m: an opaque surface needs sigma * (sample spacing ~4 mm) of a few units
DENSITY_BIAS = -4.0  # a nearly empty field at initialisation


@dataclass
class FrameCondition:
    """Everything a field needs about the frames of a batch."""

    latent: torch.Tensor  # (B, D) identity codes
    expression: torch.Tensor  # (B, E) 3DMM expression coefficients
    anchors: torch.Tensor  # (B, V, 3) posed anchor vertices, world metres
    head_rotation: torch.Tensor  # (B, 3, 3) model-to-world
    head_translation: torch.Tensor  # (B, 3)
    features: torch.Tensor | None = None
    """The field's per-frame features (``frame_features``: anchored vertex table, tri-plane planes), when a
    caller computed them once for several field calls (a render's coarse and fine passes)."""


def mlp(sizes: list[int], final_activation: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or final_activation:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware (emulated bfloat16 is slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return any(getattr(torch.cpu, check, lambda: False)() for check in
                   ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return False


class _Decoder(nn.Module):
    def __init__(self, in_dim: int, hidden: int, precision: str = "float32") -> None:
        super().__init__()
        self.net = mlp([in_dim, hidden, hidden, 4])
        self.precision = precision
        self._bfloat16: dict[torch.device, bool] = {}

    def uses_bfloat16(self, device: torch.device) -> bool:
        if device not in self._bfloat16:
            self._bfloat16[device] = self.precision == "bfloat16" or (self.precision == "auto"
                                                                     and native_bfloat16(device))
        return self._bfloat16[device]

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.uses_bfloat16(features.device):
            with torch.autocast(features.device.type, dtype=torch.bfloat16):
                out = self.net(features)
            out = out.to(features.dtype)
        else:
            out = self.net(features)
        sigma = DENSITY_SCALE * F.softplus(out[..., 0] + DENSITY_BIAS)
        return sigma, torch.sigmoid(out[..., 1:])


class AnchoredField(nn.Module):
    def __init__(self, config: PriorConfig, n_anchors: int, n_expression: int) -> None:
        super().__init__()
        f, h = config.feature_dim, config.hidden_dim
        self.n_anchors, self.feature_dim, self.max_distance = n_anchors, f, config.max_distance
        self.offset_encoding = config.offset_encoding
        self.base = nn.Parameter(0.1 * torch.randn(n_anchors, f))
        self.identity_generator = mlp([config.latent_dim, h, n_anchors * f])
        self.expression_generator = mlp([n_expression, h, n_anchors * f])
        self.decoder = _Decoder(3 * f + encoding_size(3, OFFSET_FREQUENCIES), h, config.decoder_precision)

    def frame_features(self, condition: FrameCondition) -> torch.Tensor:
        return self.vertex_features(condition)

    def vertex_features(self, condition: FrameCondition) -> torch.Tensor:
        """(B, V, 3F): shared base, identity and expression features per anchor."""
        B = condition.latent.shape[0]
        shape = (B, self.n_anchors, self.feature_dim)
        return torch.cat([self.base.expand(*shape), self.identity_generator(condition.latent).view(shape),
                          self.expression_generator(condition.expression).view(shape)], dim=-1)

    def forward(self, points: torch.Tensor, condition: FrameCondition,
                neighbours: Neighbours) -> tuple[torch.Tensor, torch.Tensor]:
        table = self.vertex_features(condition) if condition.features is None else condition.features
        feats = weighted_rows(table, neighbours.index, neighbours.weight)  # (B, P, 3F)
        if self.offset_encoding == "mean":
            offset = (neighbours.weight[..., None] * neighbours.offset).sum(-2)  # (B, P, 3)
            local = vectors_to_head_frame(offset, condition.head_rotation) / self.max_distance
            mixed = positional_encoding(local, OFFSET_FREQUENCIES)
        else:
            local = vectors_to_head_frame(neighbours.offset, condition.head_rotation) / self.max_distance
            encoded = positional_encoding(local, OFFSET_FREQUENCIES)  # (B, P, k, E)
            mixed = torch.matmul(neighbours.weight[..., None, :], encoded).squeeze(-2)  # weighted sum over k
        return self.decoder(torch.cat([feats, mixed], dim=-1))


class TriplaneField(nn.Module):
    BASE_RESOLUTION = 8

    def __init__(self, config: PriorConfig, n_expression: int) -> None:
        super().__init__()
        f, h, r0 = config.feature_dim, config.hidden_dim, self.BASE_RESOLUTION
        self.feature_dim, self.extent = f, config.triplane_extent
        self.expression_encoder = mlp([n_expression, h, h], final_activation=True)
        self.seed = nn.Linear(config.latent_dim + h, 3 * f * r0 * r0)
        ups, res = [], r0
        while res < config.triplane_resolution:
            ups += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.Conv2d(f, f, 3, padding=1),
                    nn.SiLU()]
            res *= 2
        self.upsample = nn.Sequential(*ups, nn.Conv2d(f, f, 3, padding=1))
        self.decoder = _Decoder(f + encoding_size(3, OFFSET_FREQUENCIES), h, config.decoder_precision)

    def frame_features(self, condition: FrameCondition) -> torch.Tensor:
        return self.planes(condition)

    def planes(self, condition: FrameCondition) -> torch.Tensor:
        """(B, 3, F, R, R) feature planes (xy, xz, yz of the head frame)."""
        B, r0 = condition.latent.shape[0], self.BASE_RESOLUTION
        code = torch.cat([condition.latent, self.expression_encoder(condition.expression)], dim=-1)
        seed = self.seed(code).view(B * 3, self.feature_dim, r0, r0)
        out = self.upsample(seed)
        return out.view(B, 3, self.feature_dim, *out.shape[-2:])

    def forward(self, points: torch.Tensor, condition: FrameCondition,
                neighbours: Neighbours) -> tuple[torch.Tensor, torch.Tensor]:
        local = points_to_head_frame(points, condition.head_rotation, condition.head_translation) / self.extent
        planes = self.planes(condition) if condition.features is None else condition.features
        feats = 0
        for i, axes in enumerate(((0, 1), (0, 2), (1, 2))):
            grid = local[..., list(axes)][:, :, None, :]  # (B, P, 1, 2)
            sampled = F.grid_sample(planes[:, i], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            feats = feats + sampled[..., 0].transpose(1, 2)  # (B, P, F)
        return self.decoder(torch.cat([feats, positional_encoding(local, OFFSET_FREQUENCIES)], dim=-1))


def build_field(config: PriorConfig, n_anchors: int, n_expression: int) -> nn.Module:
    if config.backbone == "anchored":
        return AnchoredField(config, n_anchors, n_expression)
    return TriplaneField(config, n_expression)
