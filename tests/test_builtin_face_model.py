"""The built-in morphable face model (a ``LinearFaceModel``): asset, topology, presets and modes."""

from __future__ import annotations

import itertools
from importlib import resources

import numpy as np
import pytest

from capture_schema.layout import DEFAULT_EXPRESSIONS
from fitting.face_models import builtin as mm
from fitting.face_models.builtin import builtin_face_model, builtin_texture
from fitting.face_models.linear import LinearFaceModel


@pytest.fixture(scope="module")
def model() -> LinearFaceModel:
    return builtin_face_model(np.float64)


def _lid_gap(verts: np.ndarray, upper: tuple[int, ...], lower: tuple[int, ...]) -> float:
    return float(np.mean(np.linalg.norm(verts[list(upper[1:-1])] - verts[list(lower[1:-1])], axis=1)))


def test_shapes_and_topology(model: LinearFaceModel) -> None:
    assert model.template.shape == (mm.N_VERTICES, 3)
    assert model.uv.shape == (mm.N_VERTICES, 2)
    assert model.uv.min() >= 0.0 and model.uv.max() <= 1.0
    assert model.faces.dtype == np.int64 and model.faces.shape[1] == 3
    assert model.faces.min() >= 0 and model.faces.max() < mm.N_VERTICES
    assert len(model.skin_faces) == 852
    skin = {frozenset(f) for f in model.skin_faces.tolist()}
    assert frozenset((49, 64, 129)) not in skin and frozenset((279, 294, 358)) not in skin
    assert model.identity_basis.shape == (len(model.identity_names), mm.N_VERTICES, 3)
    assert model.expression_basis.shape == (len(model.expression_names), mm.N_VERTICES, 3)
    assert 8 <= model.n_identity <= 12
    assert len(set(model.expression_names)) == model.n_expression


def test_world_convention(model: LinearFaceModel) -> None:
    t = model.template
    assert np.linalg.norm(t[33] - t[263]) == pytest.approx(0.09, abs=1e-6)
    assert np.argmin(t[:, 2]) in (1, 4)  # the nose tip is nearest the frontal cameras
    assert t[10, 1] < t[1, 1] < t[152, 1]  # y points down: forehead, nose, chin
    assert t[263, 0] > 0 > t[33, 0]  # the subject's left is +x
    assert np.allclose(t[:468].mean(axis=0), 0.0, atol=1e-9)


def test_faces_point_outwards(model: LinearFaceModel) -> None:
    t = model.template
    a, b, c = (t[model.skin_faces[:, k]] for k in range(3))
    normals = np.cross(b - a, c - a)
    outward = (a + b + c) / 3.0 - np.array([0.0, 0.0, 0.1])
    assert np.mean(np.einsum("ij,ij->i", normals, outward) > 0) > 0.97


def test_mirror_map(model: LinearFaceModel) -> None:
    perm = model.mirror
    assert np.array_equal(perm[perm], np.arange(mm.N_VERTICES))
    assert perm[33] == 263 and perm[1] == 1
    assert np.allclose(model.template[perm] * [-1, 1, 1], model.template, atol=1e-9)
    left = model.expression_basis[model.expression_names.index("eye_close_left")]
    right = model.expression_basis[model.expression_names.index("eye_close_right")]
    assert np.allclose(left[perm] * [-1, 1, 1], right, atol=1e-9)


def test_neutral_preset_is_template(model: LinearFaceModel) -> None:
    assert not model.expression_preset("neutral").any()
    verts = model.vertices(np.zeros(model.n_identity), model.expression_preset("neutral"))
    assert np.array_equal(verts, model.template)


def test_every_preset_moves_the_mesh_and_differs(model: LinearFaceModel) -> None:
    shapes = {name: model.vertices(expression=model.expression_preset(name)) for name in DEFAULT_EXPRESSIONS}
    for name, verts in shapes.items():
        if name != "neutral":
            assert np.abs(verts - model.template).max() > 0.003, name
    for a, b in itertools.combinations(DEFAULT_EXPRESSIONS, 2):
        assert np.abs(shapes[a] - shapes[b]).max() > 0.002, (a, b)


def test_eyes_closed_closes_both_eyes(model: LinearFaceModel) -> None:
    open_ = model.template
    closed = model.vertices(expression=model.expression_preset("eyes_closed"))
    for upper, lower in ((mm.LEFT_EYE_UPPER, mm.LEFT_EYE_LOWER), (mm.RIGHT_EYE_UPPER, mm.RIGHT_EYE_LOWER)):
        assert _lid_gap(open_, upper, lower) > 0.005
        assert _lid_gap(closed, upper, lower) < 0.1 * _lid_gap(open_, upper, lower)


def test_wink_left_closes_only_the_left_eye(model: LinearFaceModel) -> None:
    wink = model.vertices(expression=model.expression_preset("wink_left"))
    left, right = (mm.LEFT_EYE_UPPER, mm.LEFT_EYE_LOWER), (mm.RIGHT_EYE_UPPER, mm.RIGHT_EYE_LOWER)
    assert _lid_gap(wink, *left) < 0.15 * _lid_gap(model.template, *left)
    assert _lid_gap(wink, *right) > 0.8 * _lid_gap(model.template, *right)


def test_mouth_open_parts_the_lips(model: LinearFaceModel) -> None:
    closed = model.template
    opened = model.vertices(expression=model.expression_preset("mouth_open"))
    assert np.linalg.norm(closed[13] - closed[14]) < 0.001
    assert np.linalg.norm(opened[13] - opened[14]) > 0.015
    assert opened[14, 1] > closed[14, 1]  # the lower lip went down (+y)


def test_jaw_sideways_goes_to_the_named_side(model: LinearFaceModel) -> None:
    left = model.vertices(expression=model.expression_preset("jaw_left"))
    right = model.vertices(expression=model.expression_preset("jaw_right"))
    assert left[152, 0] > 0.005 and right[152, 0] < -0.005


def test_unknown_expression_raises(model: LinearFaceModel) -> None:
    with pytest.raises(ValueError, match="unknown expression"):
        model.expression_preset("grimace")


def test_wrong_coefficient_count_raises(model: LinearFaceModel) -> None:
    with pytest.raises(ValueError, match="identity coefficients"):
        model.vertices(np.zeros(model.n_identity + 1))


def test_rigid_pose_is_applied_after_the_linear_model(model: LinearFaceModel) -> None:
    angle = np.deg2rad(20.0)
    R = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    t = np.array([0.01, -0.02, 0.03])
    expr = model.expression_preset("smile")
    posed = model.vertices(None, expr, R, t)
    assert np.allclose(posed, model.vertices(None, expr) @ R.T + t)


def test_identity_modes_change_the_shape_plausibly(model: LinearFaceModel) -> None:
    for k, name in enumerate(model.identity_names):
        coeffs = np.zeros(model.n_identity)
        coeffs[k] = 2.0
        shift = np.linalg.norm(model.vertices(coeffs) - model.template, axis=1).max()
        assert 0.002 < shift < 0.015, name  # visible, but +-2 sigma stays a plausible face
    coeffs = np.zeros(model.n_identity)
    coeffs[model.identity_names.index("face_width")] = 2.0
    wide = model.vertices(coeffs)
    ratio = np.linalg.norm(wide[234] - wide[454]) / np.linalg.norm(model.template[234] - model.template[454])
    assert 1.05 < ratio < 1.15


def test_precision_is_the_only_difference_between_the_two_instances(model: LinearFaceModel) -> None:
    fitter = builtin_face_model()
    assert fitter is builtin_face_model(np.float32) and model is builtin_face_model("float64")
    assert fitter.template.dtype == fitter.identity_basis.dtype == np.float32
    assert model.template.dtype == model.expression_basis.dtype == np.float64
    assert fitter.name == model.name == "builtin" and np.array_equal(fitter.faces, model.faces)
    identity, expr = np.ones(model.n_identity), model.expression_preset("surprise")
    assert np.array_equal(fitter.expression_preset("surprise"), expr)
    assert np.abs(fitter.vertices(identity, expr) - model.vertices(identity, expr)).max() < 1e-7


def test_numpy_and_torch_forward_passes_agree(model: LinearFaceModel) -> None:
    import torch

    rng = np.random.default_rng(0)
    identity, expression = rng.normal(size=model.n_identity), rng.uniform(size=model.n_expression)
    batched = model.vertices_torch(torch.from_numpy(identity)[None], torch.from_numpy(expression)[None])[0]
    assert np.allclose(model.vertices(identity, expression), batched.numpy(), rtol=0, atol=1e-12)
    lm = model.landmarks_torch(torch.from_numpy(identity)[None], torch.from_numpy(expression)[None])[0]
    assert np.allclose(lm.numpy(), model.vertices(identity, expression), rtol=0, atol=1e-12)


def test_presets_and_optional_fields_are_checked(model: LinearFaceModel) -> None:
    def linear(**extra) -> LinearFaceModel:
        return LinearFaceModel("test", model.template, model.faces, model.identity_basis, model.expression_basis,
                               model.identity_names, model.expression_names, model.landmark_embedding, **extra)

    with pytest.raises(ValueError, match="has no expression presets"):
        linear().expression_preset("smile")
    with pytest.raises(ValueError, match="components the model does not have: no_such_component"):
        linear(expression_presets={"smile": {"no_such_component": 1.0}})
    with pytest.raises(ValueError, match="uv"):
        linear(uv=model.uv[:-1])
    with pytest.raises(ValueError, match="mirror"):
        linear(mirror=model.mirror[:-1])
    with pytest.raises(ValueError, match="face_labels"):
        linear(face_labels=model.face_labels[:-1])
    bare = linear()
    assert bare.template.dtype == np.float32 and bare.uv is None and np.array_equal(bare.skin_faces, bare.faces)


def test_texture_and_asset_size(model: LinearFaceModel) -> None:
    texture = builtin_texture()
    assert texture.dtype == np.uint8 and texture.ndim == 3 and texture.shape[2] == 3
    assert min(texture.shape[:2]) >= 64
    asset = resources.files("fitting.face_models").joinpath(mm.ASSET)
    assert len(asset.read_bytes()) < 1_000_000


def test_build_is_deterministic_and_matches_the_asset(tmp_path, model: LinearFaceModel) -> None:
    from tools.build_face_model import build_face_model

    first = build_face_model(tmp_path / "a.npz").read_bytes()
    assert build_face_model(tmp_path / "b.npz").read_bytes() == first
    with np.load(tmp_path / "a.npz") as built:
        assert np.allclose(built["template"], model.template, atol=1e-4)
        assert np.array_equal(built["faces"], model.faces)
        assert tuple(built["expression_names"]) == model.expression_names
