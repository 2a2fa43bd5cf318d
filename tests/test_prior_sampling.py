"""The fast sampler of the avatar prior: box bounds, the learned occupancy grid, the neighbour
candidate grid, and the renders and checkpoints that use them (synthetic tensors and the built-in face
model; no capture data).

Yardsticks are brute force written here: dense points along each ray, every distance to every anchor,
``scipy``'s k-d tree for the nearest anchors, and the exhaustive (sphere) sampler of the same weights.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from fitting.camera_model import axis_angle_to_matrix
from fitting.face_models import load_face_model
from training.prior.anchors import NeighbourGrid, nearest_anchors, spread_vertices
from training.prior.config import preset
from training.prior.model import GRID_MARGIN, AvatarPrior, with_sampler
from training.prior.occupancy import OccupancyGrid, box_around, box_bounds, cells_near

N_EXPRESSION = 5


def _rays(B: int, R: int, seed: int, spread: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit rays from 0.6 m in front of the origin towards random points within ``spread`` of it."""
    g = torch.Generator().manual_seed(seed)
    origins = torch.tensor([0.0, 0.0, -0.6], dtype=torch.float64).expand(B, R, 3).contiguous()
    targets = spread * (2 * torch.rand(B, R, 3, generator=g, dtype=torch.float64) - 1)
    dirs = targets - origins
    return origins, dirs / dirs.norm(dim=-1, keepdim=True)


def test_box_bounds_are_the_first_and_last_point_inside_the_box():
    origins, dirs = _rays(2, 200, seed=2)
    low, high = torch.tensor([-0.1, -0.15, -0.05], dtype=torch.float64), torch.tensor([0.12, 0.1, 0.2],
                                                                                    dtype=torch.float64)
    near, far, hit = box_bounds(origins, dirs, low, high)
    depth = torch.linspace(0.0, 1.5, 30001, dtype=torch.float64)  # 0.05 mm steps
    for b in range(2):
        for r in range(200):
            points = origins[b, r] + dirs[b, r] * depth[:, None]
            within = ((points >= low) & (points <= high)).all(-1).nonzero().flatten()
            assert bool(hit[b, r]) == (len(within) > 0)
            if len(within):
                assert abs(float(near[b, r] - depth[within[0]])) < 1e-4
                assert abs(float(far[b, r] - depth[within[-1]])) < 1e-4
            else:
                assert near[b, r] == 0 and far[b, r] == 0
    assert 0.2 < hit.float().mean() < 1.0  # the rays include hits and misses


def _pose(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rotation = axis_angle_to_matrix(0.4 * torch.randn(2, 3, generator=g))
    return rotation, torch.tensor([[0.02, -0.01, 0.03], [-0.03, 0.02, 0.0]])


def _ball_density(rotation, translation, centre, radius):
    """Density 500 /m inside a head-frame ball, 0 outside: the yardstick the grid must learn."""
    def density(world: torch.Tensor) -> torch.Tensor:
        local = torch.einsum("bji,bpj->bpi", rotation, world - translation[:, None, :])
        return 500.0 * ((local - centre).norm(dim=-1) < radius).float()
    return density


def test_occupancy_grid_learns_a_ball_in_the_head_frame_and_tightens_rays_to_it():
    rotation, translation = _pose(3)
    grid = OccupancyGrid(torch.full((3,), -0.3), torch.full((3,), 0.3), 48, 0.01)
    centre, radius = torch.tensor([0.03, 0.0, -0.02]), 0.06
    assert grid.occupied_share() == 1.0  # before any refresh: everything may be occupied
    grid.refresh(_ball_density(rotation, translation, centre, radius), rotation, translation,
                 torch.Generator().manual_seed(0))
    cell = 0.6 / 48
    axis = -0.3 + (torch.arange(48) + 0.5) * cell
    centres = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1)
    distance = (centres - centre).norm(dim=-1)
    occupied = grid.occupied_cells()
    assert occupied[distance < radius - cell].all()  # every cell well inside the ball
    assert not occupied[distance > radius + 2.5 * cell].any()  # nothing beyond the ball and the dilation
    # rays in the world: through the posed ball, and beside it
    world_centre = rotation @ centre + translation
    origins = (world_centre + torch.tensor([0.0, 0.0, -0.5])).expand(2, 2, 3).contiguous()
    aim = torch.stack([world_centre, world_centre + torch.tensor([0.13, 0.0, 0.0])], 1)
    dirs = aim - origins
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    near, far, hit = grid.intervals(origins, dirs, rotation, translation)
    assert hit[:, 0].all() and not hit[:, 1].any()
    # the central ray enters the ball at 0.5 - radius and is opaque (optical depth 9.2 at 500 /m) 18.4 mm
    # later; sampled from before the entry to 2 cells past that point, and little more
    box_near, box_far, _ = box_bounds(torch.einsum("bji,brj->bri", rotation, origins - translation[:, None, :]),
                                      torch.einsum("bji,brj->bri", rotation, dirs), grid.low, grid.high)
    probe = float((box_far - box_near)[:, 0].max()) / 64  # the probes' spacing
    entry, opaque = 0.5 - radius, 0.5 - radius + 9.2 / 500
    # a cell partly inside the ball is occupied, and so are its neighbours (dilation): up to two cell
    # diagonals before the entry, plus a probe and a half
    assert (near[:, 0] <= entry + 1e-6).all() and (near[:, 0] >= entry - 2 * math.sqrt(3) * cell - 2 * probe).all()
    assert (far[:, 0] >= entry + 2 * cell).all()
    assert (far[:, 0] <= opaque + 2 * cell + 2 * probe).all(), far[:, 0]
    # before the grid has seen any density, a ray is sampled through the whole box
    fresh = OccupancyGrid(grid.low, grid.high, 48, 0.01)
    near0, far0, hit0 = fresh.intervals(origins, dirs, rotation, translation)
    torch.testing.assert_close(far0[:, 0], box_far[:, 0])
    assert hit0.all()


def test_occupancy_grid_forgets_slowly_and_travels_in_the_state_dict():
    rotation, translation = _pose(4)
    grid = OccupancyGrid(torch.full((3,), -0.2), torch.full((3,), 0.2), 16, 0.01)
    ball = _ball_density(rotation, translation, torch.zeros(3), 0.05)
    grid.refresh(ball, rotation, translation, None)
    before = grid.occupied_cells().clone()
    grid.refresh(lambda world: torch.zeros(world.shape[:2]), rotation, translation, None)
    assert torch.equal(grid.occupied_cells(), before)  # one empty refresh decays, it does not erase
    clone = OccupancyGrid(torch.full((3,), -0.2), torch.full((3,), 0.2), 16, 0.01)
    assert clone.occupied_share() == 1.0  # a fresh grid's cells, remembered until its state changes
    clone.load_state_dict(grid.state_dict())
    assert torch.equal(clone.occupied_cells(), before) and int(clone.refreshes) == 2


def test_only_cells_within_reach_of_the_points_are_candidates_and_evaluated():
    points = np.array([[0.0, 0.0, 0.0], [0.1, 0.05, -0.02]])
    low, high, r, reach = np.full(3, -0.2), np.full(3, 0.2), 20, 0.06
    near = cells_near(points, low, high, r, reach)
    cell = 0.4 / r
    for ijk in [(0, 0, 0), (10, 10, 10), (9, 10, 10), (15, 12, 9), (12, 10, 10), (14, 10, 10), (19, 19, 19)]:
        centre = -0.2 + (np.asarray(ijk) + 0.5) * cell
        gap = min(np.linalg.norm(centre - p) for p in points) - math.sqrt(3) * cell / 2  # hand-written
        assert bool(near[ijk]) == (gap <= reach), (ijk, gap)
    grid = OccupancyGrid(torch.as_tensor(low), torch.as_tensor(high), r, 0.01, near)
    assert torch.equal(grid.occupied_cells(), near)  # before any refresh: every candidate
    asked = []

    def everywhere(world: torch.Tensor) -> torch.Tensor:
        asked.append(world.shape[1])
        return torch.full(world.shape[:2], 500.0)

    eye = torch.eye(3)[None]
    grid.refresh(everywhere, eye, torch.zeros(1, 3), torch.Generator().manual_seed(0))
    assert asked == [int(near.sum())]
    assert bool((grid.density[~near] == 0).all()) and bool((grid.density[near] == 500.0).all())


@pytest.fixture(scope="module")
def face():
    model = load_face_model("builtin", None, None)
    template = model.vertices()
    ids = spread_vertices(template, 256)
    return model, template, ids


def _posed_anchors(face_model, ids, B: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # coefficients of this size move vertices by 6 mm on average and up to 2 cm, as the fits of the
    # simulated dataset do (4.5 mm mean, 2.0 cm max over a subject's frames)
    identity = 0.5 * torch.randn(B, face_model.n_identity, generator=g)
    expression = 0.5 * torch.randn(B, face_model.n_expression, generator=g)
    rotation, translation = _pose(seed)
    local = face_model.vertices_torch(identity, expression).float()[:, ids]
    return torch.einsum("bij,bvj->bvi", rotation, local) + translation[:, None, :], rotation, translation


def test_neighbour_grid_keeps_the_support_of_the_exact_nearest_anchors(face):
    """The grid's k anchors come from the mean face; against the exact k nearest posed anchors (scipy) the
    nearest of them is mostly the same and at worst a centimetre or two farther (the support's edge moves by
    no more)."""
    face_model, template, ids = face
    low, high = box_around(torch.as_tensor(template[ids]), 0.1 + GRID_MARGIN)
    grid = NeighbourGrid(template[ids], low.numpy(), high.numpy(), 32, 4)
    anchors, rotation, translation = _posed_anchors(face_model, ids, 2, seed=5)
    g = torch.Generator().manual_seed(6)
    # points within 10 cm of the posed mesh: where the prior's density can be non-zero
    base = anchors[:, torch.randint(0, len(ids), (4000,), generator=g)]
    offset = torch.randn(base.shape, generator=g)
    points = base + 0.1 * torch.rand(2, 4000, 1, generator=g) * offset / offset.norm(dim=-1, keepdim=True)
    found = grid.search(points, rotation, translation)
    assert found.shape == (2, 4000, 4)
    neighbours = nearest_anchors(points, anchors, 4, found)
    for b in range(2):
        exact, _ = cKDTree(anchors[b].double().numpy()).query(points[b].double().numpy(), k=4)
        gap = neighbours.nearest[b].numpy() - exact[:, 0]
        assert gap.min() > -1e-6  # never nearer than the true nearest
        # measured: median 0, 90th percentile 1.2 mm, 99th 7.4 mm, largest 14 mm (the falloff ramp is 25 mm)
        assert np.percentile(gap, 50) < 1e-6 and np.percentile(gap, 90) < 0.003, np.percentile(gap, [50, 90])
        assert np.percentile(gap, 99) < 0.01 and gap.max() < 0.02, (np.percentile(gap, 99), gap.max())
    # at the cells' centres, in the head frame of the mean face, the table is the exact answer
    axis = (torch.arange(32) + 0.5) / 32
    centres = low + torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(1, -1, 3) * (high - low)
    at_centres = grid.search(centres.float(), torch.eye(3)[None], torch.zeros(1, 3))
    exact = cKDTree(template[ids]).query(centres[0].double().numpy(), k=4)[1]
    assert np.array_equal(np.sort(at_centres[0].numpy(), -1), np.sort(exact, -1))


def _model(face, **changes) -> AvatarPrior:
    _, template, ids = face
    config = preset("cpu", **{"latent_dim": 8, "feature_dim": 4, "hidden_dim": 16, "coarse_samples": 32,
                              "fine_samples": 16, "k_neighbors": 3, "grid_resolution": 24, **changes})
    torch.manual_seed(0)
    return AvatarPrior(config, 2, face[0].n_expression, ids, template[ids])


def _camera_scene(face, seed: int = 7, R: int = 400) -> dict:
    face_model, _, ids = face
    vertices, rotation, translation = _posed_anchors(face_model, np.arange(face_model.n_vertices), 2, seed)
    centre = vertices.mean(1)
    g = torch.Generator().manual_seed(seed)
    origins = (centre + torch.tensor([0.0, 0.0, -0.6])[None])[:, None, :].expand(2, R, 3).contiguous()
    targets = centre[:, None, :] + 0.4 * (torch.rand(2, R, 3, generator=g) - 0.5)
    dirs = targets - origins
    return {"expression": 0.5 * torch.randn(2, face_model.n_expression, generator=g), "vertices": vertices,
            "rotation": rotation, "translation": translation, "origins": origins,
            "dirs": dirs / dirs.norm(dim=-1, keepdim=True), "has_mask": torch.tensor([True, False])}


def _render(model, scene, latent, generator=None):
    return model.render_rays(latent, scene["expression"], scene["vertices"], scene["rotation"], scene["translation"],
                             scene["origins"], scene["dirs"], scene["has_mask"], generator=generator)


def _carve_to_a_ball(model, scene, radius=0.07):
    """Make the field dense inside a head-frame ball and learn that into the grid (a trained head, in miniature)."""
    centre = torch.einsum("bji,bj->bi", scene["rotation"], scene["vertices"].mean(1) - scene["translation"])[0]
    model.occupancy.refresh(_ball_density(scene["rotation"], scene["translation"], centre, radius),
                            scene["rotation"], scene["translation"], None)


def test_rays_that_cross_no_occupied_cell_render_the_background_and_the_rest_match_the_exhaustive_sampler(face):
    model = _model(face)
    exhaustive = with_sampler(model, sampler="sphere", coarse_samples=128, fine_samples=64)
    assert exhaustive.occupancy is None
    scene = _camera_scene(face)
    latent = model.latents(torch.tensor([0, 1]))
    with torch.no_grad():
        fresh = _render(model, scene, latent)
        reference = _render(exhaustive, scene, latent)
    # before any refresh every cell may be occupied: the whole box, sampled more sparsely
    assert (fresh["rgb"] - reference["rgb"]).abs().max() < 0.02
    _carve_to_a_ball(model, scene)
    with torch.no_grad():
        carved = _render(model, scene, latent)
    background = model._background(scene["has_mask"])
    missed = carved["acc"] == 0
    assert 0.2 < missed.float().mean() < 0.9
    torch.testing.assert_close(carved["rgb"][missed], background[:, None, :].expand_as(carved["rgb"])[missed])


def test_the_fast_sampler_trains_the_fine_samples_and_the_background(face):
    model = _model(face)
    scene = _camera_scene(face)
    _carve_to_a_ball(model, scene)
    latent = model.latents(torch.tensor([0, 1]))
    out = _render(model, scene, latent, generator=torch.Generator().manual_seed(0))
    (out["rgb"].sum() + out["acc"].sum()).backward()
    for name in ("background_logit", "field.decoder.net.0.weight", "field.base", "latents.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_architecture_carries_the_template_and_old_checkpoints_keep_their_sampler(face):
    model = _model(face)
    scene = _camera_scene(face)
    _carve_to_a_ball(model, scene)
    arch = model.architecture()
    assert json.loads(json.dumps(arch)) == arch
    clone = AvatarPrior.from_architecture(arch)
    clone.load_state_dict(model.state_dict())
    assert torch.equal(clone.occupancy.occupied_cells(), model.occupancy.occupied_cells())
    latent = model.latents(torch.tensor([0, 1]))
    with torch.no_grad():
        assert torch.equal(_render(model, scene, latent)["rgb"], _render(clone, scene, latent)["rgb"])
    legacy = {**arch, "config": {k: v for k, v in arch["config"].items()
                                 if k not in ("sampler", "neighbour_search", "grid_resolution",
                                              "occupancy_every", "occupancy_opacity", "offset_encoding")}}
    del legacy["anchor_template"]
    old = AvatarPrior.from_architecture(legacy)
    assert old.config.sampler == "sphere" and old.occupancy is None and old.neighbour_grid is None
    assert old.config.offset_encoding == "each"


def test_the_fast_sampler_needs_the_template():
    with pytest.raises(ValueError, match="template"):
        AvatarPrior(preset("cpu"), 1, N_EXPRESSION, np.arange(10))


@pytest.mark.parametrize("bad, match", [({"sampler": "grid"}, "sampler"), ({"neighbour_search": "bvh"}, "neighbour"),
                                        ({"occupancy_opacity": 1.0}, "occupancy_opacity"),
                                        ({"grid_resolution": 0}, "grid_resolution")])
def test_config_rejects_bad_sampler_settings(bad, match):
    with pytest.raises(ValueError, match=match):
        preset("cpu", **bad)


def test_density_threshold_is_the_stated_opacity_over_one_cell():
    grid = OccupancyGrid(torch.zeros(3), torch.tensor([0.32, 0.1, 0.1]), 32, 0.05)
    assert math.isclose(grid.threshold, -math.log(0.95) / 0.01, rel_tol=1e-6)


def test_a_batch_whose_rays_all_miss_renders_the_background(face):
    model = _model(face)
    scene = _camera_scene(face, R=6)
    _carve_to_a_ball(model, scene)
    away = scene["dirs"].clone()
    away[..., 2] = -away[..., 2]  # every ray looks away from the head
    scene = {**scene, "dirs": away}
    out = _render(model, scene, model.latents(torch.tensor([0, 1])), generator=torch.Generator().manual_seed(0))
    assert torch.equal(out["acc"], torch.zeros(2, 6))
    torch.testing.assert_close(out["rgb"], model._background(scene["has_mask"])[:, None, :].expand(2, 6, 3))
    out["rgb"].sum().backward()  # the background still learns
    assert model.background_logit.grad.abs().sum() > 0



def test_head_frame_transforms_undo_the_head_pose():
    from training.prior.head_frame import head_frame_to_world, points_to_head_frame, vectors_to_head_frame

    rotation, translation = _pose(2)
    local = torch.tensor([[0.01, 0.02, -0.03], [0.1, -0.05, 0.0], [0.0, 0.0, 0.12]])
    world = head_frame_to_world(local, rotation, translation)
    by_hand = torch.stack([local @ rotation[b].T + translation[b] for b in range(2)])  # R m + t, row form
    torch.testing.assert_close(world, by_hand)
    torch.testing.assert_close(points_to_head_frame(world, rotation, translation), local.expand(2, -1, -1))
    torch.testing.assert_close(points_to_head_frame(world[:, :, None, :], rotation, translation)[:, :, 0],
                               local.expand(2, -1, -1))  # extra axes between the points and xyz
    step = world[:, 1:] - world[:, :1]  # a vector does not move with the translation
    torch.testing.assert_close(vectors_to_head_frame(step, rotation), (local[1:] - local[:1]).expand(2, -1, -1))
