"""Where the head is, learned while the field trains: an occupancy grid in the head frame.

The density can be non-zero only within ``max_distance`` of an anchor, which a box
around the template anchors in the head (model) frame holds (with a margin for other
identities and expressions); most of a ray's stretch through it is still empty air
around the head or the head's hidden inside. The grid remembers, for each cell of
that box, the largest density the field recently produced there over the training
frames (a decaying maximum, as in Instant-NGP). A ray is sampled only from its first
occupied cell to its last, or to where the remembered densities make it opaque (plus
a margin for subjects whose surface lies deeper); a ray that crosses no occupied cell
is not sampled at all: it renders the background.

The head frame removes the head pose, so one grid serves every frame; identities
and expressions differ by centimetres, which the one-cell dilation of the occupied
set, the margin behind the opaque point and the refreshes over many subjects absorb.
Until the first refresh every cell counts as occupied (the whole box).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree
from torch import nn

from training.prior.head_frame import head_frame_to_world, points_to_head_frame, vectors_to_head_frame

#: Relative weight the previous maxima keep at each refresh (Instant-NGP uses 0.95 every 16 steps).
DECAY = 0.95
#: Ray positions probed per ray to find its first and last occupied cell (only grid lookups: cheap).
MARCH_STEPS = 64
#: Optical depth (integral of the grid's density) past which a ray counts as blocked: transmittance e^-9.2 = 1e-4.
OPAQUE_DEPTH = 9.2
#: Cells a ray is still sampled past the point where the grid's densities block it: the grid holds maxima
#: over many frames, so one subject's surface may lie this much behind where the grid turns opaque.
BEHIND_CELLS = 2.0


def box_bounds(origins: torch.Tensor, dirs: torch.Tensor, low: torch.Tensor,
               high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """near, far (B, R) of rays through the axis-aligned box ``low``..``high`` (slab test); hit mask.

    Rays that miss (or meet the box only behind their origin) get near = far = 0.
    """
    safe = torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    a, b = (low - origins) / safe, (high - origins) / safe
    near = torch.minimum(a, b).amax(-1).clamp_min(0.0)
    far = torch.maximum(a, b).amin(-1)
    hit = far > near
    zero = torch.zeros_like(near)
    return torch.where(hit, near, zero), torch.where(hit, far, zero), hit


def cell_index(local: torch.Tensor, low: torch.Tensor, high: torch.Tensor, resolution: int) -> torch.Tensor:
    """Flat index into a ``resolution``^3 grid over the box ``low``..``high`` of head-frame points (..., 3),
    clamped into the box: the one cell lookup of the occupancy grid and the neighbour table."""
    ijk = ((local - low) / (high - low) * resolution).long().clamp(0, resolution - 1)
    return (ijk[..., 0] * resolution + ijk[..., 1]) * resolution + ijk[..., 2]


def cell_centres(low: np.ndarray, high: np.ndarray, resolution: int) -> np.ndarray:
    """(r^3, 3) head-frame centres of the cells of a ``resolution``^3 grid over ``low``..``high``, in
    ``cell_index`` order."""
    axis = (np.arange(resolution) + 0.5) / resolution
    u = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    return np.asarray(low, np.float64) + u * (np.asarray(high, np.float64) - np.asarray(low, np.float64))


def cells_near(points: np.ndarray, low: np.ndarray, high: np.ndarray, resolution: int, reach: float) -> torch.Tensor:
    """(r, r, r) bool: cells that reach within ``reach`` of any of ``points`` (V, 3) (centre distance minus
    half the cell's diagonal): where a density bounded to ``reach`` of the points can be non-zero."""
    cell = (np.asarray(high, np.float64) - np.asarray(low, np.float64)) / resolution
    distance = cKDTree(np.asarray(points, np.float64)).query(cell_centres(low, high, resolution))[0]
    near = distance - 0.5 * float(np.linalg.norm(cell)) <= reach
    return torch.from_numpy(near.reshape((resolution,) * 3))


def box_around(template: torch.Tensor, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) corners of the axis-aligned box holding ``template`` (V, 3) plus ``margin`` on every side."""
    return template.amin(0) - margin, template.amax(0) + margin


class OccupancyGrid(nn.Module):
    """A ``resolution``^3 grid of density maxima over the head-frame box ``low``..``high``.

    A cell is occupied when a sample spacing of one cell there would be more opaque
    than ``opacity`` (density above ``-ln(1 - opacity) / cell size``), or a
    neighbour is (one-cell dilation).
    """

    def __init__(self, low: torch.Tensor, high: torch.Tensor, resolution: int, opacity: float,
                 candidates: torch.Tensor | None = None) -> None:
        """``candidates`` (r, r, r) bool: the cells that can hold density at all (the rest stay empty and are
        never evaluated); every cell when None."""
        super().__init__()
        self.resolution = int(resolution)
        self.register_buffer("low", torch.as_tensor(low, dtype=torch.float32).clone())
        self.register_buffer("high", torch.as_tensor(high, dtype=torch.float32).clone())
        self.register_buffer("density", torch.zeros((resolution,) * 3))
        self.register_buffer("refreshes", torch.zeros((), dtype=torch.long))
        full = torch.ones((resolution,) * 3, dtype=torch.bool)
        self.register_buffer("candidates", full if candidates is None else torch.as_tensor(candidates, dtype=torch.bool),
                             persistent=False)
        cell = float((self.high - self.low).max()) / resolution
        self.threshold = -math.log(1.0 - opacity) / cell
        self.cell = cell
        self._occupied: tuple[tuple, torch.Tensor] | None = None  # (state key, cells): computed once per state

    def occupied_cells(self) -> torch.Tensor:
        """(r, r, r) bool: dilated by one cell; every candidate cell before the first refresh."""
        # the tensors' version counters change with every in-place write (refresh, load_state_dict)
        key = (self.density.device, self.density._version, self.refreshes._version, self.candidates._version)
        if self._occupied is None or self._occupied[0] != key:
            if int(self.refreshes) == 0:
                cells = self.candidates.clone()
            else:
                dense = (self.density > self.threshold).float()[None, None]
                cells = F.max_pool3d(dense, 3, stride=1, padding=1)[0, 0] > 0
            self._occupied = (key, cells)
        return self._occupied[1]

    def occupied_share(self) -> float:
        return float(self.occupied_cells().float().mean())

    def intervals(self, origins: torch.Tensor, dirs: torch.Tensor, rotation: torch.Tensor,
                  translation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """near, far (B, R) of world rays: the stretch inside the box, narrowed to the first occupied probe ..
        the last occupied one or, once the grid has learned densities, the point where they block the ray
        plus ``BEHIND_CELLS``; and the mask of rays that cross any occupied cell."""
        local_o = points_to_head_frame(origins, rotation, translation)
        local_d = vectors_to_head_frame(dirs, rotation)
        near, far, hit = box_bounds(local_o, local_d, self.low, self.high)
        step = (far - near) / MARCH_STEPS
        probes = near[..., None] + step[..., None] * (torch.arange(MARCH_STEPS, device=near.device) + 0.5)
        index = cell_index(local_o[:, :, None, :] + local_d[:, :, None, :] * probes[..., None], self.low, self.high,
                           self.resolution)  # (B, R, M)
        occupied = self.occupied_cells().flatten()[index]
        hit = hit & occupied.any(-1)
        first = occupied.float().argmax(-1)
        last = MARCH_STEPS - 1 - occupied.flip(-1).float().argmax(-1)
        if int(self.refreshes) > 0:  # stop where the learned densities block the ray, plus a margin
            blocked = torch.cumsum(self.density.flatten()[index] * step[..., None], -1) > OPAQUE_DEPTH
            stop = torch.where(blocked.any(-1), blocked.float().argmax(-1), torch.full_like(last, MARCH_STEPS - 1))
            last = torch.minimum(last, stop + torch.ceil(BEHIND_CELLS * self.cell / step.clamp_min(1e-9)).long())
        new_near = torch.maximum(near, near + step * (first.to(near.dtype) - 0.5))
        new_far = torch.minimum(far, near + step * (last.to(near.dtype) + 1.5))
        zero = torch.zeros_like(near)
        return torch.where(hit, new_near, zero), torch.where(hit, new_far, zero), hit

    @torch.no_grad()
    def refresh(self, density: Callable[[torch.Tensor], torch.Tensor], rotation: torch.Tensor,
                translation: torch.Tensor, generator: torch.Generator | None) -> None:
        """Evaluate ``density`` (world points (B, P, 3) -> (B, P)) at one jittered point per candidate cell for
        each frame of the batch (head pose ``rotation``, ``translation``) and fold the batch's maximum into
        the grid."""
        r = self.resolution
        axis = torch.arange(r, dtype=torch.float32, device=self.density.device)
        ijk = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        ijk = ijk[self.candidates.flatten()]
        jitter = torch.rand(ijk.shape, generator=generator).to(ijk.device) if generator is not None else 0.5
        local = self.low + (ijk + jitter) / r * (self.high - self.low)
        world = head_frame_to_world(local, rotation, translation)
        seen = torch.zeros(r**3, dtype=self.density.dtype, device=self.density.device)
        seen[self.candidates.flatten()] = density(world).amax(0).to(self.density.dtype)
        seen = seen.reshape(r, r, r)
        if int(self.refreshes) == 0:
            self.density.copy_(seen)
        else:
            self.density.copy_(torch.maximum(self.density * DECAY, seen))
        self.refreshes += 1
