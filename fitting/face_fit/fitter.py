"""Multi-view fitting of a morphable face model to detected landmarks.

One session is one batched torch problem: a single identity shared by all
frames, an expression and a rigid head pose per frame, cameras held fixed. The
data term is a Cauchy-robust reprojection error of the model's embedded
landmarks into every view where the face was detected, weighted per landmark
(the face outline slides along the silhouette in oblique views, so it counts
less, and so does the interior of mediapipe's mesh, which is regressed rather than
seen) and per view (detector confidence); Gaussian priors keep the coefficients
plausible where the views do not constrain them. Residuals are in reference
pixels (a face with a 60 px eye-corner distance), so one configuration serves
any resolution.

Stages, all L-BFGS: (1) head poses from per-view PnP of the mean face, averaged
robustly across views; (2) poses alone; (3) everything; then views whose median
residual exceeds ``outlier_px`` (FaceMesh returns faces with wrong landmarks in
strongly turned views) are dropped, the others weighted by their inverse residual
variance, and (4) everything is refined again. Frames seen by fewer than ``min_views`` views are
fitted if possible and flagged; frames seen by none are left NaN and flagged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import warnings
from contextlib import contextmanager

import cv2
import numpy as np
import torch

from capture_schema.cameras import Camera
from fitting.camera_model import CameraBatch, axis_angle_to_matrix
from fitting.face_models import builtin as mm
from fitting.face_models.base import FaceModel
from fitting.face_models.builtin import FACE_OVAL, LEFT_IRIS, OUTER_EYE_CORNERS, RIGHT_IRIS
from fitting.geometry import consensus_pose, inv_h, to_h

#: Per-view status codes of ``FrameFit.view_status``.
VIEW_USED, VIEW_NOT_DETECTED, VIEW_OUTLIER, VIEW_NO_FIT = "used", "not_detected", "outlier", "frame_not_fitted"
#: Per-frame status codes of ``FrameFit.frame_status``.
FRAME_OK, FRAME_FEW_VIEWS, FRAME_NOT_FITTED = "fitted", "too_few_views", "not_fitted"

# Parameter units chosen so one unit of each moves landmarks by a similar number of pixels
# (L-BFGS converges several times faster on a problem scaled like this).
_TRANSLATION_UNIT_M = 0.005
#: Residuals are measured in "reference pixels": pixels of a face whose outer eye corners are
#: this far apart (a head filling a 512 px frame at ~1 m), so the weights, the robust scale and
#: the priors mean the same at any resolution and framing.
REFERENCE_EYE_PX = 60.0
#: float32 gives the same fit as float64 here (parameters ~unit scale, residuals in pixels), 1.5x faster.
_DTYPE = torch.float32
#: Landmarks on visible features (eyes, brows, lips, nose); the rest of mediapipe's mesh
#: (cheeks, forehead) is regressed from the face's overall shape rather than seen.
NOSE = (168, 6, 197, 195, 5, 4, 1, 19, 94, 2, 98, 327, 64, 294, 48, 278, 115, 344, 220, 440)
FEATURE_LANDMARKS = tuple(sorted(set(
    mm.RIGHT_EYE_UPPER + mm.RIGHT_EYE_LOWER + mm.LEFT_EYE_UPPER + mm.LEFT_EYE_LOWER + mm.RIGHT_BROW + mm.LEFT_BROW
    + mm.LIPS_UPPER_OUTER + mm.LIPS_LOWER_OUTER + mm.LIPS_UPPER_INNER + mm.LIPS_LOWER_INNER + NOSE
    + RIGHT_IRIS + LEFT_IRIS + FACE_OVAL)))
_ROTATION_UNIT_RAD = 0.05


@dataclass(frozen=True)
class FitConfig:
    """Weights and schedule of the fit; the defaults suit 13 views at 512 px and up."""

    robust_scale_px: float = 2.0
    contour_weight: float = 0.1
    iris_weight: float = 0.5
    interior_weight: float = 0.1
    interior_stride: int = 3
    identity_prior: float = 150.0  # cost (reference px^2) per unit^2 of coefficient
    expression_prior: float = 20.0
    min_views: int = 2
    outlier_px: float = 12.0  # median residual (reference px) that marks a view's detection wrong
    pose_iterations: int = 10  # caps: L-BFGS stops earlier once the loss stops changing
    iterations: int = 150
    min_confidence_weight: float = 0.2
    reweight_views: bool = True
    threads: int = 1  # torch intra-op threads during the fit (see ``torch_threads``)


@dataclass
class FrameFit:
    """Result for ``E`` frames seen by ``C`` cameras."""

    model_name: str
    identity: np.ndarray  # (n_id,)
    expression: np.ndarray  # (E, n_expr), NaN rows for unfitted frames
    rotation: np.ndarray  # (E, 3, 3) model-to-world
    translation: np.ndarray  # (E, 3) metres
    vertices: np.ndarray  # (E, N, 3) float32, posed in world
    view_rmse_px: np.ndarray  # (E, C) reprojection RMSE of the embedded landmarks, NaN where no detection
    view_median_px: np.ndarray  # (E, C)
    view_status: np.ndarray  # (E, C) str
    frame_status: np.ndarray  # (E,) str
    n_views: np.ndarray  # (E,) views used
    landmark_ids: np.ndarray  # (L,) mediapipe ids the model embeds
    projected: np.ndarray = field(repr=False, default=None)  # (E, C, L, 2) fitted landmarks in pixels


def landmark_weights(landmark_ids: np.ndarray, config: FitConfig) -> np.ndarray:
    """Per-landmark weights: the outline and the irises (gaze is not in the model) count less."""
    w = np.ones(len(landmark_ids))
    w[~np.isin(landmark_ids, FEATURE_LANDMARKS)] = config.interior_weight * config.interior_stride
    w[np.isin(landmark_ids, FACE_OVAL)] = config.contour_weight
    w[np.isin(landmark_ids, RIGHT_IRIS + LEFT_IRIS)] = config.iris_weight
    return w


def loss_landmarks(landmark_ids: np.ndarray, config: FitConfig) -> np.ndarray:
    """Indices (into ``landmark_ids``) of the landmarks the loss uses: every feature landmark
    and every ``interior_stride``-th of mediapipe's regressed interior points, whose weight
    grows by the same factor, so the fit costs a third less for the same answer."""
    interior = np.flatnonzero(~np.isin(landmark_ids, FEATURE_LANDMARKS))
    keep = np.ones(len(landmark_ids), dtype=bool)
    keep[interior] = False
    keep[interior[:: config.interior_stride]] = True
    return np.flatnonzero(keep)


def _pnp_pose(model_points: np.ndarray, pixels: np.ndarray, camera: Camera) -> np.ndarray | None:
    """Model-to-world pose from one view, or None when PnP fails."""
    ok = np.isfinite(pixels).all(axis=1)
    if ok.sum() < 6:
        return None
    found, rvec, tvec = cv2.solvePnP(model_points[ok], pixels[ok], camera.K, np.asarray(camera.dist),
                                     flags=cv2.SOLVEPNP_SQPNP)
    if not found:
        return None
    R_cm, _ = cv2.Rodrigues(rvec)
    if tvec[2, 0] <= 0:
        return None
    return inv_h(to_h(camera.R, camera.t)) @ to_h(R_cm, tvec.reshape(3))


def initial_poses(model_points: np.ndarray, obs: np.ndarray, use: np.ndarray, weight: np.ndarray,
                  cameras: Sequence[Camera]) -> list[np.ndarray | None]:
    """Per frame, the robust consensus of per-view PnP poses of the mean face."""
    poses: list[np.ndarray | None] = []
    for e in range(obs.shape[0]):
        cands, w = [], []
        for c in np.flatnonzero(use[e]):
            T = _pnp_pose(model_points, obs[e, c], cameras[c])
            if T is not None:
                cands.append(T)
                w.append(weight[e, c])
        poses.append(consensus_pose(cands, w, rot_tol_deg=15.0, trans_tol=0.03)[0] if cands else None)
    return poses


class _Problem:
    """Tensors and parameters of one batched fit (see ``_DTYPE``)."""

    def __init__(self, model: FaceModel, cameras: Sequence[Camera], obs: np.ndarray, weights: np.ndarray,
                 poses: list[np.ndarray], pixel_scale: np.ndarray, select: np.ndarray, config: FitConfig) -> None:
        self.model, self.config = model, config
        dt = _DTYPE
        self.cams = CameraBatch.from_cameras(cameras, dtype=dt)
        self.select = torch.as_tensor(select)  # the landmarks (of the embedding's L) that enter the loss
        self.obs = torch.as_tensor(np.nan_to_num(obs[:, :, select]), dtype=dt)  # (E, C, L', 2)
        self.weights = torch.as_tensor(weights[:, :, select], dtype=dt)  # (E, C, L')
        self.norm = max(float(self.weights.sum()), 1.0)
        self.pixel_scale = pixel_scale
        self.inv_scale2 = torch.as_tensor(1.0 / pixel_scale**2, dtype=dt)[:, None, None]  # (E, 1, 1)
        E = obs.shape[0]
        with torch.no_grad():
            mean_pts = model.landmarks_torch(torch.zeros(1, model.n_identity, dtype=dt),
                                             torch.zeros(1, model.n_expression, dtype=dt))[0]
        self.centre = mean_pts.mean(0)  # rotate about the face, not the model's origin
        rv = np.stack([cv2.Rodrigues(T[:3, :3])[0].reshape(3) for T in poses])
        centre_world = np.stack([T[:3, :3] @ self.centre.numpy() + T[:3, 3] for T in poses])
        self.identity = torch.zeros(model.n_identity, dtype=dt, requires_grad=True)
        self.expression = torch.zeros(E, model.n_expression, dtype=dt, requires_grad=True)
        self.rvec = torch.as_tensor(rv / _ROTATION_UNIT_RAD, dtype=dt).requires_grad_(True)
        self.position = torch.as_tensor(centre_world / _TRANSLATION_UNIT_M, dtype=dt).requires_grad_(True)

    def pose(self) -> tuple[torch.Tensor, torch.Tensor]:
        R = axis_angle_to_matrix(self.rvec * _ROTATION_UNIT_RAD)
        t = self.position * _TRANSLATION_UNIT_M - torch.einsum("eij,j->ei", R, self.centre)
        return R, t

    def project(self, every_landmark: bool = False) -> torch.Tensor:
        """Pixels (E, C, L', 2) of the landmarks in the loss (all L with ``every_landmark``)."""
        E = self.expression.shape[0]
        pts = self.model.landmarks_torch(self.identity.expand(E, -1), self.expression)
        if not every_landmark:
            pts = pts[:, self.select]
        R, t = self.pose()
        world = torch.einsum("eij,elj->eli", R, pts) + t[:, None, :]
        pix, _ = self.cams.project(world[:, None].expand(-1, len(self.cams), -1, -1))
        return pix

    def loss(self) -> torch.Tensor:
        s2 = self.config.robust_scale_px**2
        r2 = ((self.project() - self.obs) ** 2).sum(-1) * self.inv_scale2
        data = (self.weights * s2 * torch.log1p(r2 / s2)).sum()
        prior = self.config.identity_prior * (self.identity**2).sum()
        prior = prior + self.config.expression_prior * (self.expression**2).sum()
        return (data + prior) / self.norm  # O(1) whatever the number of views: one stopping rule fits all

    def solve(self, params: list[torch.Tensor], iterations: int) -> None:
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=iterations, history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-7, tolerance_change=1e-6)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            value = self.loss()
            value.backward()
            return value

        opt.step(closure)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` intra-op threads. A fit is a small problem: with two threads on
    a busy 2-core machine the threads spin against other processes (measured 27 s instead of
    1 s), and the multiprocess executor runs several fits at once."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_frames(model: FaceModel, cameras: Sequence[Camera], observations: np.ndarray,
               confidence: np.ndarray | None = None, config: FitConfig = FitConfig()) -> FrameFit:
    """Fit one identity and per-frame expression and pose to ``observations``.

    ``observations`` is ``(E, C, 478, 2)`` mediapipe landmarks in pixels (NaN where
    camera ``c`` found no face in frame ``e``); ``confidence`` ``(E, C)`` weights views.
    """
    with torch_threads(config.threads):
        return _fit_frames(model, cameras, observations, confidence, config)


def _fit_frames(model: FaceModel, cameras: Sequence[Camera], observations: np.ndarray,
                confidence: np.ndarray | None, config: FitConfig) -> FrameFit:
    obs_all = np.asarray(observations, dtype=np.float64)
    E, C = obs_all.shape[:2]
    if obs_all.shape[2:] != (478, 2) or len(cameras) != C:
        raise ValueError(f"observations must be (frames, {len(cameras)} cameras, 478, 2), got {obs_all.shape}")
    ids = model.landmark_embedding.landmark_ids
    obs = obs_all[:, :, ids]
    detected = np.isfinite(obs).all(axis=(2, 3))
    conf = np.ones((E, C)) if confidence is None else np.nan_to_num(np.asarray(confidence, dtype=np.float64))
    view_w = np.where(detected, np.clip(conf, config.min_confidence_weight, 1.0), 0.0)

    with torch.no_grad():
        mean_pts = model.landmarks_torch(torch.zeros(1, model.n_identity, dtype=torch.float64),
                                         torch.zeros(1, model.n_expression, dtype=torch.float64))[0].numpy()
    poses = initial_poses(mean_pts, obs, detected, view_w, cameras)
    fitted = np.array([p is not None for p in poses])
    status = np.full((E, C), VIEW_NOT_DETECTED, dtype=object)
    status[detected] = VIEW_USED
    status[~fitted] = VIEW_NO_FIT
    frame_ids = np.flatnonzero(fitted)
    result = _empty_result(model, E, C, ids, status)
    if len(frame_ids) == 0:
        return result

    lw = landmark_weights(ids, config)
    use = detected[frame_ids]
    select = loss_landmarks(ids, config)
    problem = _Problem(model, cameras, obs[frame_ids], view_w[frame_ids, :, None] * use[..., None] * lw,
                       [poses[e] for e in frame_ids], _pixel_scale(obs_all)[frame_ids], select, config)
    problem.solve([problem.rvec, problem.position], config.pose_iterations)
    problem.solve([problem.identity, problem.expression, problem.rvec, problem.position], config.iterations)

    outliers, scale = _outlier_views(problem, obs[frame_ids][:, :, select], use)
    if outliers.any() or config.reweight_views:
        keep = use & ~outliers
        view_scale = np.ones_like(scale)
        if config.reweight_views and keep.any():
            # Views differ in how well the detector works (frontal ~1.5 px, 60 degrees 6-9 px):
            # weight each by its inverse residual variance, relative to the typical view.
            ref = np.median(scale[keep])
            view_scale = (ref / np.maximum(scale, ref)) ** 2
        problem.weights = problem.weights * torch.as_tensor((keep * view_scale)[..., None], dtype=_DTYPE)
        problem.solve([problem.identity, problem.expression, problem.rvec, problem.position], config.iterations)
        sub = status[frame_ids]
        sub[outliers] = VIEW_OUTLIER
        status[frame_ids] = sub
    _fill_result(result, problem, frame_ids, obs, status, config)
    return result


def _pixel_scale(obs_all: np.ndarray) -> np.ndarray:
    """Per frame: detected pixels per reference pixel (median outer-eye-corner distance / 60 px)."""
    eye = np.linalg.norm(obs_all[:, :, OUTER_EYE_CORNERS[0]] - obs_all[:, :, OUTER_EYE_CORNERS[1]], axis=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        scale = np.nanmedian(eye, axis=1) / REFERENCE_EYE_PX
    return np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)


def _outlier_views(problem: _Problem, obs: np.ndarray, use: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Views whose median residual exceeds ``outlier_px`` reference pixels, and every view's
    median residual (reference pixels; inf where unused)."""
    with torch.no_grad():
        pix = problem.project().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(np.linalg.norm(pix - obs, axis=-1), axis=-1) / problem.pixel_scale[:, None]
    bad = use & (med > problem.config.outlier_px)
    residual_scale = np.where(use, np.nan_to_num(med, nan=np.inf), np.inf)
    # Never drop a frame's last two views: a consistent pair is better than nothing.
    keep_some = (use & ~bad).sum(axis=1) < min(2, problem.config.min_views)
    bad[keep_some] = False
    return bad, residual_scale


def _empty_result(model: FaceModel, E: int, C: int, ids: np.ndarray, status: np.ndarray) -> FrameFit:
    nan = np.nan
    return FrameFit(
        model_name=model.name,
        identity=np.zeros(model.n_identity),
        expression=np.full((E, model.n_expression), nan),
        rotation=np.full((E, 3, 3), nan),
        translation=np.full((E, 3), nan),
        vertices=np.full((E, model.n_vertices, 3), nan, dtype=np.float32),
        view_rmse_px=np.full((E, C), nan),
        view_median_px=np.full((E, C), nan),
        view_status=status,
        frame_status=np.full(E, FRAME_NOT_FITTED, dtype=object),
        n_views=np.zeros(E, dtype=np.int64),
        landmark_ids=ids,
        projected=np.full((E, C, len(ids), 2), nan),
    )


def _fill_result(result: FrameFit, problem: _Problem, frame_ids: np.ndarray, obs: np.ndarray,
                 status: np.ndarray, config: FitConfig) -> None:
    model = problem.model
    with torch.no_grad():
        R, t = problem.pose()
        pix = problem.project(every_landmark=True).numpy()
        ident = problem.identity.detach()
        expr = problem.expression.detach()
        verts = model.vertices_torch(ident.expand(len(frame_ids), -1), expr)
        verts = torch.einsum("eij,enj->eni", R, verts) + t[:, None, :]
    result.identity = ident.numpy().copy()
    result.expression[frame_ids] = expr.numpy()
    result.rotation[frame_ids] = R.numpy()
    result.translation[frame_ids] = t.numpy()
    result.vertices[frame_ids] = verts.numpy().astype(np.float32)
    result.projected[frame_ids] = pix
    err = np.linalg.norm(pix - obs[frame_ids], axis=-1)  # NaN where not detected
    with warnings.catch_warnings():  # all-NaN rows (views without a detection) stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        result.view_rmse_px[frame_ids] = np.sqrt(np.nanmean(err**2, axis=-1))
        result.view_median_px[frame_ids] = np.nanmedian(err, axis=-1)
    used = status == VIEW_USED
    result.n_views = used.sum(axis=1)
    result.frame_status[frame_ids] = np.where(result.n_views[frame_ids] >= config.min_views, FRAME_OK,
                                              FRAME_FEW_VIEWS)
