"""Small geometry helpers: poses, rotation averaging, similarity alignment (Umeyama), mesh normals.

Poses are 4x4 homogeneous matrices ``T_a_b`` mapping points from frame ``b`` to
frame ``a`` (``x_a = T_a_b @ x_b``), so chains read left to right:
``T_c_w = T_c_b @ T_b_w``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def to_h(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """4x4 pose from a rotation and a translation."""
    T = np.eye(4)
    T[:3, :3] = np.asarray(R, dtype=np.float64).reshape(3, 3)
    T[:3, 3] = np.asarray(t, dtype=np.float64).reshape(3)
    return T


def inv_h(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 pose."""
    R, t = T[:3, :3], T[:3, 3]
    out = np.eye(4)
    out[:3, :3] = R.T
    out[:3, 3] = -R.T @ t
    return out


def project_to_so3(M: np.ndarray) -> np.ndarray:
    """The rotation nearest (Frobenius) to a 3x3 matrix."""
    U, _, Vt = np.linalg.svd(M)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return U @ D @ Vt


def rotation_angle_deg(Ra: np.ndarray, Rb: np.ndarray) -> float:
    """Angle of ``Ra @ Rb.T`` in degrees."""
    c = (np.trace(Ra @ Rb.T) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def mean_pose(poses: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Chordal L2 mean of rotations (SVD projection) and weighted mean of translations."""
    w = np.ones(len(poses)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    R = project_to_so3(sum(wi * T[:3, :3] for wi, T in zip(w, poses)))
    t = sum(wi * T[:3, 3] for wi, T in zip(w, poses))
    return to_h(R, t)


def consensus_pose(
    candidates: Sequence[np.ndarray],
    weights: Sequence[float],
    rot_tol_deg: float,
    trans_tol: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Robust average of pose hypotheses: (mean of the largest agreeing set, inlier mask).

    Every candidate is tried as a hypothesis; its support is the total weight of the
    candidates within ``rot_tol_deg`` and ``trans_tol`` of it. The best-supported
    set (ties: smaller spread) is averaged. Several candidates may come from one
    observation (e.g. both orders of a symmetric chessboard): only the one that
    agrees joins.
    """
    n = len(candidates)
    if n == 0:
        raise ValueError("consensus_pose needs at least one candidate")
    w = np.asarray(weights, dtype=np.float64)
    rot = np.array([[rotation_angle_deg(a[:3, :3], b[:3, :3]) for b in candidates] for a in candidates])
    tr = np.array([[np.linalg.norm(a[:3, 3] - b[:3, 3]) for b in candidates] for a in candidates])
    agree = (rot <= rot_tol_deg) & (tr <= trans_tol)
    support = agree @ w
    spread = (rot / rot_tol_deg + tr / trans_tol) * agree
    score = [(support[i], -spread[i].sum()) for i in range(n)]
    best = max(range(n), key=lambda i: score[i])
    inliers = agree[best]
    mean = mean_pose([candidates[i] for i in np.flatnonzero(inliers)], w[inliers])
    # One re-centring step: membership judged against the mean, not the seed hypothesis.
    again = np.array([
        rotation_angle_deg(T[:3, :3], mean[:3, :3]) <= rot_tol_deg
        and np.linalg.norm(T[:3, 3] - mean[:3, 3]) <= trans_tol
        for T in candidates
    ])
    if again.any() and w[again].sum() >= w[inliers].sum():
        inliers = again
        mean = mean_pose([candidates[i] for i in np.flatnonzero(inliers)], w[inliers])
    return mean, inliers


def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity ``(s, R, t)`` minimising ``sum |dst - (s R src + t)|^2`` (Umeyama 1991)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    U, S, Vt = np.linalg.svd(cov)
    D = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        D[2, 2] = -1.0
    R = U @ D @ Vt
    s = float(np.trace(np.diag(S) @ D) / (xs**2).sum(1).mean()) if with_scale else 1.0
    t = mu_d - s * R @ mu_s
    return s, R, t


def vertex_normals(points: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (faces must be consistently oriented)."""
    fn = np.cross(points[faces[:, 1]] - points[faces[:, 0]], points[faces[:, 2]] - points[faces[:, 0]])
    normals = np.zeros_like(points)
    for k in range(3):
        np.add.at(normals, faces[:, k], fn)
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
