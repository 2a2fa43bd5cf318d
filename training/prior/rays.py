"""Ray bounds, sample placement and volume rendering (NeRF's quadrature), batched per frame.

Shapes: ``B`` frames, ``R`` rays per frame, ``N`` samples per ray. Density is zero
farther than ``max_distance`` from every anchor, so the exhaustive sampler bounds a
ray by a sphere around the frame's posed mesh (``sphere_bounds``); the fast one by
the occupancy grid (``training.prior.occupancy``).
"""

from __future__ import annotations

import torch


def sphere_bounds(origins: torch.Tensor, dirs: torch.Tensor, centre: torch.Tensor,
                  radius: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """near, far (B, R) of unit-direction rays through spheres ``centre`` (B, 3), ``radius`` (B,); and hit mask.

    Rays that miss get near = far = 0 (their samples are all empty).
    """
    oc = origins - centre[:, None, :]
    b = (oc * dirs).sum(-1)
    c = (oc * oc).sum(-1) - radius[:, None] ** 2
    disc = b * b - c
    hit = disc > 0
    root = torch.sqrt(disc.clamp_min(0.0))
    near = (-b - root).clamp_min(0.0)
    far = (-b + root).clamp_min(0.0)
    hit = hit & (far > near)
    zero = torch.zeros_like(near)
    return torch.where(hit, near, zero), torch.where(hit, far, zero), hit


def stratified_samples(near: torch.Tensor, far: torch.Tensor, n: int,
                       generator: torch.Generator | None) -> torch.Tensor:
    """(B, R, n) depths: one per equal bin, jittered inside it with ``generator`` (bin centres without)."""
    steps = torch.arange(n, dtype=near.dtype, device=near.device)
    if generator is None:
        u = (steps + 0.5).expand(*near.shape, n)
    else:
        u = steps + torch.rand(*near.shape, n, generator=generator, device=near.device, dtype=near.dtype)
    return near[..., None] + (far - near)[..., None] * (u / n)


def importance_samples(depths: torch.Tensor, weights: torch.Tensor, n: int,
                       generator: torch.Generator | None) -> torch.Tensor:
    """(B, R, n) depths drawn from the piecewise-constant pdf of ``weights`` over the bins around ``depths``."""
    mids = 0.5 * (depths[..., 1:] + depths[..., :-1])
    w = weights[..., 1:-1].detach() + 1e-5
    pdf = w / w.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[..., :1]), torch.cumsum(pdf, -1)], -1)
    shape = (*cdf.shape[:-1], n)
    if generator is None:
        u = torch.linspace(0.0, 1.0, n, dtype=cdf.dtype, device=cdf.device).expand(shape).contiguous()
    else:
        u = torch.rand(shape, generator=generator, dtype=cdf.dtype, device=cdf.device)
    idx = torch.searchsorted(cdf.contiguous(), u, right=True)
    below = (idx - 1).clamp(0, cdf.shape[-1] - 1)
    above = idx.clamp(0, cdf.shape[-1] - 1)
    cdf_lo, cdf_hi = cdf.gather(-1, below), cdf.gather(-1, above)
    bin_lo, bin_hi = mids.gather(-1, below), mids.gather(-1, above)
    span = torch.where(cdf_hi - cdf_lo < 1e-5, torch.ones_like(cdf_hi), cdf_hi - cdf_lo)
    return bin_lo + (u - cdf_lo) / span * (bin_hi - bin_lo)


def composite(sigma: torch.Tensor, rgb: torch.Tensor, depths: torch.Tensor, far: torch.Tensor,
              background: torch.Tensor) -> dict[str, torch.Tensor]:
    """Alpha-composite sorted samples; the last interval ends at ``far``. Returns rgb, acc, depth, weights.

    ``background`` (B, 3) or (B, R, 3) fills the transmittance left at the end of the ray.
    """
    deltas = torch.cat([depths[..., 1:] - depths[..., :-1], (far[..., None] - depths[..., -1:]).clamp_min(0.0)], -1)
    alpha = 1.0 - torch.exp(-sigma * deltas)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1.0 - alpha + 1e-10], -1), -1)[..., :-1]
    weights = alpha * trans
    acc = weights.sum(-1)
    color = (weights[..., None] * rgb).sum(-2)
    bg = background if background.dim() == 3 else background[:, None, :]
    color = color + (1.0 - acc)[..., None] * bg
    depth = (weights * depths).sum(-1)
    return {"rgb": color, "acc": acc, "depth": depth, "weights": weights}
