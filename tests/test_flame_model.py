"""FLAME loader: restricted unpickling, file layout checks and the LBS forward pass."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import torch
from scipy.spatial.transform import Rotation

from fitting.face_models.flame import POSE_NAMES, FlameFormatError, load_flame_model
from fitting.face_models.safe_pickle import ChumpyStandIn, UnsafePickleError, load_restricted_pickle
from conftest import SHARED_DATA, need_reference_data

FLAME_DIR = SHARED_DATA / "flame_format"
NV = 30
PARENTS = [-1, 0, 1, 1, 1]
POSE_BLOCK = {"jaw": 2, "neck": 1, "eye_left": 3, "eye_right": 4}  # coefficient block -> FLAME joint


def _shared(name: str) -> Path:
    path = FLAME_DIR / name
    need_reference_data(path, "shared FLAME-layout test file (shared data)")
    return path


def _flame_dict(seed: int = 0, n_cols: int = 400, jaw_free_posedirs: bool = False) -> dict:
    """A random but valid FLAME-layout dict; vertices 0..9 carry no jaw (or eye) weight."""
    rng = np.random.default_rng(seed)
    v_template = rng.normal(scale=0.05, size=(NV, 3))
    weights = rng.dirichlet(np.ones(5), size=NV)
    weights[:10] = rng.dirichlet(np.ones(2), size=10) @ np.eye(5)[:2]  # root + neck only
    posedirs = rng.normal(scale=1e-3, size=(NV, 3, 36))
    if jaw_free_posedirs:
        posedirs[:10] = 0.0  # so the jaw's pose correctives cannot move the jaw-free vertices either
    j_dense = rng.random((5, NV)) * (rng.random((5, NV)) < 0.4)
    j_dense[:, 0] += 0.1  # no empty row
    j_dense /= j_dense.sum(axis=1, keepdims=True)
    kintree = np.array([[np.iinfo(np.uint32).max, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64)
    return {
        "v_template": v_template,
        "f": rng.integers(0, NV, size=(40, 3)).astype(np.uint32),
        "shapedirs": rng.normal(scale=1e-3, size=(NV, 3, n_cols)),
        "posedirs": posedirs,
        "weights": weights,
        "J_regressor": scipy.sparse.csc_matrix(j_dense),
        "kintree_table": kintree,
        "J": j_dense @ v_template,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


def _write(path: Path, data: dict) -> Path:
    path.write_bytes(pickle.dumps(data, protocol=2))
    return path


def _reference_lbs(data: dict, betas: np.ndarray, psi: np.ndarray, pose: dict[str, np.ndarray]) -> np.ndarray:
    """Textbook SMPL-style LBS in FLAME's frame with 4x4 transforms, then (x, -y, -z)."""
    sd = data["shapedirs"]
    v_shaped = data["v_template"] + sd[:, :, : len(betas)] @ betas + sd[:, :, 300 : 300 + len(psi)] @ psi
    joints = data["J_regressor"].toarray() @ v_shaped
    rots = [np.eye(3)] + [np.eye(3)] * 4
    for block, joint in POSE_BLOCK.items():
        rots[joint] = Rotation.from_rotvec(pose[block]).as_matrix()
    feature = np.concatenate([(r - np.eye(3)).ravel() for r in rots[1:]])
    v_posed = v_shaped + data["posedirs"] @ feature
    world = []
    for j, parent in enumerate(PARENTS):
        local = np.eye(4)
        local[:3, :3] = rots[j]
        local[:3, 3] = joints[j] - (joints[parent] if parent >= 0 else 0.0)
        world.append(local if parent < 0 else world[parent] @ local)
    skin = []
    for j in range(5):
        rest = np.eye(4)
        rest[:3, 3] = -joints[j]
        skin.append(world[j] @ rest)
    per_vertex = np.einsum("nj,jab->nab", data["weights"], np.stack(skin))
    homo = np.concatenate([v_posed, np.ones((NV, 1))], axis=1)
    out = np.einsum("nab,nb->na", per_vertex, homo)[:, :3]
    return out * [1.0, -1.0, -1.0]


def _coeffs(model, seed: int = 1, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    ident = rng.normal(size=model.n_identity) * scale
    expr = rng.normal(size=model.n_expression) * scale
    expr[-12:] *= 0.3  # moderate joint angles
    return ident, expr


# --- shared tiny files -------------------------------------------------------------------------


def test_shared_tiny_files_load_without_chumpy() -> None:
    plain_path, chumpy_path = _shared("tiny_plain.pkl"), _shared("tiny_chumpy.pkl")
    raw = load_restricted_pickle(chumpy_path)
    assert "chumpy" not in sys.modules
    assert isinstance(raw["shapedirs"], ChumpyStandIn) and raw["shapedirs"].x.shape == (50, 3, 400)
    plain = load_restricted_pickle(plain_path)
    assert np.array_equal(raw["shapedirs"].state["x"], plain["shapedirs"])

    m_plain = load_flame_model(plain_path)
    m_chumpy = load_flame_model(chumpy_path, n_shape=20, n_expression=10)
    assert "chumpy" not in sys.modules
    x = raw["shapedirs"].state["x"]
    assert np.array_equal(m_chumpy.shapedirs, np.concatenate([x[:, :, :20], x[:, :, 300:310]], axis=2))
    assert m_plain.n_vertices == 50 and m_plain.faces.shape == (96, 3) and m_plain.faces.dtype == np.int64
    assert m_plain.n_identity == 100 and m_plain.n_expression == 50 + 12
    assert m_plain.identity_names[0] == "shape000" and m_plain.expression_names[49] == "expr049"
    assert m_plain.expression_names[50:] == POSE_NAMES and POSE_NAMES[0] == "jaw_rx"
    assert POSE_NAMES[-1] == "eye_right_rz" and len(POSE_NAMES) == 12
    assert m_chumpy.n_identity == 20 and m_chumpy.n_expression == 10 + 12
    assert np.allclose(m_plain.vertices(), plain["v_template"] * [1, -1, -1])


def test_coefficient_counts_are_clamped_to_the_file(tmp_path: Path) -> None:
    model = load_flame_model(_shared("tiny_plain.pkl"), n_shape=1000, n_expression=1000)
    assert model.n_identity == 300 and model.n_expression == 100 + 12


# --- restricted unpickler ----------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_sparse_and_arrays_round_trip(protocol: int) -> None:
    dense = np.random.default_rng(0).random((5, 7)) * (np.random.default_rng(1).random((5, 7)) < 0.5)
    data = {"csc": scipy.sparse.csc_matrix(dense), "csr": scipy.sparse.csr_matrix(dense), "a": dense.astype(np.float32),
            "s": np.float64(2.5), "b": b"", "t": (1, "x")}  # fmt: skip
    out = load_restricted_pickle(pickle.dumps(data, protocol=protocol))
    assert isinstance(out["csc"], scipy.sparse.csc_matrix) and isinstance(out["csr"], scipy.sparse.csr_matrix)
    assert np.array_equal(out["csc"].toarray(), dense) and np.array_equal(out["csr"].toarray(), dense)
    assert out["a"].dtype == np.float32 and np.array_equal(out["a"], dense.astype(np.float32))
    assert out["s"] == 2.5 and out["b"] == b"" and out["t"] == (1, "x")


def test_old_module_paths_are_remapped() -> None:
    blob = pickle.dumps({"J": scipy.sparse.csc_matrix(np.eye(3)), "a": np.arange(4.0)}, protocol=2)
    assert b"scipy.sparse._csc\ncsc_matrix" in blob and b"numpy._core.multiarray\n_reconstruct" in blob
    old = blob.replace(b"scipy.sparse._csc\n", b"scipy.sparse.csc\n")
    old = old.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    out = load_restricted_pickle(old)
    assert np.array_equal(out["J"].toarray(), np.eye(3)) and np.array_equal(out["a"], np.arange(4.0))


@pytest.mark.parametrize("protocol", [0, 2])
def test_own_chumpy_pickle_loads_through_stand_in(tmp_path: Path, protocol: int) -> None:
    """Pickle a fake ``chumpy.ch.Ch`` (registered only while dumping) and load it with chumpy gone."""

    class Ch:
        pass

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    pkg, mod = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")
    mod.Ch = Ch
    data = _flame_dict()
    ch = Ch()
    ch.__dict__.update(x=data["shapedirs"], label="shapedirs")
    saved = {k: sys.modules.get(k) for k in ("chumpy", "chumpy.ch")}
    sys.modules.update({"chumpy": pkg, "chumpy.ch": mod})
    try:
        blob = pickle.dumps({**data, "shapedirs": ch}, protocol=protocol)
    finally:
        for k, v in saved.items():
            sys.modules.pop(k) if v is None else sys.modules.__setitem__(k, v)
    assert b"chumpy.ch" in blob and "chumpy" not in sys.modules
    path = tmp_path / "model.pkl"
    path.write_bytes(blob)
    model = load_flame_model(path, n_shape=5, n_expression=4)
    assert np.array_equal(model.shapedirs[:, :, :5], data["shapedirs"][:, :, :5])
    assert np.array_equal(model.shapedirs[:, :, 5:], data["shapedirs"][:, :, 300:304])


class _Evil:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _malicious_cases(marker: Path) -> list[tuple[str, object]]:
    return [
        ("system", _Evil(os.system, f"echo pwned > {marker}")),
        ("eval", _Evil(eval, f"__import__('pathlib').Path({str(marker)!r}).write_text('pwned')")),
        ("Popen", _Evil(subprocess.Popen, ["touch", str(marker)])),
        ("getattr", _Evil(getattr, str(marker), "upper")),
    ]


@pytest.mark.parametrize("index", range(4))
def test_malicious_pickles_are_refused_before_running(tmp_path: Path, index: int) -> None:
    marker = tmp_path / "pwned.txt"
    refused, evil = _malicious_cases(marker)[index]
    data = _flame_dict()
    data["J"] = evil  # hidden among genuine arrays
    path = _write(tmp_path / "evil.pkl", data)
    with pytest.raises(UnsafePickleError, match=refused) as excinfo:
        load_restricted_pickle(path)
    assert str(path) in str(excinfo.value)
    with pytest.raises(UnsafePickleError, match=refused):
        load_flame_model(path)
    assert not marker.exists()


def test_allowed_globals_cannot_be_misused() -> None:
    bad_base = b"ccopy_reg\n_reconstructor\n(cscipy.sparse\ncsc_matrix\ncnumpy\nndarray\nNtR."
    with pytest.raises(UnsafePickleError, match="_reconstructor"):
        load_restricted_pickle(bad_base)
    bad_cls = b"ccopy_reg\n_reconstructor\n(cnumpy\ndtype\nc__builtin__\nobject\nNtR."
    with pytest.raises(UnsafePickleError, match="_reconstructor"):
        load_restricted_pickle(bad_cls)
    with pytest.raises(UnsafePickleError, match="_codecs.encode"):
        load_restricted_pickle(b"c_codecs\nencode\n(Vabc\nVrot13\ntR.")
    toarray = scipy.sparse.csc_matrix.toarray
    patch_class = b"cscipy.sparse\ncsc_matrix\n(N(dVtoarray\nI1\nstb."  # BUILD (None, {...}) on the class
    with pytest.raises(UnsafePickleError, match="set state on"):
        load_restricted_pickle(patch_class)
    assert scipy.sparse.csc_matrix.toarray is toarray
    swap_f8 = b"cnumpy\ndtype\n(Vf8\nI00\nI00\ntR(I3\nV>\nNNNI-1\nI-1\nI0\ntb."  # copy=False, then BUILD
    assert load_restricted_pickle(swap_f8).str == ">f8" and np.dtype("f8").str == "<f8"


# --- forward pass on a synthetic FLAME file ---------------------------------------------------


@pytest.fixture()
def synthetic(tmp_path: Path):
    data = _flame_dict(jaw_free_posedirs=True)
    return data, load_flame_model(_write(tmp_path / "flame.pkl", data), n_shape=8, n_expression=6)


def test_zero_coefficients_give_template_in_project_frame(synthetic) -> None:
    data, model = synthetic
    assert np.allclose(model.vertices(), data["v_template"] * [1, -1, -1], atol=1e-12)
    assert not np.allclose(model.vertices(), data["v_template"])


def test_shape_and_expression_are_linear(synthetic) -> None:
    data, model = synthetic
    ident = np.zeros(model.n_identity)
    ident[3] = 2.0
    expr = np.zeros(model.n_expression)
    expr[1] = -1.5
    expected = (data["v_template"] + 2.0 * data["shapedirs"][:, :, 3] - 1.5 * data["shapedirs"][:, :, 301])
    assert np.allclose(model.vertices(ident, expr), expected * [1, -1, -1], atol=1e-12)


def test_jaw_moves_only_jaw_weighted_vertices(synthetic) -> None:
    data, model = synthetic
    expr = np.zeros(model.n_expression)
    expr[model.expression_names.index("jaw_rx") : model.expression_names.index("jaw_rz") + 1] = [0.3, -0.1, 0.05]
    moved = np.linalg.norm(model.vertices(expression=expr) - model.vertices(), axis=1)
    jaw_weighted = data["weights"][:, 2] > 0
    assert not jaw_weighted[:10].any() and jaw_weighted[10:].all()
    assert np.all(moved[:10] < 1e-12) and np.all(moved[10:] > 1e-6)
    pose = {b: np.zeros(3) for b in POSE_BLOCK}
    pose["jaw"] = np.array([0.3, -0.1, 0.05])
    ref = _reference_lbs(data, np.zeros(8), np.zeros(6), pose)
    assert np.allclose(model.vertices(expression=expr), ref, atol=1e-12)


def test_full_forward_matches_numpy_reference(tmp_path: Path) -> None:
    data = _flame_dict(seed=3)  # posedirs everywhere
    model = load_flame_model(_write(tmp_path / "flame.pkl", data), n_shape=8, n_expression=6)
    ident, expr = _coeffs(model)
    pose = {b: expr[6 + 3 * i : 9 + 3 * i] for i, b in enumerate(POSE_BLOCK)}
    ref = _reference_lbs(data, ident, expr[:6], pose)
    assert np.allclose(model.vertices(ident, expr), ref, atol=1e-12)
    v32 = model.vertices_torch(torch.tensor(ident[None], dtype=torch.float32),
                               torch.tensor(expr[None], dtype=torch.float32))  # fmt: skip
    assert v32.dtype == torch.float32 and np.allclose(v32[0].numpy(), ref, atol=1e-5)


def test_vertex_ids_restrict_output_and_work(synthetic) -> None:
    _, model = synthetic
    ident, expr = _coeffs(model, seed=5)
    batch = (torch.tensor(np.stack([ident, -ident])), torch.tensor(np.stack([expr, 0.5 * expr])))
    full = model.vertices_torch(*batch)
    ids = np.array([17, 3, 29, 3, 0])
    part = model.vertices_torch(*batch, vertex_ids=ids)
    assert part.shape == (2, 5, 3) and torch.allclose(part, full[:, ids], atol=1e-12)
    cached = [k for k in model._torch_cache if k[0] is not None]
    assert cached and model._torch_cache[cached[0]][1].shape[0] == len(ids)  # only gathered rows


def test_gradients_reach_every_coefficient(synthetic) -> None:
    _, model = synthetic
    for scale in (0.0, 1.0):  # zero pose included: Rodrigues must stay differentiable there
        ident, expr = _coeffs(model, seed=7, scale=scale)
        ident_t = torch.tensor(ident[None], requires_grad=True)
        expr_t = torch.tensor(expr[None], requires_grad=True)
        weights = torch.tensor(np.random.default_rng(2).normal(size=(1, NV, 3)))
        (model.vertices_torch(ident_t, expr_t) * weights).sum().backward()
        for grad in (ident_t.grad, expr_t.grad):
            assert torch.isfinite(grad).all() and (grad.abs() > 1e-12).all()


def test_non_standard_column_count_needs_explicit_split(tmp_path: Path) -> None:
    path = _write(tmp_path / "small.pkl", _flame_dict(n_cols=20))
    with pytest.raises(FlameFormatError, match="shape_columns"):
        load_flame_model(path)
    model = load_flame_model(path, n_shape=100, n_expression=100, shape_columns=12)
    assert model.n_identity == 12 and model.n_expression == 8 + 12


# --- embedding and format errors ---------------------------------------------------------------


def test_embedding_npz_round_trip(tmp_path: Path) -> None:
    data = _flame_dict(seed=4)
    rng = np.random.default_rng(9)
    face_idx = rng.integers(0, len(data["f"]), size=7).astype(np.uint32)
    bary = rng.dirichlet(np.ones(3), size=7)
    mp_ids = np.array([1, 33, 263, 61, 291, 152, 10], dtype=np.int64)
    emb = tmp_path / "mediapipe_landmark_embedding.npz"
    np.savez(emb, lmk_face_idx=face_idx, lmk_b_coords=bary, landmark_indices=mp_ids)
    model = load_flame_model(_write(tmp_path / "flame.pkl", data), embedding_path=emb, n_shape=8, n_expression=6)
    ident, expr = _coeffs(model, seed=11)
    lmk = model.landmarks_torch(torch.tensor(ident[None]), torch.tensor(expr[None]))[0].numpy()
    verts = model.vertices(ident, expr)
    tri = data["f"][face_idx].astype(np.int64)
    by_hand = np.einsum("lk,lkd->ld", bary, verts[tri])
    order = np.argsort(mp_ids)  # the embedding sorts rows by mediapipe id
    assert np.array_equal(model.landmark_embedding.landmark_ids, mp_ids[order])
    assert np.allclose(lmk, by_hand[order], atol=1e-12)


def test_missing_embedding_raises_on_use(tmp_path: Path) -> None:
    model = load_flame_model(_write(tmp_path / "flame.pkl", _flame_dict()))
    assert not model.has_landmark_embedding
    with pytest.raises(FlameFormatError, match="mediapipe embedding"):
        _ = model.landmark_embedding


@pytest.mark.parametrize("key", ["posedirs", "v_template", "J_regressor", "kintree_table", "shapedirs"])
def test_missing_key_is_named(tmp_path: Path, key: str) -> None:
    data = _flame_dict()
    del data[key]
    with pytest.raises(FlameFormatError, match=f"missing key '{key}'"):
        load_flame_model(_write(tmp_path / "flame.pkl", data))


def test_wrong_shape_is_named(tmp_path: Path) -> None:
    data = _flame_dict()
    data["weights"] = data["weights"][:, :4]
    with pytest.raises(FlameFormatError, match=r"'weights' has shape \(30, 4\), expected \(30, 5\)"):
        load_flame_model(_write(tmp_path / "flame.pkl", data))
    emb = tmp_path / "emb.npz"
    np.savez(emb, lmk_face_idx=np.zeros(3, np.uint32), lmk_b_coords=np.full((3, 3), 1 / 3))
    with pytest.raises(FlameFormatError, match="landmark_indices"):
        load_flame_model(_write(tmp_path / "ok.pkl", _flame_dict()), embedding_path=emb)
