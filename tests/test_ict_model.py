"""ICT-FaceKit: the packaged-file loader, its frame, the mediapipe embedding, the OBJ importer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_DATA, needs_reference_data
from fitting.face_models import ict
from fitting.face_models.builtin import (
    LEFT_EYE_LOWER,
    LEFT_EYE_UPPER,
    LIPS_LOWER_INNER,
    LIPS_UPPER_INNER,
    RIGHT_EYE_LOWER,
    RIGHT_EYE_UPPER,
    builtin_face_model,
)
from fitting.face_models.ict import (
    IctFormatError,
    ict_to_model_frame,
    load_ict_model,
    read_ict_arrays,
    triangulate_quads,
)
from fitting.face_models.ict_embedding import (
    IBUG68_TO_MEDIAPIPE,
    SAFE_ANCHORS,
    build_mediapipe_embedding,
    closest_points_on_mesh,
)
from fitting.face_models.ict_obj import import_ict_obj, read_obj

ICT_DIR = SHARED_DATA / "ict_facekit"
needs_ict = needs_reference_data(ICT_DIR / ict.TOPOLOGY_FILE, "ICT-FaceKit packaged files (shared data)")
FACE_END = 9409  # ICT's face region is vertices 0..9408
# iBUG 68 (0-based) left/right mirror pairs, to check the correspondence table.
IBUG_MIRROR = {**{i: 16 - i for i in range(17)}, **{17 + i: 26 - i for i in range(10)},
               27: 27, 28: 28, 29: 29, 30: 30, 31: 35, 32: 34, 33: 33, 34: 32, 35: 31,
               36: 45, 37: 44, 38: 43, 39: 42, 40: 47, 41: 46, 42: 39, 43: 38, 44: 37, 45: 36, 46: 41, 47: 40,
               48: 54, 49: 53, 50: 52, 51: 51, 52: 50, 53: 49, 54: 48, 55: 59, 56: 58, 57: 57, 58: 56, 59: 55,
               60: 64, 61: 63, 62: 62, 63: 61, 64: 60, 65: 67, 66: 66, 67: 65}  # fmt: skip


@pytest.fixture(scope="module")
def model():
    return load_ict_model(ICT_DIR)


@pytest.fixture(scope="module")
def arrays():
    return read_ict_arrays(ICT_DIR)


def _expr(model, **weights: float) -> np.ndarray:
    e = np.zeros(model.n_expression)
    for name, w in weights.items():
        e[model.expression_names.index(name)] = w
    return e


# ---------------------------------------------------------------- loader


@needs_ict
@pytest.mark.parametrize("sample", ["sample1", "sample2"])
def test_reproduces_reference_samples(model, arrays, sample: str) -> None:
    """Within float16 rounding of each delta: |error| <= 2^-11 * sum_k |c_k| |delta_k| per coordinate.

    float16 keeps 11 significant bits, so each stored delta is within 2^-11 of its
    value relatively; the coefficients weight those errors. Compared in metres after
    the unit and axis change (the bound scales by 0.01; the axis flip keeps |.|).
    """
    ref = np.load(ICT_DIR / "ict_reference_samples.npz")
    id_c, ex_c = ref[f"{sample}_identity_coeffs"], ref[f"{sample}_expression_coeffs"]
    got = model.vertices(id_c, ex_c)
    want = ict_to_model_frame(ref[f"{sample}_skin_vertices"]).astype(np.float64)
    bound_cm = 2.0**-11 * (
        np.tensordot(np.abs(id_c), np.abs(arrays.identity), 1) + np.tensordot(np.abs(ex_c), np.abs(arrays.expression), 1)
    )
    err = np.abs(got - want)
    assert np.all(err <= 1.001 * ict.CM_TO_M * bound_cm + 1e-7)  # + 0.1 um for float32 storage
    assert err.max() < 2e-5  # 0.02 mm: in absolute terms
    assert np.linalg.norm(got - ict_to_model_frame(arrays.template), axis=1).max() > 0.01  # the sample is not neutral
    lm = ict_to_model_frame(ref[f"{sample}_landmarks68"]).astype(np.float64)
    assert np.abs(got[arrays.landmarks68] - lm).max() < 2e-5


@needs_ict
def test_float16_deltas_match_exact_landmark_basis(arrays) -> None:
    exact = np.load(ICT_DIR / "ict_landmarks68_basis.npz")
    assert np.array_equal(exact["landmark_vertex_idx"], arrays.landmarks68)
    for ours, theirs in ((arrays.identity, exact["id_dirs"]), (arrays.expression, exact["expr_dirs"])):
        rel = np.abs(ours[:, arrays.landmarks68] - theirs) / np.maximum(np.abs(theirs), 6.1e-5)
        assert rel.max() <= 2.0**-11 * 1.001


@needs_ict
def test_model_shape_and_names(model) -> None:
    assert model.name == "ict-facekit"
    assert model.n_vertices == 14062 and model.n_identity == 100 and model.n_expression == 53
    assert model.identity_names[0] == "id000" and model.identity_names[-1] == "id099"
    assert {"jawOpen", "eyeBlink_L", "mouthSmile_R"} <= set(model.expression_names)
    assert model.faces.shape == (2 * 14034, 3)  # every ICT skin quad is a true quad
    assert model.template.dtype == np.float32 and model.identity_basis.dtype == np.float32


@needs_ict
def test_units_and_axes(model, arrays) -> None:
    v = model.vertices()
    lm = v[arrays.landmarks68]
    eye_span = np.linalg.norm(lm[45] - lm[36])  # outer eye corners
    assert 0.08 < eye_span < 0.11  # metres, a human head
    assert lm[42:48, 0].min() > 0 > lm[36:42, 0].max()  # the subject's left eye at +x
    assert lm[19, 1] < lm[30, 1] < lm[57, 1] < lm[8, 1]  # y down: brow, nose tip, lower lip, chin
    face = v[:FACE_END]
    assert lm[30, 2] < np.percentile(face[:, 2], 1)  # the nose tip is near the front, at -z
    tris = model.faces[(model.faces < FACE_END).all(axis=1)]
    a, b, c = (v[tris[:, k]] for k in range(3))
    vector_area = np.cross(b - a, c - a).sum(axis=0)
    assert vector_area[2] < -0.8 * np.linalg.norm(vector_area)  # outward normals: the face looks -z


@needs_ict
def test_regions_subset(model) -> None:
    small = load_ict_model(ICT_DIR, n_identity=10, regions=("face", "head_and_neck"))
    assert small.n_vertices == 11248 and small.n_identity == 10
    assert small.faces.max() < 11248
    np.testing.assert_allclose(small.template, model.template[:11248])
    p_small = small.landmark_embedding.points(small.vertices())
    p_full = model.landmark_embedding.points(model.vertices())
    np.testing.assert_allclose(p_small, p_full, atol=1e-7)
    with pytest.raises(ValueError, match="face"):
        load_ict_model(ICT_DIR, regions=("head_and_neck",))
    with pytest.raises(ValueError, match="unknown region"):
        load_ict_model(ICT_DIR, regions=("face", "teeth"))


def test_triangulate_quads_keeps_winding_and_drops_degenerates() -> None:
    quads = np.array([[0, 1, 2, 3], [4, 5, 6, 6], [7, 7, 8, 9]])
    tris = triangulate_quads(quads)
    assert tris.tolist() == [[0, 1, 2], [0, 2, 3], [4, 5, 6], [7, 8, 9]]


# ---------------------------------------------------------------- embedding


def test_correspondence_table_on_builtin_model() -> None:
    """The iBUG-68 -> mediapipe table respects mirror symmetry and the scheme's layout."""
    bm = builtin_face_model(np.float64)
    t = bm.template
    mp = IBUG68_TO_MEDIAPIPE
    for i, m in mp.items():
        assert bm.mirror[m] == mp[IBUG_MIRROR[i]], f"iBUG {i} -> {m} is not mirrored by iBUG {IBUG_MIRROR[i]}"
        if IBUG_MIRROR[i] == i:
            assert abs(t[m, 0]) < 1e-3
        elif i in (17, 18, 19, 20, 21, 31, 32, 36, 37, 38, 39, 40, 41, 48, 49, 50, 58, 59, 60, 61, 67):
            assert t[m, 0] < 0, f"iBUG {i} is on the subject's right (-x)"
    ridge = [t[mp[i]] for i in (27, 28, 29, 30)]
    assert all(a[1] < b[1] and a[2] > b[2] for a, b in zip(ridge, ridge[1:]))  # down and forwards to the tip
    assert np.argmin(t[:, 2]) in (mp[30], 1)
    assert max(t[mp[i], 1] for i in range(17, 27)) < min(t[mp[i], 1] for i in range(36, 48))  # brows above eyes
    assert t[mp[37], 1] < t[mp[41], 1] and t[mp[38], 1] < t[mp[40], 1]  # upper lid above lower lid
    assert t[mp[51], 1] < t[mp[62], 1] <= t[mp[66], 1] < t[mp[57], 1]  # lips top to bottom
    assert t[mp[33], 1] < t[mp[51], 1] < t[mp[8], 1]  # nose base, lip, chin
    for a, b in ((36, 37), (37, 38), (38, 39), (48, 49), (49, 50), (50, 51), (60, 61), (61, 62)):
        assert t[mp[a], 0] < t[mp[b], 0]  # left to right along the contours


@needs_ict
def test_embedding_lies_on_face_surface(model) -> None:
    emb = model.landmark_embedding
    assert emb.landmark_ids.tolist() == list(range(468))  # irises 468-477 are left out
    faces = {tuple(sorted(f)) for f in model.faces.tolist()}
    assert all(tuple(sorted(tri)) in faces for tri in emb.triangles.tolist())
    assert emb.triangles.max() < FACE_END  # the face region
    assert emb.barycentric.min() >= 0 and np.allclose(emb.barycentric.sum(1), 1)
    v = model.vertices(np.full(model.n_identity, 0.5), _expr(model, jawOpen=0.4, mouthSmile_L=0.7))
    pts = emb.points(v)
    face_tris = model.faces[(model.faces < FACE_END).all(axis=1)]
    _, _, closest = closest_points_on_mesh(pts, v, face_tris)
    assert np.linalg.norm(closest - pts, axis=1).max() < 1e-7


@needs_ict
def test_embedding_anchors_match_68_points(model, arrays) -> None:
    v = model.vertices()
    pts = model.landmark_embedding.points(v)
    lm = v[arrays.landmarks68]
    err_mm = {i: 1e3 * np.linalg.norm(pts[m] - lm[i]) for i, m in IBUG68_TO_MEDIAPIPE.items()}
    assert max(err_mm[i] for i in SAFE_ANCHORS) < 1.0, {i: round(err_mm[i], 2) for i in SAFE_ANCHORS}
    assert max(err_mm.values()) < 3.0
    # and it follows identity: anchors stay on their vertices for another face
    rng = np.random.default_rng(3)
    v2 = model.vertices(rng.standard_normal(model.n_identity))
    pts2 = model.landmark_embedding.points(v2)
    assert max(1e3 * np.linalg.norm(pts2[m] - v2[arrays.landmarks68[i]]) for i, m in SAFE_ANCHORS.items()) < 2.0


@needs_ict
def test_embedding_follows_expressions(model) -> None:
    def gap(p, upper, lower):
        return float(np.mean(p[list(lower[1:-1]), 1] - p[list(upper[1:-1]), 1]))

    emb = model.landmark_embedding
    neutral = emb.points(model.vertices())
    assert gap(neutral, RIGHT_EYE_UPPER, RIGHT_EYE_LOWER) > 0.004  # eyes open, upper lid above
    assert abs(gap(neutral, LIPS_UPPER_INNER, LIPS_LOWER_INNER)) < 0.003  # lips closed
    opened = emb.points(model.vertices(expression=_expr(model, jawOpen=1.0)))
    upper, lower = list(LIPS_UPPER_INNER[1:-1]), list(LIPS_LOWER_INNER[1:-1])
    assert np.all(opened[lower, 1] - opened[upper, 1] > 0.01)  # each lower-lip point went with the jaw
    blink = emb.points(model.vertices(expression=_expr(model, eyeBlink_R=1.0)))
    assert gap(blink, RIGHT_EYE_UPPER, RIGHT_EYE_LOWER) < 0.3 * gap(neutral, RIGHT_EYE_UPPER, RIGHT_EYE_LOWER)
    assert gap(blink, LEFT_EYE_UPPER, LEFT_EYE_LOWER) > 0.8 * gap(neutral, LEFT_EYE_UPPER, LEFT_EYE_LOWER)


@needs_ict
def test_embedding_is_deterministic_and_torch_agrees(model, arrays) -> None:
    template = ict_to_model_frame(arrays.template)
    tris = triangulate_quads(arrays.quads)
    face_tris = tris[(tris < FACE_END).all(axis=1)]
    jaw = ict_to_model_frame(arrays.expression[arrays.expression_names.index("jawOpen")])
    emb = build_mediapipe_embedding(template, face_tris, arrays.landmarks68, jaw_open_delta=jaw)
    assert np.array_equal(emb.triangles, model.landmark_embedding.triangles)
    assert np.array_equal(emb.barycentric, model.landmark_embedding.barycentric)
    import torch

    ident = torch.randn(2, model.n_identity, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expr = torch.zeros(2, model.n_expression, dtype=torch.float64)
    expr[1, model.expression_names.index("jawOpen")] = 0.8
    lms = model.landmarks_torch(ident, expr).numpy()
    for b in range(2):
        want = emb.points(model.vertices(ident[b].numpy(), expr[b].numpy()))
        np.testing.assert_allclose(lms[b], want, atol=1e-9)


# ---------------------------------------------------------------- OBJ importer and errors

NEUTRAL = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 1, 0], [1, 1, 0], [2, 1, 0], [1, 2, 0], [5, 5, 5]], float)
# Faces: two quads and a triangle on the skin (vertices 0..6), one face reaching vertex 7 (not skin).
OBJ_FACES = ["f 1/1/1 2/2/1 5/5/1 4/4/1", "f 2//1 3//1 6//1 5//1", "f 4/4 5/5 7/7", "f 6 8 7"]
SKIN_REGIONS = (("face", 0, 4), ("head_and_neck", 4, 7))


def _write_obj(path: Path, verts: np.ndarray, with_uv: bool = True) -> None:
    lines = ["# tiny test mesh", "mtllib none.mtl", "o skin"] + [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in verts]
    if with_uv:
        lines += [f"vt {x / 3:.4f} {y / 3:.4f}" for x, y, _ in verts]
    lines += ["vn 0 0 1", "usemtl skin", "s 1", *OBJ_FACES]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture()
def tiny_obj_dir(tmp_path: Path):
    rng = np.random.default_rng(0)
    modes = {f"identity{i:03d}": rng.normal(scale=0.5, size=NEUTRAL.shape) for i in range(2)}
    modes.update({name: rng.normal(scale=0.3, size=NEUTRAL.shape) for name in ("jawOpen", "eyeBlink_L")})
    obj_dir = tmp_path / "FaceXModel"
    obj_dir.mkdir()
    _write_obj(obj_dir / "generic_neutral_mesh.obj", NEUTRAL)
    for name, delta in modes.items():
        _write_obj(obj_dir / f"{name}.obj", NEUTRAL + delta, with_uv=name != "jawOpen")
    return obj_dir, modes


def _import_tiny(obj_dir: Path, out: Path, **kw):
    return import_ict_obj(obj_dir, out, n_identity=2, expression_names=["jawOpen", "eyeBlink_L"],
                          landmarks68=np.arange(68) % 7, regions=SKIN_REGIONS, **kw)  # fmt: skip


def test_read_obj_tokens_and_mixed_faces(tiny_obj_dir) -> None:
    obj_dir, _ = tiny_obj_dir
    mesh = read_obj(obj_dir / "generic_neutral_mesh.obj")
    np.testing.assert_allclose(mesh.vertices, NEUTRAL)
    assert mesh.faces.tolist() == [[0, 1, 4, 3], [1, 2, 5, 4], [3, 4, 6, 6], [5, 7, 6, 6]]
    assert mesh.faces_uv.tolist() == [[0, 1, 4, 3], [-1, -1, -1, -1], [3, 4, 6, 6], [-1, -1, -1, -1]]
    assert mesh.uv.shape == (8, 2)
    bad = obj_dir / "pentagon.obj"
    bad.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nv 0 2 0\nf 1 2 3 4 5\n")
    with pytest.raises(IctFormatError, match="5 corners"):
        read_obj(bad)
    neg = obj_dir / "negative.obj"
    neg.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nf -3 -2 -1\n")
    assert read_obj(neg).faces.tolist() == [[0, 1, 2, 2]]


def test_obj_importer_round_trip(tiny_obj_dir, tmp_path: Path) -> None:
    obj_dir, modes = tiny_obj_dir
    calls = []
    written = _import_tiny(obj_dir, tmp_path / "out", progress=lambda d, n, name: calls.append((d, n, name)))
    assert calls[-1][:2] == (5, 5) and [c[0] for c in calls] == [1, 2, 3, 4, 5]
    assert {p.name for p in written} >= {ict.TOPOLOGY_FILE, ict.EXPRESSION_FILE, ict.IDENTITY_FILES[0][0]}
    got = read_ict_arrays(tmp_path / "out", n_identity=2)
    np.testing.assert_allclose(got.template, NEUTRAL[:7], atol=1e-6)
    assert got.quads.tolist() == [[0, 1, 4, 3], [1, 2, 5, 4], [3, 4, 6, 6]]  # the face reaching vertex 7 is dropped
    assert triangulate_quads(got.quads).tolist() == [[0, 1, 4], [0, 4, 3], [1, 2, 5], [1, 5, 4], [3, 4, 6]]
    for k, name in enumerate(["identity000", "identity001"]):
        np.testing.assert_allclose(got.identity[k], modes[name][:7], rtol=2.0**-11, atol=1e-6)
    for k, name in enumerate(["jawOpen", "eyeBlink_L"]):
        np.testing.assert_allclose(got.expression[k], modes[name][:7], rtol=2.0**-11, atol=1e-6)
    assert got.expression_names == ("jawOpen", "eyeBlink_L")
    assert got.region_names == ("face", "head_and_neck") and got.region_ranges.tolist() == [[0, 4], [4, 7]]
    assert got.landmarks68.tolist() == (np.arange(68) % 7).tolist()
    with np.load(tmp_path / "out" / ict.TOPOLOGY_FILE) as topo:
        assert topo["faces"].dtype == np.int32 and topo["faces_uv"].tolist()[0] == [0, 1, 4, 3]
        assert int(topo["n_vertices_full_model"]) == 8
    with np.load(tmp_path / "out" / ict.IDENTITY_FILES[0][0]) as ids:
        assert ids["id_dirs"].dtype == np.float16 and int(ids["first_mode"]) == 0
    with pytest.raises(IctFormatError, match="ict_skin_identity000-033_f16.npz holds 2 identity modes"):
        read_ict_arrays(tmp_path / "out", n_identity=50)  # only two modes were imported


def test_obj_importer_missing_obj(tiny_obj_dir, tmp_path: Path) -> None:
    obj_dir, _ = tiny_obj_dir
    (obj_dir / "identity001.obj").unlink()
    with pytest.raises(IctFormatError, match="identity001.obj"):
        _import_tiny(obj_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_loader_errors_name_file_key_and_shape(tiny_obj_dir, tmp_path: Path) -> None:
    obj_dir, _ = tiny_obj_dir
    out = tmp_path / "out"
    _import_tiny(obj_dir, out)
    with np.load(out / ict.EXPRESSION_FILE) as data:
        expr = {k: data[k] for k in data.files}
    np.savez(out / ict.EXPRESSION_FILE, expr_dirs=expr["expr_dirs"][:, :5], expr_names=expr["expr_names"])
    with pytest.raises(IctFormatError, match=r"ict_skin_expression53_f16.npz:expr_dirs has shape \(2, 5, 3\), expected \(\*, 7, 3\)"):
        read_ict_arrays(out, n_identity=2)
    np.savez(out / ict.EXPRESSION_FILE, expr_dirs=expr["expr_dirs"])
    with pytest.raises(IctFormatError, match="lacks key.*expr_names"):
        read_ict_arrays(out, n_identity=2)
    (out / ict.TOPOLOGY_FILE).unlink()
    with pytest.raises(IctFormatError, match="ict_skin_topology.npz") as exc:
        load_ict_model(out)
    assert "not found" in str(exc.value)
