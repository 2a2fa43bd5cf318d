"""A plain-numpy z-buffer triangle rasteriser.

Why not OpenGL: the simulator must run anywhere (CI, headless, no GPU) and give
bit-identical images. Every triangle's bounding box is expanded into candidate
pixels in one vectorised pass (in chunks), inside-tests use edge functions, and the
nearest candidate per pixel wins through ``np.maximum.at`` on a key that packs
quantised inverse depth above the triangle index, which is deterministic (ties go
to the higher triangle index). Pixel centres sit at integer coordinates (OpenCV's
convention); barycentrics are perspective-correct.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_TRI_BITS = 22
_DEPTH_SCALE = float(2**30)
_CHUNK = 4_000_000


@dataclass(frozen=True)
class Raster:
    """Per-pixel result: triangle index (-1 = background), barycentrics and depth."""

    triangle: np.ndarray  # (H, W) int32
    barycentric: np.ndarray  # (H, W, 3) float32, perspective-correct
    depth: np.ndarray  # (H, W) float64, camera z; inf on background


def rasterize(xy: np.ndarray, depth: np.ndarray, faces: np.ndarray, width: int, height: int,
              cull_back: bool = True, near: float = 1e-3) -> Raster:
    """Rasterise triangles given pixel positions ``xy`` (V, 2) and camera depths (V,).

    A triangle faces the camera when its outward normal (``(v1 - v0) x (v2 - v0)``)
    points at it, which makes it wind anticlockwise on screen (negative signed area
    with y down); ``cull_back`` drops the others.
    """
    if len(faces) >= 2**_TRI_BITS:
        raise ValueError("too many triangles for the depth key")
    faces = np.asarray(faces, dtype=np.int64)
    p0, p1, p2 = xy[faces[:, 0]], xy[faces[:, 1]], xy[faces[:, 2]]
    z = depth[faces]
    e1, e2 = p1 - p0, p2 - p0
    area = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    keep = (z > near).all(axis=1) & np.isfinite(area) & (np.abs(area) > 1e-12)
    if cull_back:
        keep &= area < 0
    lo = np.ceil(np.minimum(np.minimum(p0, p1), p2)).astype(np.int64)
    hi = np.floor(np.maximum(np.maximum(p0, p1), p2)).astype(np.int64)
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, [width - 1, height - 1])
    size = hi - lo + 1
    keep &= (size > 0).all(axis=1)
    ids = np.flatnonzero(keep)

    # Barycentric weights of vertices 1 and 2 as affine functions of the pixel.
    inv_a = 1.0 / np.where(keep, area, 1.0)
    coef = np.stack([
        e2[:, 1] * inv_a, -e2[:, 0] * inv_a, (p0[:, 1] * e2[:, 0] - p0[:, 0] * e2[:, 1]) * inv_a,
        -e1[:, 1] * inv_a, e1[:, 0] * inv_a, (p0[:, 0] * e1[:, 1] - p0[:, 1] * e1[:, 0]) * inv_a,
    ], axis=1)
    inv_z = 1.0 / np.where(z > near, z, 1.0)

    key = np.zeros(width * height, dtype=np.int64)
    counts = size[ids, 0] * size[ids, 1]
    bounds = np.searchsorted(np.cumsum(counts), np.arange(_CHUNK, counts.sum() + _CHUNK, _CHUNK), side="right")
    start = 0
    for stop in np.unique(np.append(bounds, len(ids))):
        if stop > start:
            _scatter(key, ids[start:stop], counts[start:stop], lo, size, coef, inv_z, width)
        start = stop

    tri = np.where(key > 0, key & ((1 << _TRI_BITS) - 1), -1).astype(np.int32)
    bary = np.zeros((height, width, 3), dtype=np.float32)
    zbuf = np.full((height, width), np.inf)
    fg = np.flatnonzero(tri.ravel() >= 0)
    if fg.size:
        t = tri.ravel()[fg]
        px, py = (fg % width).astype(np.float64), (fg // width).astype(np.float64)
        l1 = coef[t, 0] * px + coef[t, 1] * py + coef[t, 2]
        l2 = coef[t, 3] * px + coef[t, 4] * py + coef[t, 5]
        w = np.stack([1.0 - l1 - l2, l1, l2], axis=1) * inv_z[t]
        total = w.sum(axis=1, keepdims=True)
        bary.reshape(-1, 3)[fg] = w / total
        zbuf.ravel()[fg] = 1.0 / total[:, 0]
    return Raster(triangle=tri, barycentric=bary, depth=zbuf)


def _scatter(key: np.ndarray, ids: np.ndarray, counts: np.ndarray, lo: np.ndarray, size: np.ndarray,
             coef: np.ndarray, inv_z: np.ndarray, width: int) -> None:
    """Depth-test every candidate pixel of the triangles ``ids`` into ``key``.

    Per-triangle values are spread with ``np.repeat`` (sequential, much faster than
    gathering), and barycentrics are evaluated relative to each bounding box corner.
    """
    total = int(counts.sum())
    local = np.arange(total, dtype=np.float64) - np.repeat((np.cumsum(counts) - counts).astype(np.float64), counts)
    w = np.repeat(size[ids, 0].astype(np.float64), counts)
    dy = np.floor((local + 0.5) / w)
    dx = local - dy * w
    ox, oy = lo[ids, 0].astype(np.float64), lo[ids, 1].astype(np.float64)
    c = coef[ids]
    l1 = np.repeat(c[:, 0] * ox + c[:, 1] * oy + c[:, 2], counts)
    l1 += np.repeat(c[:, 0], counts) * dx
    l1 += np.repeat(c[:, 1], counts) * dy
    l2 = np.repeat(c[:, 3] * ox + c[:, 4] * oy + c[:, 5], counts)
    l2 += np.repeat(c[:, 3], counts) * dx
    l2 += np.repeat(c[:, 4], counts) * dy
    l0 = 1.0 - l1 - l2
    eps = -1e-9
    inside = np.flatnonzero((l0 >= eps) & (l1 >= eps) & (l2 >= eps))
    tri = np.repeat(ids, counts)[inside]
    pix = (np.repeat(lo[ids, 1] * width + lo[ids, 0], counts)[inside]
           + dy[inside].astype(np.int64) * width + dx[inside].astype(np.int64))
    iz = inv_z[tri]
    inv_depth = l0[inside] * iz[:, 0] + l1[inside] * iz[:, 1] + l2[inside] * iz[:, 2]
    packed = (np.clip(inv_depth * _DEPTH_SCALE, 1, 2**40).astype(np.int64) << _TRI_BITS) | tri
    np.maximum.at(key, pix, packed)
