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
import torch.nn.functional as F
from scipy.spatial import cKDTree
from torch import nn

from training.prior.head_frame import points_to_head_frame
from training.prior.occupancy import cell_centres, cell_index

#: (points x anchors) per cdist chunk on an accelerator: 4 MB of float32, near cache size; 2x faster
#: than 128 MB chunks on a CPU (``python -m benchmarks.anchor_search``)
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
        """Distance to the nearest of the k (the first for a sorted search; ``NeighbourGrid`` sets are not)."""
        return self.distance.amin(-1)


def gather_rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values`` (B, V, C) at ``index`` (B, P, k) -> (B, P, k, C)."""
    B, P, k = index.shape
    flat = index.reshape(B, P * k, 1).expand(-1, -1, values.shape[-1])
    return values.gather(1, flat).reshape(B, P, k, values.shape[-1])


def weighted_rows(values: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``sum_j weight[b, p, j] * values[b, index[b, p, j]]``: (B, V, C), (B, P, k) -> (B, P, C).

    One fused ``embedding_bag`` over the frames' stacked tables, instead of gathering the
    (B, P, k, C) rows and summing them: that intermediate is hundreds of MB per render
    chunk, and allocating it costs more (page faults) than the arithmetic.
    """
    B, V, C = values.shape
    P, k = index.shape[1:]
    stacked = index + V * torch.arange(B, device=index.device)[:, None, None]
    return F.embedding_bag(stacked.reshape(B * P, k), values.reshape(B * V, C),
                           per_sample_weights=weight.reshape(B * P, k), mode="sum").view(B, P, C)


class NeighbourGrid(nn.Module):
    """Per cell of a head-frame box: the k template anchors nearest the cell's centre.

    The cheap neighbour search: a point is taken into the head frame and its cell
    names its k anchors, one gather instead of a k-d tree query per frame (a third of
    the training step, ``benchmarks.prior_profile``). Neighbourhoods are thus defined
    on the face model's mean face, at the resolution of the cells (about 1.2 cm);
    offsets and distances are still measured to the frame's *posed* anchors, so the
    features follow the identity and the expression. Where identity and expression
    move anchors by centimetres the set can differ from the posed k nearest (the
    exact ``tree`` search); the nearest of them stays within millimetres of the
    exact nearest distance, which is what bounds the density's support (tested).
    """

    def __init__(self, template: np.ndarray, low: np.ndarray, high: np.ndarray, resolution: int, k: int) -> None:
        super().__init__()
        template = np.asarray(template, np.float64)
        k = min(int(k), len(template))
        ids = np.reshape(cKDTree(template).query(cell_centres(low, high, resolution), k=k)[1], (-1, k))
        self.resolution = int(resolution)
        self.register_buffer("low", torch.as_tensor(np.asarray(low), dtype=torch.float32), persistent=False)
        self.register_buffer("high", torch.as_tensor(np.asarray(high), dtype=torch.float32), persistent=False)
        self.register_buffer("table", torch.as_tensor(ids, dtype=torch.long), persistent=False)

    def search(self, points: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
        """(B, P, k) anchor ids of world ``points`` (B, P, 3) of frames with head pose ``rotation``, ``translation``."""
        local = points_to_head_frame(points, rotation, translation)
        return self.table[cell_index(local, self.low, self.high, self.resolution)]


def nearest_anchors(points: torch.Tensor, anchors: torch.Tensor, k: int,
                    index: torch.Tensor | None = None) -> Neighbours:
    """k nearest ``anchors`` (B, V, 3) of ``points`` (B, P, 3), sorted by distance.

    The search runs without gradient (a k-d tree per frame on a CPU, chunks of the
    distance matrix on an accelerator) unless ``index`` (B, P, k) already names the
    neighbours (``NeighbourGrid.search``); offsets and distances are then recomputed from
    the gathered anchors, so they are differentiable in both the points (camera
    refinement) and the anchors (3DMM refinement).
    """
    k = min(k, anchors.shape[1])
    if index is None:
        search = _tree_search if points.device.type == "cpu" else _matrix_search
        index = search(points.detach(), anchors.detach(), k)
    offset = points[:, :, None, :] - gather_rows(anchors, index)
    distance = offset.norm(dim=-1)
    inv = 1.0 / (distance + 1e-4)
    return Neighbours(index, offset, distance, inv / inv.sum(-1, keepdim=True))


def _tree_search(points: torch.Tensor, anchors: torch.Tensor, k: int) -> torch.Tensor:
    """Neighbour ids on a CPU: a k-d tree per frame (2.5x faster than the distance matrix on one
    thread, and its query spreads over torch's threads; ``python -m benchmarks.anchor_search``)."""
    B, P, _ = points.shape
    workers = torch.get_num_threads()
    index = np.empty((B, P, k), np.int64)
    for b in range(B):
        tree = cKDTree(anchors[b].numpy())
        index[b] = np.reshape(tree.query(points[b].numpy(), k=k, workers=workers)[1], (P, k))
    return torch.from_numpy(index)


def _matrix_search(points: torch.Tensor, anchors: torch.Tensor, k: int) -> torch.Tensor:
    """Neighbour ids on an accelerator: chunks of the points x anchors distance matrix, then ``topk``."""
    B, P, _ = points.shape
    chunk = max(1, _MAX_DISTANCE_ENTRIES // max(1, B * anchors.shape[1]))
    return torch.cat([torch.cdist(points[:, s:s + chunk], anchors).topk(k, largest=False).indices
                      for s in range(0, P, chunk)], dim=1)


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
