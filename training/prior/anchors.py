"""Which posed mesh vertices a sample point listens to, and how strongly.

Both backbones use the same neighbourhood: the anchored field gathers its
features from it, and both zero the density of points farther than
``max_distance`` from every anchor (so a comparison of backbones compares the
features, not the support).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: (points x anchors) per cdist chunk: 4 MB of float32, near cache size; 2x faster than 128 MB chunks
#: (``python -m benchmarks.anchor_search``)
_MAX_DISTANCE_ENTRIES = 1 << 20


def spread_vertices(template: np.ndarray, count: int) -> np.ndarray:
    """Sorted ids of ``count`` evenly spread vertices (farthest-point sampling, deterministic); all if fewer."""
    n = len(template)
    if n <= count:
        return np.arange(n)
    pts = np.asarray(template, np.float64)
    chosen = [int(np.argmin(np.linalg.norm(pts - pts.mean(0), axis=1)))]
    dist = np.linalg.norm(pts - pts[chosen[0]], axis=1)
    for _ in range(count - 1):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(pts - pts[nxt], axis=1))
    return np.sort(np.asarray(chosen))


@dataclass
class Neighbours:
    """The k nearest anchors of each point: ids (B, P, k), offsets point - anchor (B, P, k, 3), weights (B, P, k)."""

    index: torch.Tensor
    offset: torch.Tensor
    distance: torch.Tensor
    weight: torch.Tensor

    @property
    def nearest(self) -> torch.Tensor:
        return self.distance[..., 0]


def gather_rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values`` (B, V, C) at ``index`` (B, P, k) -> (B, P, k, C)."""
    B, P, k = index.shape
    flat = index.reshape(B, P * k, 1).expand(-1, -1, values.shape[-1])
    return values.gather(1, flat).reshape(B, P, k, values.shape[-1])


def nearest_anchors(points: torch.Tensor, anchors: torch.Tensor, k: int) -> Neighbours:
    """k nearest ``anchors`` (B, V, 3) of ``points`` (B, P, 3), sorted by distance.

    The search runs without gradient (in chunks that bound memory); offsets and
    distances are then recomputed from the gathered anchors, so they are
    differentiable in both the points (camera refinement) and the anchors (3DMM refinement).
    """
    B, P, _ = points.shape
    k = min(k, anchors.shape[1])
    chunk = max(1, _MAX_DISTANCE_ENTRIES // max(1, B * anchors.shape[1]))
    with torch.no_grad():
        index = torch.cat([torch.cdist(points[:, s:s + chunk].detach(), anchors.detach()).topk(k, largest=False).indices
                           for s in range(0, P, chunk)], dim=1)
    offset = points[:, :, None, :] - gather_rows(anchors, index)
    distance = offset.norm(dim=-1)
    inv = 1.0 / (distance + 1e-4)
    return Neighbours(index, offset, distance, inv / inv.sum(-1, keepdim=True))


def support_falloff(nearest: torch.Tensor, max_distance: float) -> torch.Tensor:
    """1 near the mesh, ramping to 0 over the last quarter of ``max_distance``, 0 beyond."""
    return ((max_distance - nearest) / (0.25 * max_distance)).clamp(0.0, 1.0)


def positional_encoding(x: torch.Tensor, frequencies: int) -> torch.Tensor:
    """``[x, sin(2^i pi x), cos(2^i pi x)]`` for i < frequencies, along the last axis."""
    scales = (2.0 ** torch.arange(frequencies, dtype=x.dtype, device=x.device)) * torch.pi
    angles = (x[..., None, :] * scales[:, None]).flatten(-2)
    return torch.cat([x, torch.sin(angles), torch.cos(angles)], dim=-1)


def encoding_size(dims: int, frequencies: int) -> int:
    return dims * (1 + 2 * frequencies)
