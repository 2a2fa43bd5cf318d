"""Hand-designed identity and expression modes of the built-in face model.

Each mode is a displacement field (478, 3) per unit coefficient. A field is fixed
on a few landmark groups (lips, lids, brows, cheeks) and filled in between by a
biharmonic solve on the mesh graph, so it falls off smoothly along the *surface*:
the upper and lower lips (or lids) are not connected across the mouth (eye), so
moving one does not drag the other. Left/right pairs are exact mirror images.
Magnitudes are chosen so that unit expression coefficients are clearly visible
and identity coefficients ~N(0, 1) stay plausible (+-2 sigma changes a feature by
~10-15 %: face width 10 %, nose width 14 %, pupil distance 11 %, mouth width 12 %).
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from fitting.face_models import builtin as mm

#: Where closed lids meet, as a fraction of the eye opening above the lower lid.
CLOSE_LINE = 0.3


class FaceGraph:
    """The template's mesh graph and the smooth-fill solver on it."""

    def __init__(self, template: np.ndarray, skin_faces: np.ndarray, mirror: np.ndarray) -> None:
        self.points = template
        self.mirror = mirror
        n = len(template)
        edges = [skin_faces[:, [0, 1]], skin_faces[:, [1, 2]], skin_faces[:, [2, 0]]]
        # Iris points are not in the tessellation: tie each to its eye contour.
        for iris, upper, lower in ((mm.RIGHT_IRIS, mm.RIGHT_EYE_UPPER, mm.RIGHT_EYE_LOWER),
                                   (mm.LEFT_IRIS, mm.LEFT_EYE_UPPER, mm.LEFT_EYE_LOWER)):
            ring = sorted(set(upper) | set(lower))
            edges.append(np.array([(i, j) for i in iris for j in ring]))
        e = np.concatenate(edges)
        adj = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n)).tocsr()
        adj = ((adj + adj.T) > 0).astype(np.float64)
        lap = sp.diags(np.asarray(adj.sum(axis=1)).ravel()) - adj
        self.bilaplacian = (lap @ lap).tocsr()

    def fill(self, fixed: dict[int, np.ndarray | float], free: np.ndarray) -> np.ndarray:
        """Biharmonic field: given values on ``fixed``, smooth on ``free``, zero elsewhere."""
        n = len(self.points)
        dim = np.atleast_1d(np.asarray(next(iter(fixed.values())), dtype=np.float64)).size
        values = np.zeros((n, dim))
        for idx, val in fixed.items():
            values[idx] = val
        free = free.copy()
        free[list(fixed)] = False
        if free.any():
            f_idx, c_idx = np.flatnonzero(free), np.flatnonzero(~free)
            a = self.bilaplacian[f_idx][:, f_idx].tocsc()
            b = -self.bilaplacian[f_idx][:, c_idx] @ values[c_idx]
            values[f_idx] = np.column_stack([spla.spsolve(a, b[:, k]) for k in range(dim)])
        return values if dim > 1 else values[:, 0]

    def near(self, indices: Iterable[int], radius: float) -> np.ndarray:
        """Vertices within ``radius`` metres (Euclidean) of any of ``indices``."""
        src = self.points[list(indices)]
        d = np.linalg.norm(self.points[:, None, :] - src[None, :, :], axis=-1).min(axis=1)
        return d < radius

    def weights(self, ones: Iterable[int], radius: float, zeros: Iterable[int] = (),
                partial: dict[int, float] | None = None) -> np.ndarray:
        """Scalar weight: 1 on ``ones``, 0 on ``zeros`` and beyond ``radius``, smooth between."""
        ones = list(ones)
        fixed: dict[int, np.ndarray | float] = {i: 1.0 for i in ones}
        fixed.update({i: 0.0 for i in zeros})
        fixed.update(partial or {})
        return self.fill(fixed, self.near(ones, radius))

    def mirrored(self, field: np.ndarray) -> np.ndarray:
        """The left/right mirror image of a displacement field."""
        out = field[self.mirror].copy()
        out[:, 0] *= -1.0
        return out


def _scale_x(points: np.ndarray, gain: float) -> np.ndarray:
    d = np.zeros_like(points)
    d[:, 0] = gain * points[:, 0]
    return d


def _smoothstep(a: float, b: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - a) / (b - a), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def jaw_weights(g: FaceGraph) -> np.ndarray:
    """How much each vertex follows the lower jaw (1 on lower lip and chin, 0 above the mouth)."""
    p = g.points
    lower = set(mm.LIPS_LOWER_OUTER[1:-1]) | set(mm.LIPS_LOWER_INNER[1:-1])
    upper = set(mm.LIPS_UPPER_OUTER[1:-1]) | set(mm.LIPS_UPPER_INNER[1:-1])
    corners = {61: 0.4, 291: 0.4, 78: 0.4, 308: 0.4}
    y_corner = p[[61, 291], 1].mean()
    y_chin = p[152, 1]
    fixed: dict[int, np.ndarray | float] = {i: 1.0 for i in lower}
    fixed.update({i: 0.0 for i in upper})
    fixed.update(corners)
    for i in mm.FACE_OVAL:  # jaw line: from 0 at mouth-corner height to 1 at the chin
        fixed[i] = float(_smoothstep(y_corner, y_chin - 0.25 * (y_chin - y_corner), p[i, 1]))
    y_nose = p[2, 1]
    free = p[:, 1] > y_nose
    return g.fill(fixed, free)


def identity_modes(g: FaceGraph, normals: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """About a dozen smooth shape modes; one unit ~ one standard deviation."""
    p = g.points
    y_brow = p[list(mm.RIGHT_BROW + mm.LEFT_BROW), 1].mean()
    y_top, y_chin, y_mouth = p[10, 1], p[152, 1], p[[61, 291], 1].mean()
    modes: dict[str, np.ndarray] = {}
    modes["face_width"] = _scale_x(p, 0.05)
    modes["face_height"] = np.stack([np.zeros(len(p)), 0.045 * p[:, 1], np.zeros(len(p))], axis=1)
    modes["face_depth"] = np.stack([np.zeros(len(p)), np.zeros(len(p)), 0.06 * (p[:, 2] - p[:, 2].max())], axis=1)
    nose_tip = [1, 4, 19, 94, 2, 5]
    w = g.weights(nose_tip, 0.035, zeros=[168, 6] + list(mm.LIPS_UPPER_OUTER))
    modes["nose_length"] = w[:, None] * np.array([0.0, 0.0022, -0.0022])
    alar = [48, 278, 64, 294, 98, 327, 129, 358, 219, 439, 115, 344, 102, 331, 240, 460]
    w = g.weights(alar, 0.02, zeros=[1, 4, 168, 6, 197, 195])
    modes["nose_width"] = w[:, None] * _scale_x(p, 0.07)
    modes["jaw_width"] = _smoothstep(y_mouth - 0.02, y_chin, p[:, 1])[:, None] * _scale_x(p, 0.09)
    chin = [152, 175, 199, 200, 18, 148, 377, 171, 396, 208, 428, 32, 262]
    w = g.weights(chin, 0.03, zeros=list(mm.LIPS_LOWER_INNER))
    modes["chin_prominence"] = w[:, None] * np.array([0.0, 0.003, -0.004])
    eye_r = list(mm.RIGHT_EYE_UPPER + mm.RIGHT_EYE_LOWER + mm.RIGHT_IRIS)
    w = g.weights(eye_r, 0.022, zeros=[168, 6, 197, 8, 9])
    right = w[:, None] * np.array([-0.0017, 0.0, 0.0])
    modes["eye_spacing"] = right + g.mirrored(right)
    cheek_r = [50, 101, 36, 205, 187, 123, 117, 118, 119, 100, 47, 207]
    w = g.weights(cheek_r, 0.03, zeros=list(mm.LIPS_UPPER_OUTER + mm.RIGHT_EYE_LOWER) + [1, 4, 5])
    right = w[:, None] * normals * 0.0035
    modes["cheek_fullness"] = right + g.mirrored(right)
    height = np.clip((y_brow - p[:, 1]) / (y_brow - y_top), 0.0, None)
    modes["forehead_slope"] = np.stack([np.zeros(len(p)), np.zeros(len(p)), 0.0035 * height**2], axis=1)
    lips = list(mm.LIPS_UPPER_OUTER + mm.LIPS_LOWER_OUTER + mm.LIPS_UPPER_INNER + mm.LIPS_LOWER_INNER)
    w = g.weights(lips, 0.02, zeros=[2, 94, 19, 152])
    modes["mouth_width"] = w[:, None] * _scale_x(p, 0.06)
    brows = list(mm.RIGHT_BROW + mm.LEFT_BROW)
    w = g.weights(brows, 0.03, zeros=list(mm.RIGHT_EYE_LOWER + mm.LEFT_EYE_LOWER),
                  partial={i: 0.2 for i in mm.RIGHT_EYE_UPPER[1:-1] + mm.LEFT_EYE_UPPER[1:-1]})
    modes["brow_height"] = w[:, None] * np.array([0.0, -0.0016, 0.0])
    return tuple(modes), np.stack(list(modes.values()))


def _eye_close_right(g: FaceGraph) -> np.ndarray:
    """Lids meet a third of the way up the opening (the upper lid travels most of the
    way); iris points go onto that closing line, just behind it, so the eye fill
    collapses out of sight."""
    p = g.points
    up, lo = mm.RIGHT_EYE_UPPER, mm.RIGHT_EYE_LOWER
    fixed: dict[int, np.ndarray | float] = {}
    line = []
    for u, low in zip(up, lo):
        meet = p[low] + CLOSE_LINE * (p[u] - p[low])
        fixed[u], fixed[low] = meet - p[u] + np.array([0.0, 0.0, -0.0004]), meet - p[low]
        line.append(meet)
    line_pts = np.array(line)[np.argsort(p[list(lo), 0])]
    for i in mm.RIGHT_IRIS:
        x = np.clip(p[i, 0], line_pts[0, 0], line_pts[-1, 0])
        target = np.array([x, np.interp(x, line_pts[:, 0], line_pts[:, 1]),
                           np.interp(x, line_pts[:, 0], line_pts[:, 2]) + 0.002])
        fixed[i] = target - p[i]
    for i in mm.RIGHT_BROW:
        fixed[i] = np.zeros(3)
    return g.fill(fixed, g.near(up + lo, 0.018))


def _lid_field(g: FaceGraph, lid: tuple[int, ...], other: tuple[int, ...], shift: np.ndarray,
               radius: float, extra: dict[int, np.ndarray] | None = None) -> np.ndarray:
    """Move one lid's inner points by ``shift`` (most in the middle), holding the other lid."""
    inner = lid[1:-1]
    profile = np.sin(np.linspace(0, np.pi, len(inner) + 2)[1:-1]) ** 0.5
    fixed: dict[int, np.ndarray | float] = {i: s * shift for i, s in zip(inner, profile)}
    fixed.update({i: np.zeros(3) for i in other})
    fixed.update(extra or {})
    return g.fill(fixed, g.near(lid, radius))


def expression_modes(g: FaceGraph, normals: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """Expression components; ``*_left`` acts on the subject's left (+x) side."""
    p = g.points
    modes: dict[str, np.ndarray] = {}
    jaw = jaw_weights(g)
    hinge = np.array([0.0, p[[234, 454], 1].mean() + 0.01, p[[234, 454], 2].mean()])
    ang = np.deg2rad(13.0)
    rot = np.array([[1, 0, 0], [0, np.cos(ang), -np.sin(ang)], [0, np.sin(ang), np.cos(ang)]])
    modes["jaw_open"] = jaw[:, None] * ((p - hinge) @ rot.T + hinge - p)
    modes["jaw_left"] = jaw[:, None] * np.array([0.009, 0.0, 0.0])
    modes["jaw_right"] = g.mirrored(modes["jaw_left"])
    lips = list(mm.LIPS_UPPER_OUTER + mm.LIPS_LOWER_OUTER + mm.LIPS_UPPER_INNER + mm.LIPS_LOWER_INNER)
    mouth_c = p[lips].mean(axis=0)
    pucker = {i: np.array([-0.35 * (p[i, 0] - mouth_c[0]), 0.0, -0.009]) for i in lips}
    modes["lip_pucker"] = g.fill(pucker, g.near(lips, 0.03))

    def side(name: str, make: Callable[[], np.ndarray]) -> None:
        right = make()
        modes[f"{name}_left"] = g.mirrored(right)
        modes[f"{name}_right"] = right

    corner = [61, 78]
    far_side = [i for i in lips if p[i, 0] > 0.004]
    side("mouth_corner_up", lambda: g.weights(corner, 0.04, zeros=far_side)[:, None]
         * np.array([-0.004, -0.0065, 0.003]))
    side("mouth_corner_down", lambda: g.weights(corner, 0.04, zeros=far_side)[:, None]
         * np.array([-0.001, 0.005, 0.0]))
    side("brow_raise", lambda: g.weights(
        mm.RIGHT_BROW, 0.05, zeros=mm.RIGHT_EYE_LOWER + mm.LEFT_BROW,
        partial={i: 0.2 for i in mm.RIGHT_EYE_UPPER[1:-1]})[:, None] * np.array([0.0, -0.009, -0.001]))
    side("brow_lower", lambda: g.weights(
        mm.RIGHT_BROW, 0.04, zeros=mm.RIGHT_EYE_LOWER + mm.LEFT_BROW,
        partial={i: 0.3 for i in mm.RIGHT_EYE_UPPER[1:-1]})[:, None] * np.array([0.003, 0.006, -0.002]))
    side("eye_close", lambda: _eye_close_right(g))
    side("eye_wide", lambda: _lid_field(g, mm.RIGHT_EYE_UPPER, mm.RIGHT_EYE_LOWER + mm.RIGHT_BROW,
                                        np.array([0.0, -0.003, -0.0005]), 0.018))
    cheek_r = [50, 101, 118, 117, 111, 100, 36, 205]
    side("cheek_raise", lambda: _lid_field(
        g, mm.RIGHT_EYE_LOWER, mm.RIGHT_EYE_UPPER, np.array([0.0, -0.0018, 0.0]), 0.03,
        extra={i: np.array([0.0, -0.0035, -0.001]) for i in cheek_r}))
    puff_r = [207, 187, 147, 192, 213, 205, 206, 216, 50]
    fixed_puff: dict[int, np.ndarray | float] = {i: normals[i] * 0.009 for i in puff_r}
    fixed_puff.update({i: np.array([0.0, 0.0, -0.002]) for i in lips})
    right_puff = g.fill(fixed_puff, g.near(puff_r, 0.035) & (p[:, 0] < 0.0))
    modes["cheek_puff"] = right_puff + g.mirrored(right_puff)
    modes["cheek_puff"][lips] = np.array([0.0, 0.0, -0.002])  # both halves added them
    nose_sides = [48, 278, 64, 294, 98, 327, 129, 358, 219, 439, 115, 344, 102, 331, 49, 279, 209, 429]
    fixed_nose: dict[int, np.ndarray | float] = {i: np.array([0.0, -0.003, -0.0005]) for i in nose_sides}
    fixed_nose.update({i: np.array([0.0, -0.001, 0.0]) for i in (1, 4, 2, 94)})
    fixed_nose.update({i: np.zeros(3) for i in lips + [168, 6] + list(mm.RIGHT_EYE_LOWER + mm.LEFT_EYE_LOWER)})
    modes["nose_wrinkle"] = g.fill(fixed_nose, g.near(nose_sides, 0.025))
    upper = [i for i in mm.LIPS_UPPER_OUTER + mm.LIPS_UPPER_INNER if p[i, 0] < 0.001]
    lower = list(mm.LIPS_LOWER_OUTER[1:-1] + mm.LIPS_LOWER_INNER[1:-1])

    def lip_raise_right() -> np.ndarray:
        fixed: dict[int, np.ndarray | float] = {}
        for i in upper:
            s = _smoothstep(0.0, 0.012, np.array(-p[i, 0]))  # most at the canine, none at the midline
            fixed[i] = float(np.clip(0.35 + s, 0, 1)) * np.array([0.0, -0.0045, -0.001])
        fixed.update({i: np.zeros(3) for i in lower + [i for i in lips if p[i, 0] > 0.002 and i not in upper]})
        return g.fill(fixed, g.near(upper, 0.025))

    side("upper_lip_raise", lip_raise_right)
    return tuple(modes), np.stack(list(modes.values()))


def close_lips(g: FaceGraph) -> np.ndarray:
    """Displacement that brings the photo's parted lips together (a neutral, closed mouth)."""
    p = g.points
    fixed: dict[int, np.ndarray | float] = {}
    for u, low in zip(mm.LIPS_UPPER_INNER, mm.LIPS_LOWER_INNER):
        mid = 0.5 * (p[u] + p[low])
        fixed[u], fixed[low] = mid - p[u], mid - p[low]
    for outer, inner in ((mm.LIPS_UPPER_OUTER, mm.LIPS_UPPER_INNER), (mm.LIPS_LOWER_OUTER, mm.LIPS_LOWER_INNER)):
        for o, i in zip(outer[1:-1], inner[1:-1]):
            fixed[o] = 0.85 * fixed[i]
    fixed.update({i: np.zeros(3) for i in (2, 94, 19, 1, 152, 175)})
    return g.fill(fixed, g.near(list(fixed), 0.03))
