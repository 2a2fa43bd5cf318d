"""Unit tests of the avatar prior's geometry and rendering on synthetic tensors (no capture data, fast).

Covers ``training.prior.rays`` (sphere bounds, compositing, importance sampling),
``anchors`` (kNN against brute force, chunking, gradients, vertex spreading,
support falloff), ``frames`` (head crop + per-pixel rays through a distorted
camera, sample dropping) and ``model.AvatarPrior`` (both backbones: shapes,
gradients, background of missed rays, architecture round trip, whole images).
"""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch

from capture_schema.cameras import Camera, project_points
from fitting.face_models import load_face_model
from training.prior import anchors as anchors_mod
from training.prior.anchors import nearest_anchors, spread_vertices, support_falloff, weighted_rows
from training.prior.config import preset
from training.prior.frames import (
    MASKED_BACKGROUND,
    CropWindow,
    FramePreparer,
    collate_frames,
    crop_camera_rays,
    head_crop,
)
from training.prior.model import AvatarPrior, camera_rays, render_frames
from training.prior.rays import composite, importance_samples, sphere_bounds, stratified_samples

# ---------------------------------------------------------------- rays


def test_sphere_bounds_analytic():
    # Frame 0: unit-radius-0.5 sphere at the origin; frame 1: same rays against a shifted, larger sphere.
    origins = torch.tensor([[[0.0, 0.0, -2.0], [0.3, 0.0, -2.0], [1.0, 0.0, -2.0], [0.0, 0.0, 0.2],
                             [0.0, 0.0, 2.0], [0.5, 0.0, -2.0]]], dtype=torch.float64)
    dirs = torch.tensor([[[0.0, 0.0, 1.0]] * 6], dtype=torch.float64)
    origins, dirs = origins.repeat(2, 1, 1), dirs.repeat(2, 1, 1)
    centre = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    radius = torch.tensor([0.5, 1.0], dtype=torch.float64)
    near, far, hit = sphere_bounds(origins, dirs, centre, radius)
    assert near.shape == far.shape == hit.shape == (2, 6)
    # frame 0: through the centre, off-centre chord, miss, start inside, sphere behind, tangent
    assert hit[0].tolist() == [True, True, False, True, False, False]
    torch.testing.assert_close(near[0], torch.tensor([1.5, 2.0 - 0.4, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(far[0], torch.tensor([2.5, 2.0 + 0.4, 0.0, 0.3, 0.0, 0.0], dtype=torch.float64))
    # frame 1 (centre z=1, r=1): the ray from z=0.2 starts inside; the one from z=2 starts on the surface pointing out
    assert hit[1].tolist() == [True, True, False, True, False, True]
    torch.testing.assert_close(near[1, :2], torch.tensor([2.0, 3.0 - math.sqrt(1 - 0.09)], dtype=torch.float64))
    torch.testing.assert_close(far[1, :2], torch.tensor([4.0, 3.0 + math.sqrt(1 - 0.09)], dtype=torch.float64))
    assert near[1, 3] == 0.0 and far[1, 3] == pytest.approx(1.8)
    assert near[1, 2] == far[1, 2] == 0.0
    assert bool((near <= far).all())


def test_stratified_samples_bins():
    near, far = torch.tensor([[1.0, 2.0]]), torch.tensor([[2.0, 4.0]])
    centres = stratified_samples(near, far, 4, None)
    torch.testing.assert_close(centres[0, 0], torch.tensor([1.125, 1.375, 1.625, 1.875]))
    jittered = stratified_samples(near, far, 4, torch.Generator().manual_seed(0))
    width = (far - near)[..., None] / 4
    bins = torch.floor((jittered - near[..., None]) / width)
    assert bins[0, 0].tolist() == [0, 1, 2, 3] and bins[0, 1].tolist() == [0, 1, 2, 3]
    again = stratified_samples(near, far, 4, torch.Generator().manual_seed(0))
    assert torch.equal(jittered, again)


def _ray_depths(n: int = 8) -> torch.Tensor:
    return torch.linspace(1.0, 2.0, n).expand(2, 3, n).contiguous()


def test_composite_single_opaque_sample():
    depths = _ray_depths()
    sigma = torch.zeros(2, 3, 8)
    sigma[..., 3] = 1e6
    rgb = torch.rand(2, 3, 8, 3, generator=torch.Generator().manual_seed(1))
    background = torch.tensor([[0.2, 0.4, 0.6], [1.0, 1.0, 1.0]])
    out = composite(sigma, rgb, depths, torch.full((2, 3), 2.5), background)
    torch.testing.assert_close(out["rgb"], rgb[..., 3, :], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["acc"], torch.ones(2, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["depth"], depths[..., 3], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["weights"].sum(-1), out["acc"])
    assert out["weights"][..., :3].abs().max() == 0 and out["weights"][..., 4:].abs().max() < 1e-5


def test_composite_empty_ray_is_background():
    depths = _ray_depths()
    rgb = torch.rand(2, 3, 8, 3, generator=torch.Generator().manual_seed(2))
    per_ray_bg = torch.rand(2, 3, 3, generator=torch.Generator().manual_seed(3))
    out = composite(torch.zeros(2, 3, 8), rgb, depths, torch.full((2, 3), 2.5), per_ray_bg)
    assert torch.equal(out["rgb"], per_ray_bg)
    assert torch.equal(out["acc"], torch.zeros(2, 3))
    per_frame_bg = torch.tensor([[0.1, 0.2, 0.3], [0.9, 0.8, 0.7]])
    out = composite(torch.zeros(2, 3, 8), rgb, depths, torch.full((2, 3), 2.5), per_frame_bg)
    assert torch.equal(out["rgb"], per_frame_bg[:, None, :].expand(2, 3, 3))


def test_composite_weights_sum_to_acc():
    g = torch.Generator().manual_seed(4)
    depths = torch.sort(torch.rand(2, 5, 16, generator=g) + 1.0, -1).values
    sigma = 0.5 * torch.rand(2, 5, 16, generator=g)
    rgb = torch.rand(2, 5, 16, 3, generator=g)
    bg = torch.rand(2, 3, generator=g)
    out = composite(sigma, rgb, depths, torch.full((2, 5), 2.5), bg)
    torch.testing.assert_close(out["weights"].sum(-1), out["acc"])
    assert bool(((out["acc"] > 0) & (out["acc"] < 1)).all())
    assert bool(((out["rgb"] >= 0) & (out["rgb"] <= 1)).all())
    # colour = weighted sample colours + leftover transmittance x background
    expected = (out["weights"][..., None] * rgb).sum(-2) + (1 - out["acc"])[..., None] * bg[:, None, :]
    torch.testing.assert_close(out["rgb"], expected)


def test_importance_samples_concentrate_in_the_heavy_bin():
    depths = torch.linspace(0.0, 1.6, 17).expand(2, 3, 17).contiguous()  # spacing 0.1
    weights = torch.zeros(2, 3, 17)
    weights[..., 8] = 1.0  # all the weight on the sample at depth 0.8: the bin [0.75, 0.85] between mids
    lo, hi = 0.75, 0.85
    det = importance_samples(depths, weights, 32, None)
    assert det.shape == (2, 3, 32)
    assert torch.equal(det, importance_samples(depths, weights, 32, None))  # deterministic without a generator
    assert bool((det[..., 1:] >= det[..., :-1]).all())  # sorted
    assert bool(((det >= 0.0) & (det <= 1.6)).all())
    inner = det[..., 1:-1]  # u = 0 and u = 1 land on the outermost bin edges
    assert bool(((inner >= lo - 1e-6) & (inner <= hi + 1e-6)).all())

    g = torch.Generator().manual_seed(5)
    rnd = importance_samples(depths, weights, 256, g)
    assert bool(((rnd >= depths[..., :1]) & (rnd <= depths[..., -1:])).all())
    inside = ((rnd >= lo) & (rnd <= hi)).float().mean()
    assert inside > 0.98
    again = importance_samples(depths, weights, 256, torch.Generator().manual_seed(5))
    assert torch.equal(rnd, again)


def test_importance_samples_uniform_weights_spread_out():
    depths = torch.linspace(0.0, 1.0, 11).expand(1, 1, 11).contiguous()
    out = importance_samples(depths, torch.ones(1, 1, 11), 9, None)
    torch.testing.assert_close(out[0, 0], torch.linspace(0.05, 0.95, 9), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- anchors


def _brute_knn(points: np.ndarray, anchors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d = np.linalg.norm(points[:, :, None, :] - anchors[:, None, :, :], axis=-1)
    idx = np.argsort(d, axis=-1, kind="stable")[..., :k]
    return idx, np.take_along_axis(d, idx, -1)


def _cloud(seed: int, B: int = 2, P: int = 60, V: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (0.1 * torch.randn(B, P, 3, generator=g, dtype=torch.float64),
            0.1 * torch.randn(B, V, 3, generator=g, dtype=torch.float64))


def test_nearest_anchors_match_brute_force():
    points, anchors = _cloud(0)
    nb = nearest_anchors(points, anchors, 5)
    idx, dist = _brute_knn(points.numpy(), anchors.numpy(), 5)
    assert nb.index.shape == (2, 60, 5) and nb.offset.shape == (2, 60, 5, 3)
    assert np.array_equal(nb.index.numpy(), idx)
    np.testing.assert_allclose(nb.distance.numpy(), dist, rtol=0, atol=1e-12)
    np.testing.assert_allclose(nb.nearest.numpy(), dist[..., 0], rtol=0, atol=1e-12)
    gathered = np.take_along_axis(anchors.numpy()[:, None, :, :], idx[..., None], axis=2)
    np.testing.assert_allclose(nb.offset.numpy(), points.numpy()[:, :, None, :] - gathered, atol=1e-12)
    torch.testing.assert_close(nb.weight.sum(-1), torch.ones(2, 60, dtype=torch.float64))
    assert bool((nb.weight[..., :-1] >= nb.weight[..., 1:]).all())  # nearer anchors weigh more
    # k larger than the anchor count: every anchor, sorted
    few = nearest_anchors(points, anchors[:, :3], 8)
    assert few.index.shape == (2, 60, 3)
    assert bool((few.distance[..., :-1] <= few.distance[..., 1:]).all())


def test_nearest_anchors_float32_matches_brute_force():
    points, anchors = _cloud(1)
    nb = nearest_anchors(points.float(), anchors.float(), 4)
    idx, dist = _brute_knn(points.numpy(), anchors.numpy(), 4)
    assert np.array_equal(nb.index.numpy(), idx)
    np.testing.assert_allclose(nb.distance.numpy(), dist, rtol=0, atol=1e-6)


def test_the_accelerator_search_finds_the_same_neighbours_in_any_chunking(monkeypatch):
    """On a GPU the ids come from chunks of the distance matrix, on a CPU from a k-d tree: same ids."""
    points, anchors = _cloud(2, P=37)
    tree = nearest_anchors(points, anchors, 4).index
    idx, _ = _brute_knn(points.numpy(), anchors.numpy(), 4)
    assert np.array_equal(tree.numpy(), idx)
    for entries in (1 << 20, 2 * 40 * 5, 1):  # everything at once, 5 points per chunk, one point per chunk
        monkeypatch.setattr(anchors_mod, "_MAX_DISTANCE_ENTRIES", entries)
        assert torch.equal(anchors_mod._matrix_search(points, anchors, 4), tree), entries
    assert torch.equal(anchors_mod._tree_search(points, anchors[:, :1], 1), torch.zeros(2, 37, 1, dtype=torch.long))


def test_weighted_rows_is_the_weighted_sum_of_each_frames_own_rows():
    """The fused mix equals the written-out sum over neighbours, in values and in both gradients, and
    reads each frame's own table (ids index rows of frame b, not of the stacked tables)."""
    g = torch.Generator().manual_seed(4)
    values = torch.randn(3, 7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 7, (3, 11, 4), generator=g)
    weight = torch.rand(3, 11, 4, generator=g, dtype=torch.float64, requires_grad=True)
    v, i, w = values.detach().numpy(), index.numpy(), weight.detach().numpy()
    expected = np.zeros((3, 11, 5))
    for b in range(3):
        for p in range(11):
            for j in range(4):
                expected[b, p] += w[b, p, j] * v[b, i[b, p, j]]
    out = weighted_rows(values, index, weight)
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda a, c: weighted_rows(a, index, c), (values, weight))


def test_nearest_anchors_gradients_reach_points_and_anchors():
    points, anchors = _cloud(3, P=8, V=10)
    points.requires_grad_(True)
    anchors.requires_grad_(True)
    nb = nearest_anchors(points, anchors, 3)
    (nb.distance.sum() + (nb.weight * torch.arange(3.0, dtype=torch.float64)).sum()).backward()
    assert points.grad is not None and points.grad.abs().sum() > 0
    assert anchors.grad is not None and anchors.grad.abs().sum() > 0
    # anchors that are nobody's neighbour get no gradient
    used = torch.zeros(2, 10, dtype=torch.bool)
    for b in range(2):
        used[b, nb.index[b].unique()] = True
    assert bool((anchors.grad[~used] == 0).all())
    # and the gradients are the true derivatives (the neighbour set is fixed under small perturbations)
    p0, a0 = points.detach().clone().requires_grad_(True), anchors.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, a: nearest_anchors(p, a, 3).distance, (p0, a0))
    assert torch.autograd.gradcheck(lambda p, a: nearest_anchors(p, a, 3).weight, (p0, a0))


def test_spread_vertices():
    template = np.random.default_rng(0).normal(size=(200, 3))
    ids = spread_vertices(template, 20)
    assert len(ids) == 20 and len(np.unique(ids)) == 20
    assert np.array_equal(ids, np.sort(ids))
    assert ids.min() >= 0 and ids.max() < 200
    assert np.array_equal(ids, spread_vertices(template.copy(), 20))  # deterministic
    assert np.array_equal(spread_vertices(template, 200), np.arange(200))
    assert np.array_equal(spread_vertices(template, 500), np.arange(200))
    # farthest-point sampling: the vertex farthest from the start (closest to the mean) is always taken
    start = int(np.argmin(np.linalg.norm(template - template.mean(0), axis=1)))
    assert start in ids
    assert int(np.argmax(np.linalg.norm(template - template[start], axis=1))) in ids
    # spread: chosen vertices are farther apart than the same number of arbitrary ones
    def min_gap(sel: np.ndarray) -> float:
        pts = template[sel]
        d = np.linalg.norm(pts[:, None] - pts[None], axis=-1) + np.eye(len(sel)) * 1e9
        return float(d.min())
    assert min_gap(ids) > min_gap(np.arange(20))


def test_support_falloff():
    d = torch.tensor([0.0, 0.02, 0.0375, 0.04375, 0.05, 0.06, 1.0])
    out = support_falloff(d, 0.05)
    torch.testing.assert_close(out, torch.tensor([1.0, 1.0, 1.0, 0.5, 0.0, 0.0, 0.0]))


# ---------------------------------------------------------------- frames


def _distorted_camera() -> Camera:
    R, _ = cv2.Rodrigues(np.array([0.05, -0.08, 0.03]))
    return Camera(width=512, height=512, fx=800.0, fy=800.0, cx=255.5, cy=255.5,
                  dist=(-0.1, 0.02, 0.001, -0.001, 0.0), R=R, t=np.array([0.0, 0.0, 1.0]))


def _angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.arctan2(np.linalg.norm(np.cross(a, b), axis=-1), (a * b).sum(-1))


def test_head_crop_and_rays_through_a_distorted_camera():
    cam = _distorted_camera()
    K, dist = cam.K, np.asarray(cam.dist)
    rng = np.random.default_rng(0)
    points = rng.uniform(-0.08, 0.08, size=(200, 3)) + np.array([0.01, -0.02, 0.0])
    pixels = project_points(points, K, dist, cam.R, cam.t)
    size = 48
    window = head_crop(pixels, size, 1.7)
    assert window.size == size and window.scale > 0

    # every projected point lies inside the crop, and the crop is centred on the box with 1.7x margin
    crop = window.scale * pixels + np.asarray(window.offset)
    assert bool(((crop >= -0.5) & (crop <= size - 0.5)).all())
    extent = (crop.max(0) - crop.min(0)).max()
    assert extent == pytest.approx(size / 1.7)
    np.testing.assert_allclose((crop.max(0) + crop.min(0)) / 2, [(size - 1) / 2] * 2, atol=1e-9)
    np.testing.assert_allclose(window.to_image(crop), pixels, atol=1e-9)
    M = window.matrix()
    np.testing.assert_allclose(pixels @ M[:, :2].T + M[:, 2], crop, atol=1e-9)

    dirs = crop_camera_rays(window, K, dist)
    assert dirs.shape == (size, size, 3) and dirs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=-1), 1.0, atol=1e-6)
    assert bool((dirs[..., 2] > 0).all())

    # Crop pixel centres (column x, row y) -> image pixels -> undistorted ray -> a 3D point at a known depth.
    xs, ys = rng.integers(0, size, 40), rng.integers(0, size, 40)
    xs[:4], ys[:4] = [0, size - 1, 0, size - 1], [0, 0, size - 1, 5]  # corners and an asymmetric pixel
    crop_xy = np.stack([xs, ys], 1).astype(np.float64)
    image_xy = window.to_image(crop_xy)
    normalized = cv2.undistortPoints(image_xy.reshape(-1, 1, 2), K, dist).reshape(-1, 2)
    depth = rng.uniform(0.8, 1.2, len(xs))
    cam_points = np.concatenate([normalized, np.ones((len(xs), 1))], 1) * depth[:, None]
    world = (cam_points - cam.t) @ cam.R  # R^T (X_c - t)
    # the crop ray at that pixel (row y, column x) points at the 3D point
    err = _angle(dirs[ys, xs].astype(np.float64), cam.world_to_camera(world))
    assert err.max() < 1e-4, err.max()
    # independent check through the forward model: the point projects back onto the crop pixel centre
    reprojected = window.scale * project_points(world, K, dist, cam.R, cam.t) + np.asarray(window.offset)
    np.testing.assert_allclose(reprojected, crop_xy, atol=2e-3)
    # the same ray, rotated into the world, from the camera centre
    origins, world_dirs = camera_rays(torch.from_numpy(dirs[ys, xs])[None], torch.from_numpy(cam.R).float()[None],
                                      torch.from_numpy(cam.t).float()[None])
    np.testing.assert_allclose(origins[0].numpy(), np.broadcast_to(cam.center, (len(xs), 3)), atol=1e-6)
    assert _angle(world_dirs[0].double().numpy(), world - cam.center).max() < 1e-4


def test_head_crop_rejects_degenerate_boxes():
    with pytest.raises(ValueError, match="degenerate"):
        head_crop(np.array([[10.0, 20.0], [10.0, 20.0]]), 64, 1.7)
    with pytest.raises(ValueError, match="degenerate"):
        head_crop(np.array([[10.0, 20.0], [np.nan, 30.0]]), 64, 1.7)
    with pytest.raises(ValueError, match="degenerate"):
        head_crop(np.array([[10.0, 20.0], [np.inf, 30.0]]), 64, 1.7)
    # a flat (line-shaped) box is fine: the larger extent decides
    assert head_crop(np.array([[10.0, 20.0], [30.0, 20.0]]), 64, 2.0).scale == pytest.approx(64 / 40)


def test_crop_window_to_image_inverts_matrix():
    window = CropWindow(0.25, (3.0, -7.5), 16)
    xy = np.array([[0.0, 0.0], [15.0, 7.0]])
    image = window.to_image(xy)
    np.testing.assert_allclose(image * 0.25 + np.array([3.0, -7.5]), xy)


# ---------------------------------------------------------------- FramePreparer


@pytest.fixture(scope="module")
def face_model():
    return load_face_model("builtin", None, None)


def _sample(face_model, *, key: str = "sess/neutral/cam00", subject: str = "subjA", model: str | None = None,
            fit: bool = True, status: str = "ok", mask: bool = False) -> dict:
    H = W = 96
    K = torch.tensor([[150.0, 0.0, 47.5], [0.0, 150.0, 47.5], [0.0, 0.0, 1.0]])
    g = torch.Generator().manual_seed(0)
    session, expression, camera = key.split("/")
    meta = {"subject_id": subject, "session_id": session, "expression": expression, "camera_id": camera,
            "fit": {"model": model or face_model.name, "frame_status": status} if fit else None}
    fit_t = {"identity": torch.zeros(face_model.n_identity), "expression": torch.zeros(face_model.n_expression),
             "rotation": torch.eye(3), "translation": torch.zeros(3)} if fit else None
    return {"key": key, "meta": meta, "fit": fit_t, "image": torch.rand(3, H, W, generator=g),
            "mask": torch.ones(1, H, W) if mask else None,
            "camera": {"K": K, "dist": torch.zeros(5), "R": torch.eye(3), "t": torch.tensor([0.0, 0.0, 0.5])}}


def test_frame_preparer_keeps_good_samples_and_drops_unusable_ones(face_model):
    prep = FramePreparer(face_model, ["subjA", "subjB"], resolution=32, crop_scale=1.7)
    samples = [
        _sample(face_model, key="s/e0/c0"),
        _sample(face_model, key="s/e0/c1", fit=False),
        _sample(face_model, key="s/e0/c2", status="not_fitted"),
        _sample(face_model, key="s/e0/c3", model="flame"),
        _sample(face_model, key="s/e0/c4", subject="subjZ"),
        _sample(face_model, key="s/e0/c5", subject="subjB", mask=True),
    ]
    frames = list(prep(samples))
    assert [f["key"] for f in frames] == ["s/e0/c0", "s/e0/c5"]
    reasons = dict(prep.dropped)
    assert list(reasons) == ["s/e0/c1", "s/e0/c2", "s/e0/c3", "s/e0/c4"]
    assert reasons["s/e0/c1"] == reasons["s/e0/c2"] == "no 3DMM fit"
    assert "flame" in reasons["s/e0/c3"] and "builtin" in reasons["s/e0/c3"]
    assert "subject" in reasons["s/e0/c4"]

    a, b = frames
    assert (a["subject"], b["subject"]) == (0, 1)
    assert a["rgb"].shape == (3, 32, 32) and a["dirs"].shape == (32, 32, 3) and a["mask"] is None
    assert b["mask"].shape == (1, 32, 32)
    assert a["expression"].shape == (face_model.n_expression,) and a["identity"].shape == (face_model.n_identity,)
    batch = collate_frames(frames)
    assert batch["rgb"].shape == (2, 3, 32, 32) and batch["mask"].shape == (2, 1, 32, 32)
    assert batch["has_mask"].tolist() == [False, True]
    assert batch["subject"].tolist() == [0, 1]
    assert torch.equal(batch["mask"][0], torch.zeros(1, 32, 32))


# ---------------------------------------------------------------- AvatarPrior


N_EXPRESSION = 5
N_VERTICES = 60


def _tiny_config(backbone: str):
    return preset("cpu", backbone=backbone, latent_dim=8, feature_dim=4, hidden_dim=16, coarse_samples=8,
                  fine_samples=4, k_neighbors=3, triplane_resolution=16, max_distance=0.05,
                  sampler="sphere", neighbour_search="tree",  # the exhaustive sampler (test_prior_sampling: the fast one)
                  decoder_precision="float32")  # exact comparisons of two renders (bfloat16: its own test)


def _model(backbone: str, seed: int = 0) -> AvatarPrior:
    torch.manual_seed(seed)
    model = AvatarPrior(_tiny_config(backbone), 3, N_EXPRESSION, np.arange(0, N_VERTICES, 2))
    with torch.no_grad():
        model.background_logit.copy_(torch.tensor([0.5, -1.0, 2.0]))
    return model


def _scene(B: int = 2, R: int = 12, seed: int = 0) -> dict:
    """Vertices on a ~8 cm sphere at the origin, a camera 0.5 m in front; the last 3 rays of each frame miss."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(B, N_VERTICES, 3, generator=g)
    vertices = 0.08 * v / v.norm(dim=-1, keepdim=True)
    origins = torch.tensor([0.0, 0.0, -0.5]).expand(B, R, 3).contiguous()
    targets = 0.06 * (torch.rand(B, R, 3, generator=g) - 0.5)
    targets[:, -3:] = torch.tensor([[1.0, 0.0, -0.5], [0.0, -1.0, -0.4], [-1.0, 1.0, -0.3]])
    dirs = targets - origins
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    return {"expression": 0.3 * torch.randn(B, N_EXPRESSION, generator=g), "vertices": vertices,
            "rotation": torch.eye(3).expand(B, 3, 3).contiguous(), "translation": torch.zeros(B, 3),
            "origins": origins, "dirs": dirs, "has_mask": torch.tensor([True, False][:B])}


def _args(s: dict) -> tuple:
    return (s["expression"], s["vertices"], s["rotation"], s["translation"], s["origins"], s["dirs"], s["has_mask"])


def _two_pass_render(model: AvatarPrior, latent: torch.Tensor, scene: dict, seed: int | None) -> dict:
    """The textbook coarse-to-fine render, written out: the field is evaluated again at every coarse depth."""
    from training.prior.fields import FrameCondition

    cfg, g = model.config, None if seed is None else torch.Generator().manual_seed(seed)
    anchors = scene["vertices"][:, model.anchor_ids]
    condition = FrameCondition(latent, scene["expression"], anchors, scene["rotation"], scene["translation"])
    centre = anchors.mean(1)
    radius = (anchors - centre[:, None]).norm(dim=-1).amax(1) + cfg.max_distance
    origins, dirs = scene["origins"], scene["dirs"]
    near, far, _ = sphere_bounds(origins, dirs, centre, radius)
    depths = stratified_samples(near, far, cfg.coarse_samples, g)
    B, R, _ = depths.shape

    def field(d: torch.Tensor):
        points = (origins[:, :, None, :] + dirs[:, :, None, :] * d[..., None]).reshape(B, -1, 3)
        sigma, rgb = model._field(points, condition)
        return sigma.view(B, R, -1), rgb.view(B, R, -1, 3)

    with torch.no_grad():
        coarse = composite(*field(depths), depths, far, latent.new_zeros(B, 3))
    depths, _ = torch.sort(torch.cat([depths, importance_samples(depths, coarse["weights"], cfg.fine_samples, g)],
                                     -1), -1)
    return composite(*field(depths), depths, far, model._background(scene["has_mask"]))


@pytest.mark.parametrize("backbone", ["anchored", "triplane"])
@pytest.mark.parametrize("seed", [None, 3])
def test_render_keeps_the_coarse_values_and_matches_the_two_pass_render(backbone, seed):
    """Evaluating only the fine samples in the second pass renders what re-evaluating every sample does,
    with the same gradients (evaluation: deterministic depths; training: jittered with a seeded generator)."""
    model, scene = _model(backbone), _scene()
    outputs, grads = [], []
    for render in (lambda lat: model.render_rays(lat, *_args(scene), generator=None if seed is None
                                                 else torch.Generator().manual_seed(seed)),
                   lambda lat: _two_pass_render(model, lat, scene, seed)):
        model.zero_grad()
        latent = model.latents(torch.tensor([0, 2]))
        out = render(latent)
        (out["rgb"].sum() + out["depth"].sum()).backward()
        outputs.append(out)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    for name in ("rgb", "acc", "depth", "weights"):
        torch.testing.assert_close(outputs[0][name], outputs[1][name], rtol=1e-5, atol=1e-6)
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backbone", ["anchored", "triplane"])
def test_render_rays_shapes_ranges_and_background(backbone):
    model, scene = _model(backbone), _scene()
    latent = model.latents(torch.tensor([0, 2]))
    out = model.render_rays(latent, *_args(scene))
    assert out["rgb"].shape == (2, 12, 3) and out["acc"].shape == (2, 12) and out["depth"].shape == (2, 12)
    assert out["weights"].shape == (2, 12, 12)  # coarse + fine samples
    assert bool(((out["rgb"] >= 0) & (out["rgb"] <= 1)).all())
    assert bool(((out["acc"] >= 0) & (out["acc"] <= 1)).all())
    assert bool((out["acc"][:, :-3] > 0).all())  # rays through the head see some density at initialisation
    # rays that miss the head's sphere render exactly the background: white with a mask, learned without
    assert torch.equal(out["acc"][:, -3:], torch.zeros(2, 3))
    assert torch.equal(out["rgb"][0, -3:], torch.full((3, 3), MASKED_BACKGROUND))
    learned = torch.sigmoid(model.background_logit.detach())
    assert torch.equal(out["rgb"][1, -3:], learned.expand(3, 3))
    # deterministic without a generator; a generator jitters the samples
    assert torch.equal(model.render_rays(latent, *_args(scene))["rgb"], out["rgb"])
    jittered = model.render_rays(latent, *_args(scene), generator=torch.Generator().manual_seed(0))
    assert not torch.equal(jittered["rgb"][:, :-3], out["rgb"][:, :-3])


@pytest.mark.parametrize("backbone", ["anchored", "triplane"])
def test_gradients_reach_codes_field_expression_and_vertices(backbone):
    model, scene = _model(backbone), _scene()
    scene["expression"].requires_grad_(True)
    scene["vertices"].requires_grad_(True)
    render, codes = model(torch.tensor([0, 2]), *_args(scene))
    assert torch.equal(codes, model.latents.weight[[0, 2]])
    (render["rgb"].sum() + render["acc"].sum()).backward()
    grad = model.latents.weight.grad
    assert grad[0].abs().sum() > 0 and grad[2].abs().sum() > 0
    assert torch.equal(grad[1], torch.zeros_like(grad[1]))  # subject 1 is not in the batch
    for name, p in model.field.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
        assert p.grad.abs().sum() > 0, name
    assert model.background_logit.grad is not None and model.background_logit.grad.abs().sum() > 0
    assert scene["expression"].grad.abs().sum() > 0
    if backbone == "anchored":
        assert scene["vertices"].grad.abs().sum() > 0
        # only anchor vertices (the even ids) can receive a gradient
        assert torch.equal(scene["vertices"].grad[:, 1::2], torch.zeros(2, N_VERTICES // 2, 3))


@pytest.mark.parametrize("backbone", ["anchored", "triplane"])
def test_architecture_round_trip(backbone):
    model, scene = _model(backbone, seed=1), _scene(seed=3)
    arch = model.architecture()
    assert json.loads(json.dumps(arch)) == arch  # plain data
    clone = AvatarPrior.from_architecture(arch)
    clone.load_state_dict(model.state_dict())
    subjects = torch.tensor([1, 0])
    a, _ = model(subjects, *_args(scene))
    b, _ = clone(subjects, *_args(scene))
    for key in ("rgb", "acc", "depth", "weights"):
        assert torch.equal(a[key], b[key]), key
    assert clone.config == model.config and torch.equal(clone.anchor_ids, model.anchor_ids)


@pytest.mark.parametrize("chunk", [8, 35, 70, None])  # pieces of a frame, one frame, both frames, the default
@pytest.mark.parametrize("backbone", ["anchored", "triplane"])
def test_render_frames_whole_images(backbone, chunk):
    model, scene = _model(backbone), _scene()
    H, W = 5, 7
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32),
                            indexing="ij")
    cam_dirs = torch.stack([(xs - (W - 1) / 2) / 40, (ys - (H - 1) / 2) / 40, torch.ones_like(xs)], -1)
    cam_dirs = (cam_dirs / cam_dirs.norm(dim=-1, keepdim=True)).expand(2, H, W, 3).contiguous()
    R = torch.eye(3).expand(2, 3, 3).contiguous()
    t = torch.tensor([0.0, 0.0, 0.5]).expand(2, 3).contiguous()
    latent = model.latents(torch.tensor([0, 1]))
    args = (latent, scene["expression"], scene["vertices"], scene["rotation"], scene["translation"])
    out = render_frames(model, *args, cam_dirs, R, t, scene["has_mask"], chunk=chunk)
    assert out["rgb"].shape == (2, 3, H, W) and out["acc"].shape == (2, 1, H, W)
    assert not out["rgb"].requires_grad
    # chunked whole-image rendering equals rendering all rays at once, pixel (row y, column x) for pixel
    origins, world = camera_rays(cam_dirs.reshape(2, H * W, 3), R, t)
    with torch.no_grad():
        direct = model.render_rays(*args, origins, world, scene["has_mask"])
    torch.testing.assert_close(out["rgb"], direct["rgb"].reshape(2, H, W, 3).permute(0, 3, 1, 2),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(out["acc"][:, 0], direct["acc"].reshape(2, H, W), atol=1e-6, rtol=0)
    assert out["acc"][:, 0, H // 2, W // 2].min() > 0  # the centre pixel looks at the head


def test_render_rays_with_a_small_latent():
    model = AvatarPrior(_tiny_config("anchored").with_changes(latent_dim=2), 2, N_EXPRESSION,
                        np.arange(N_VERTICES))
    out = model.render_rays(model.latents(torch.tensor([0, 1])), *_args(_scene()))
    assert out["rgb"].shape == (2, 12, 3)


def test_prior_needs_a_subject():
    with pytest.raises(ValueError, match="at least one"):
        AvatarPrior(_tiny_config("anchored"), 0, N_EXPRESSION, np.arange(10))


def _hand_encoding(x: np.ndarray, frequencies: int = 4) -> np.ndarray:
    """NeRF's encoding written out: x, then sin(2^i pi x) for every i, then cos(2^i pi x)."""
    sines = [np.sin(2.0**i * np.pi * x) for i in range(frequencies)]
    cosines = [np.cos(2.0**i * np.pi * x) for i in range(frequencies)]
    return np.concatenate([x, *sines, *cosines], axis=-1)


def _rotation(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=torch.float64)


@pytest.mark.parametrize("encoding", ["mean", "each"])
def test_anchored_decoder_sees_features_and_the_head_frame_offset_encoding(encoding):
    """The decoder's input, rebuilt with numpy: inverse-distance weighted anchor features, then the encoding
    of R^T (point - weighted mean anchor) / max_distance (``mean``) or the weighted mean of each
    neighbour's encoded offset (``each``); and it does not change when the whole head turns."""
    from training.prior.fields import FrameCondition

    torch.manual_seed(0)
    config = _tiny_config("anchored").with_changes(offset_encoding=encoding)
    model = AvatarPrior(config, 3, N_EXPRESSION, np.arange(0, N_VERTICES, 2)).double()
    field = model.field
    scene = _scene(B=1)
    anchors = scene["vertices"][:, model.anchor_ids].double()
    rotation = _rotation(0.7)[None].double()
    points = (0.05 * torch.randn(1, 30, 3)).double()
    latent, expression = model.latents.weight[:1].detach().double(), scene["expression"].double()
    seen = []
    handle = field.decoder.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].detach()))

    def decoder_input(rot: torch.Tensor, pts: torch.Tensor, anc: torch.Tensor) -> np.ndarray:
        condition = FrameCondition(latent, expression, anc, rot, torch.zeros(1, 3, dtype=torch.float64))
        with torch.no_grad():
            field(pts, condition, nearest_anchors(pts, anc, config.k_neighbors))
        return seen[-1][0].numpy()

    got = decoder_input(rotation, points, anchors)
    with torch.no_grad():
        table = field.vertex_features(FrameCondition(latent, expression, anchors, rotation, torch.zeros(1, 3)))[0]
    p, a, R, table = points[0].numpy(), anchors[0].numpy(), rotation[0].numpy(), table.numpy()
    ids = np.argsort(np.linalg.norm(p[:, None] - a[None], axis=-1), axis=1)[:, :config.k_neighbors]
    offsets = p[:, None, :] - a[ids]  # (P, k, 3)
    inv = 1.0 / (np.linalg.norm(offsets, axis=-1) + 1e-4)
    w = inv / inv.sum(1, keepdims=True)
    features = (w[..., None] * table[ids]).sum(1)
    local = offsets @ R / config.max_distance  # rows R^T v
    if encoding == "mean":
        encoded = _hand_encoding((w[..., None] * local).sum(1))
    else:
        encoded = (w[..., None] * _hand_encoding(local)).sum(1)
    np.testing.assert_allclose(got, np.concatenate([features, encoded], axis=1), atol=1e-9)
    turn = _rotation(-1.1).double()
    turned = decoder_input(turn @ rotation, points @ turn.T, anchors @ turn.T)
    handle.remove()
    np.testing.assert_allclose(turned, got, atol=1e-9)


def test_the_bfloat16_decoder_is_the_float32_decoder_within_bfloat16_precision():
    """The same weights decode in bfloat16 close to float32 (8 bits of mantissa: about 0.4 % per product, far
    less than one 8-bit colour level after the sums); float32 is exactly the plain MLP; an unknown
    precision is refused."""
    from training.prior.fields import DENSITY_BIAS, DENSITY_SCALE, _Decoder

    torch.manual_seed(0)
    exact, low = _Decoder(75, 64, "float32"), _Decoder(75, 64, "bfloat16")
    low.load_state_dict(exact.state_dict())
    x = torch.randn(4096, 75)
    with torch.no_grad():
        sigma, rgb = exact(x)
        out = exact.net(x)
        sigma16, rgb16 = low(x)
    torch.testing.assert_close(sigma, DENSITY_SCALE * torch.log1p(torch.exp(out[:, 0] + DENSITY_BIAS)))
    torch.testing.assert_close(rgb, 1 / (1 + torch.exp(-out[:, 1:])))
    assert sigma16.dtype == torch.float32 and low.uses_bfloat16(x.device) and not exact.uses_bfloat16(x.device)
    assert float((rgb16 - rgb).abs().max()) < 2 / 255
    assert float(((sigma16 - sigma).abs() / (sigma + 1.0)).max()) < 0.05
    assert float((rgb16 - rgb).abs().max()) > 0  # it did compute in bfloat16
    with pytest.raises(ValueError, match="decoder_precision"):
        preset("cpu", decoder_precision="float16")
