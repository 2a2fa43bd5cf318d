"""Where mediapipe's landmarks sit on ICT-FaceKit's face, computed from geometry at load time.

ICT ships the iBUG/Multi-PIE 68 landmarks as vertex ids, not mediapipe's 478. The
project's built-in model (``fitting.face_models.builtin``) *is* mediapipe's topology, so
we register it onto ICT's face and read off where each of its vertices lands:

1. ``IBUG68_TO_MEDIAPIPE`` pairs the inner-face 68-point ids (brows, nose, eyes,
   lips) and the chin with mediapipe ids (chosen by where each point sits along its
   contour; ``tests/test_ict_model.py`` checks order and left/right symmetry on the
   built-in model). The jaw contour 0-16 is left out except the chin: it is a
   silhouette in 2D schemes, not a fixed point on the skin.
2. A similarity (``fitting.geometry.umeyama``) takes the built-in template onto
   ICT's template on those anchors.
3. Iterative closest point, twice: first the built-in model's own identity and
   expression coefficients (ridge least squares) with the similarity re-estimated,
   then a smooth residual (membrane energy on the built-in mesh, stiffness decreasing).
   Anchors pull towards their 68-point vertex, every other vertex towards its
   closest point on ICT's face-region triangles.
4. Each mediapipe landmark becomes its closest point on ICT's face-region surface:
   a triangle and barycentric weights.

Both models are registered with the mouth slightly open (built-in ``jaw_open`` and
ICT ``jawOpen`` scaled to the same inner-lip gap), because in ICT's neutral pose the
lips touch (< 1 mm apart) and a closest point could land on the wrong lip; the
embedding is topological, so it holds in every pose. The iris landmarks 468-477 are
*not* embedded: ICT's skin part has eye sockets, not eyeballs, and a point fixed
on the eyelid would be wrong as soon as the gaze moves. The embedding covers ids
0..467. Everything is deterministic (no random init) and takes well under a second.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import spsolve
from scipy.spatial import cKDTree

from fitting.face_models.base import LandmarkEmbedding
from fitting.geometry import umeyama

N_EMBEDDED = 468  # mediapipe ids 0..467: the face mesh without the irises

#: iBUG/Multi-PIE 68-point index (0-based) -> mediapipe landmark id.
IBUG68_TO_MEDIAPIPE: dict[int, int] = {
    8: 152,  # chin
    # brows, subject's right outer -> inner, then left inner -> outer (upper brow edge)
    17: 70, 18: 63, 19: 105, 20: 66, 21: 107, 22: 336, 23: 296, 24: 334, 25: 293, 26: 300,
    # nose ridge (nasion -> tip), then the nose base right -> left
    27: 168, 28: 197, 29: 195, 30: 4, 31: 98, 32: 97, 33: 2, 34: 326, 35: 327,
    # right eye: outer corner, upper lid, inner corner, lower lid
    36: 33, 37: 160, 38: 158, 39: 133, 40: 153, 41: 144,
    # left eye: inner corner, upper lid, outer corner, lower lid
    42: 362, 43: 385, 44: 387, 45: 263, 46: 373, 47: 380,
    # outer lips: right corner, upper lip to the left corner, lower lip back
    48: 61, 49: 40, 50: 37, 51: 0, 52: 267, 53: 270, 54: 291, 55: 321, 56: 314, 57: 17, 58: 84, 59: 91,
    # inner lips
    60: 78, 61: 81, 62: 13, 63: 311, 64: 308, 65: 402, 66: 14, 67: 178,
}
#: Anchors whose definitions differ most between the schemes pull less.
WEAK_ANCHORS = frozenset({17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 29, 31, 32, 34, 35})
#: Anchors we test against (mm accuracy expected): eye and mouth corners, nose tip, chin.
SAFE_ANCHORS = {36: 33, 39: 133, 42: 362, 45: 263, 48: 61, 54: 291, 30: 4, 8: 152}

_ANCHOR_WEIGHT, _WEAK_WEIGHT = 10.0, 3.0
_ROBUST_SCALE = 0.005  # m: closest-point pairs much further apart than this pull less
_K_CANDIDATES = 32
_RIDGE = 0.1  # coefficient prior, relative to the mean data curvature


def closest_points_on_mesh(
    points: np.ndarray, vertices: np.ndarray, triangles: np.ndarray, tree: cKDTree | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closest surface point of each point: ``(triangle index, barycentric (P, 3), point (P, 3))``.

    Only the 32 triangles with the nearest centroids are searched (exactly): enough for
    points near a mesh of small, even triangles such as ICT's, and fast.
    """
    points = np.asarray(points, dtype=np.float64)
    if tree is None:
        tree = cKDTree(vertices[triangles].mean(axis=1))
    k = min(_K_CANDIDATES, len(triangles))
    _, cand = tree.query(points, k=k)
    cand = cand.reshape(len(points), k)
    tri = triangles[cand]  # (P, k, 3)
    a, b, c = (vertices[tri[..., i]] for i in range(3))
    bary = _closest_on_triangles(np.repeat(points[:, None], k, axis=1), a, b, c)
    q = bary[..., :1] * a + bary[..., 1:2] * b + bary[..., 2:] * c
    best = np.argmin(((q - points[:, None]) ** 2).sum(-1), axis=1)
    rows = np.arange(len(points))
    return cand[rows, best], bary[rows, best], q[rows, best]


def _closest_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Barycentric weights of the closest point on triangles abc (Ericson, Real-Time Collision Detection 5.1.5)."""

    def dot(u, v):
        return np.einsum("...i,...i->...", u, v)

    ab, ac, ap, bp, cp = b - a, c - a, p - a, p - b, p - c
    d1, d2, d3, d4, d5, d6 = dot(ab, ap), dot(ac, ap), dot(ab, bp), dot(ac, bp), dot(ab, cp), dot(ac, cp)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    eps = 1e-300
    denom = va + vb + vc
    v = vb / np.where(np.abs(denom) > eps, denom, eps)
    w = vc / np.where(np.abs(denom) > eps, denom, eps)
    out = np.stack([1.0 - v - w, v, w], axis=-1)  # the closest point is inside the triangle

    def put(mask, weights):
        out[mask] = weights[mask] if weights.ndim == out.ndim else weights

    e = d4 - d3 + d5 - d6
    t_bc = (d4 - d3) / np.where(np.abs(e) > eps, e, eps)
    put((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0), np.stack([0 * t_bc, 1 - t_bc, t_bc], -1))
    t_ac = d2 / np.where(np.abs(d2 - d6) > eps, d2 - d6, eps)
    put((vb <= 0) & (d2 >= 0) & (d6 <= 0), np.stack([1 - t_ac, 0 * t_ac, t_ac], -1))
    put((d6 >= 0) & (d5 <= d6), np.array([0.0, 0.0, 1.0]))
    t_ab = d1 / np.where(np.abs(d1 - d3) > eps, d1 - d3, eps)
    put((vc <= 0) & (d1 >= 0) & (d3 <= 0), np.stack([1 - t_ab, t_ab, 0 * t_ab], -1))
    put((d3 >= 0) & (d4 <= d3), np.array([0.0, 1.0, 0.0]))
    put((d1 <= 0) & (d2 <= 0), np.array([1.0, 0.0, 0.0]))
    return np.clip(out, 0.0, 1.0)


def _laplacian(faces: np.ndarray, n: int) -> sparse.csc_matrix:
    """Graph Laplacian (n x n) of the mesh edges: ``sum_edges |d_i - d_j|^2 = d^T L d``."""
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    adj = sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    adj = (adj + adj.T).tocsc()
    return (sparse.diags(np.asarray(adj.sum(axis=1)).ravel()) - adj).tocsc()


def _source_model():
    """The built-in model on vertices 0..467: template, stacked bases, skin faces, ``jaw_open`` delta."""
    from fitting.face_models.builtin import builtin_face_model

    m = builtin_face_model(np.float64)
    n = N_EMBEDDED
    jaw = m.expression_basis[m.expression_names.index("jaw_open"), :n].astype(np.float64)
    basis = np.concatenate([m.identity_basis, m.expression_basis])[:, :n].astype(np.float64)
    return m.template[:n].astype(np.float64), basis, m.skin_faces.astype(np.int64), jaw


def build_mediapipe_embedding(
    vertices: np.ndarray,
    triangles: np.ndarray,
    landmarks68: np.ndarray,
    jaw_open_delta: np.ndarray | None = None,
    n_rigid_iters: int = 6,
    stiffness: tuple[float, ...] = (10.0, 3.0, 1.0, 0.3),
) -> LandmarkEmbedding:
    """Embed mediapipe landmarks 0..467 on the surface ``triangles`` of ``vertices``.

    ``vertices`` (N, 3) are the target's neutral vertices in the project frame (metres,
    y down, looking towards -z); ``triangles`` the surface the landmarks may lie on
    (ICT: its face region); ``landmarks68`` the 68-point vertex ids; ``jaw_open_delta``
    (N, 3) the target's jaw-opening blendshape, used to part the lips (None: register
    the neutral pose).
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    triangles = np.asarray(triangles, dtype=np.int64)
    lm68 = np.asarray(landmarks68, dtype=np.int64)
    ibug = np.array(sorted(IBUG68_TO_MEDIAPIPE))
    mp_ids = np.array([IBUG68_TO_MEDIAPIPE[i] for i in ibug])

    # Part the lips in both models by the same inner-lip gap (built-in jaw_open = 0.3).
    template, basis, faces, jaw_src = _source_model()
    target = vertices
    if jaw_open_delta is not None:
        src_open = 0.3
        template = template + src_open * jaw_src
        jaw_tgt = np.asarray(jaw_open_delta, dtype=np.float64)
        tgt_gap = np.linalg.norm(jaw_tgt[lm68[66]] - jaw_tgt[lm68[62]])
        src_gap = src_open * np.linalg.norm(jaw_src[14] - jaw_src[13])
        scale = np.linalg.norm(vertices[lm68[45]] - vertices[lm68[36]]) / 0.09  # built-in: 9 cm
        target = vertices + (scale * src_gap / max(tgt_gap, 1e-12)) * jaw_tgt
    anchor_targets = target[lm68[ibug]]

    weights = np.ones(N_EMBEDDED)
    weights[mp_ids] = [_WEAK_WEIGHT if i in WEAK_ANCHORS else _ANCHOR_WEIGHT for i in ibug]
    tree = cKDTree(target[triangles].mean(axis=1))

    def targets_for(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, _, q = closest_points_on_mesh(x, target, triangles, tree)
        dist = np.linalg.norm(q - x, axis=1)
        w = weights / (1.0 + (dist / _ROBUST_SCALE) ** 2)
        q[mp_ids] = anchor_targets
        w[mp_ids] = weights[mp_ids]
        return q, w

    # 2. similarity on the anchors; 3a. built-in coefficients + similarity by ICP.
    s, R, t = umeyama(template[mp_ids], anchor_targets)
    coeffs = np.zeros(len(basis))
    flat = basis.reshape(len(basis), -1).T  # (3n, K)
    for _ in range(n_rigid_iters):
        shape = template + (flat @ coeffs).reshape(-1, 3)
        y, w = targets_for(s * shape @ R.T + t)
        s, R, t = umeyama(shape, y)
        # y ~ s R (template + B c) + t  =>  B c ~ R^T (y - t) / s - template
        rhs = ((y - t) @ R / s - template).reshape(-1)
        wf = np.repeat(w, 3)
        ata = flat.T @ (wf[:, None] * flat)
        reg = _RIDGE * np.trace(ata) / len(coeffs)
        coeffs = np.linalg.solve(ata + reg * np.eye(len(coeffs)), flat.T @ (wf * rhs))
    x = s * (template + (flat @ coeffs).reshape(-1, 3)) @ R.T + t

    # 3b. a smooth residual, stiff first: (W + mu L) d = W (y - x).
    lap = _laplacian(faces, N_EMBEDDED)
    for mu in stiffness:
        y, w = targets_for(x)
        x = x + spsolve((sparse.diags(w) + mu * lap).tocsc(), w[:, None] * (y - x))

    # 4. each landmark: its closest point on the (lip-parted) target surface.
    tri_idx, bary, _ = closest_points_on_mesh(x, target, triangles, tree)
    return LandmarkEmbedding(np.arange(N_EMBEDDED), triangles[tri_idx], bary / bary.sum(1, keepdims=True))
