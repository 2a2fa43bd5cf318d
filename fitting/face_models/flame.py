"""FLAME behind the ``FaceModel`` interface, loaded from the user's own model file.

FLAME cannot be shipped (download from MPI), so this module only reads a
``generic_model.pkl`` / ``flame2023*.pkl`` the user supplies, through the
restricted unpickler (a model pickle is otherwise arbitrary code), and a
mediapipe landmark embedding ``.npz`` so the fitter can compare it with
detections.

Coefficients: identity = shape betas; expression = expression psi followed by
12 pose values (jaw, neck, left eye, right eye axis-angles, in FLAME's own axes
and joint order conventions so values transfer to and from other FLAME tools).
The root rotation is fixed to identity because the caller applies the head pose.
Output is converted from FLAME's frame (metres, y up, looking towards +z) to the
project frame (y down, looking towards -z) by a 180-degree rotation about x.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import scipy.sparse

from fitting.face_models.base import FaceModel, LandmarkEmbedding
from fitting.face_models.safe_pickle import ChumpyStandIn, load_restricted_pickle

__all__ = ["FlameFormatError", "FlameModel", "load_flame_model", "load_mediapipe_embedding"]

FLAME_SHAPE_COLUMNS = 300  # published FLAME shapedirs: 300 shape + 100 expression columns
FLAME_PARENTS = (-1, 0, 1, 1, 1)  # root, neck, jaw, left eye, right eye
POSE_JOINTS = {"jaw": 2, "neck": 1, "eye_left": 3, "eye_right": 4}  # order of the 12 pose coefficients
POSE_NAMES = tuple(f"{part}_r{axis}" for part in POSE_JOINTS for axis in "xyz")
_TO_PROJECT = np.array([1.0, -1.0, -1.0])  # rotation by 180 degrees about x: (x, y, z) -> (x, -y, -z)


class FlameFormatError(ValueError):
    """A FLAME model or embedding file lacks a key or has an unexpected shape."""


def _array(value: Any, key: str, source: str) -> np.ndarray:
    """ndarray from an ndarray, a chumpy stand-in or a scipy sparse matrix."""
    if isinstance(value, ChumpyStandIn):
        try:
            return np.asarray(value.x)
        except ValueError as exc:
            raise FlameFormatError(f"{source}: '{key}' is a chumpy object without a stored value") from exc
    if scipy.sparse.issparse(value):
        return np.asarray(value.toarray())
    if isinstance(value, np.ndarray):
        return value
    raise FlameFormatError(f"{source}: '{key}' should be an array, got {type(value).__name__}")


def _require(data: dict, key: str, expected: str, ndim: int, source: str, check=lambda a: True) -> np.ndarray:
    if key not in data:
        raise FlameFormatError(f"{source}: missing key '{key}' (expected shape {expected})")
    arr = _array(data[key], key, source)
    if arr.ndim != ndim or not check(arr):
        raise FlameFormatError(f"{source}: '{key}' has shape {arr.shape}, expected {expected}")
    return arr


def _read_npz(path: str | os.PathLike, source: str) -> dict[str, np.ndarray]:
    """Every array of an ``.npz``; an empty, truncated or non-npz file raises ``FlameFormatError``."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except OSError as exc:
        if not os.path.isfile(path):  # missing or unreadable: the caller reports the OSError
            raise
        raise FlameFormatError(f"{source}: cannot read as an npz file ({exc})") from None
    except Exception as exc:  # empty file, garbage bytes, a bad zip, pickled objects
        raise FlameFormatError(f"{source}: cannot read as an npz file ({type(exc).__name__}: {exc})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise FlameFormatError(f"{source}: expected an .npz archive of arrays, found a single .npy array")
    try:
        with loaded as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as exc:  # a truncated member, a member holding pickled objects
        raise FlameFormatError(f"{source}: cannot read as an npz file ({type(exc).__name__}: {exc})") from None


def load_mediapipe_embedding(path: str | os.PathLike, faces: np.ndarray) -> LandmarkEmbedding:
    """Read a mediapipe embedding ``.npz`` (``lmk_face_idx``, ``lmk_b_coords``, ``landmark_indices``)."""
    source = os.fspath(path)
    faces = np.asarray(faces, dtype=np.int64)
    data = _read_npz(path, source)
    face_idx = _require(data, "lmk_face_idx", "(L,)", 1, source)
    n = len(face_idx)
    bary = _require(data, "lmk_b_coords", f"({n}, 3)", 2, source, lambda a: a.shape == (n, 3))
    ids = _require(data, "landmark_indices", f"({n},)", 1, source, lambda a: a.shape == (n,))
    try:
        face_idx = face_idx.astype(np.int64)
        if n and (face_idx.min() < 0 or face_idx.max() >= len(faces)):
            raise FlameFormatError(f"{source}: 'lmk_face_idx' refers to triangles outside the model's {len(faces)}")
        return LandmarkEmbedding(ids.astype(np.int64), faces[face_idx], bary.astype(np.float64))
    except FlameFormatError:
        raise
    except (ValueError, TypeError, IndexError) as exc:  # e.g. text where numbers belong
        raise FlameFormatError(f"{source}: invalid mediapipe embedding: {exc}") from exc


def load_flame_model(
    model_path: str | os.PathLike,
    embedding_path: str | os.PathLike | None = None,
    n_shape: int = 100,
    n_expression: int = 50,
    name: str = "flame",
    shape_columns: int | None = None,
) -> "FlameModel":
    """Load a FLAME pickle (chumpy or plain) and optionally its mediapipe embedding.

    ``n_shape`` / ``n_expression`` are clamped to what the file holds. ``shapedirs``
    columns ``[:shape_columns]`` are shape and the rest expression; ``shape_columns``
    defaults to 300, FLAME's published layout, and must be given for a file with
    fewer than 400 columns, because such a split cannot be inferred reliably.
    """
    if n_shape < 0 or n_expression < 0:
        raise ValueError("n_shape and n_expression must be non-negative")
    source = os.fspath(model_path)
    data = load_restricted_pickle(model_path)  # PickleFormatError / UnsafePickleError name the file
    if not isinstance(data, dict):
        raise FlameFormatError(f"{source}: expected a pickled dict, got {type(data).__name__}")
    try:
        return _flame_from_dict(data, source, embedding_path, n_shape, n_expression, name, shape_columns)
    except FlameFormatError:
        raise
    except (ValueError, TypeError, IndexError, AttributeError) as exc:  # odd dtypes or values in a foreign file
        raise FlameFormatError(f"{source}: not a usable FLAME model ({type(exc).__name__}: {exc})") from None


def _flame_from_dict(data: dict, source: str, embedding_path: str | os.PathLike | None, n_shape: int,
                     n_expression: int, name: str, shape_columns: int | None) -> "FlameModel":
    v_template = _require(data, "v_template", "(N, 3)", 2, source, lambda a: a.shape[1] == 3)
    n = len(v_template)
    faces = _require(data, "f", "(F, 3)", 2, source, lambda a: a.shape[1] == 3).astype(np.int64)
    if faces.size and (faces.min() < 0 or faces.max() >= n):
        raise FlameFormatError(f"{source}: 'f' refers to vertices outside 0..{n - 1}")
    shapedirs = _require(data, "shapedirs", f"({n}, 3, K)", 3, source, lambda a: a.shape[:2] == (n, 3))
    posedirs = _require(data, "posedirs", f"({n}, 3, 36)", 3, source, lambda a: a.shape == (n, 3, 36))
    weights = _require(data, "weights", f"({n}, 5)", 2, source, lambda a: a.shape == (n, 5))
    j_regressor = _require(data, "J_regressor", f"(5, {n})", 2, source, lambda a: a.shape == (5, n))
    kintree = _require(data, "kintree_table", "(2, 5)", 2, source, lambda a: a.shape == (2, 5))
    parents = kintree[0].astype(np.int64)
    parents[parents == 4294967295] = -1  # uint32(-1) marks the root in FLAME files
    if tuple(parents) != FLAME_PARENTS:
        raise FlameFormatError(f"{source}: 'kintree_table' parents {tuple(parents)}, expected {FLAME_PARENTS}")

    total = shapedirs.shape[2]
    if shape_columns is None:
        if total < FLAME_SHAPE_COLUMNS + 100:
            raise FlameFormatError(
                f"{source}: 'shapedirs' has {total} columns, fewer than FLAME's 300 shape + 100 expression; "
                "pass shape_columns to say where expression starts"
            )
        shape_columns = FLAME_SHAPE_COLUMNS
    if not 0 <= shape_columns <= total:
        raise FlameFormatError(f"{source}: shape_columns must be in 0..{total} ('shapedirs' has {total} columns)")
    n_shape = min(n_shape, shape_columns)
    n_expression = min(n_expression, total - shape_columns)
    embedding = None
    if embedding_path is not None:
        embedding = load_mediapipe_embedding(embedding_path, faces)
    return FlameModel(
        name=name,
        v_template=v_template,
        faces=faces,
        shapedirs=np.concatenate(
            [shapedirs[:, :, :n_shape], shapedirs[:, :, shape_columns : shape_columns + n_expression]], axis=2
        ),
        n_shape=n_shape,
        posedirs=posedirs,
        weights=weights,
        j_regressor=j_regressor,
        landmark_embedding=embedding,
    )


class FlameModel(FaceModel):
    """FLAME with shape, expression and jaw/neck/eye pose as coefficients (see module docstring)."""

    def __init__(
        self,
        name: str,
        v_template: np.ndarray,
        faces: np.ndarray,
        shapedirs: np.ndarray,
        n_shape: int,
        posedirs: np.ndarray,
        weights: np.ndarray,
        j_regressor: np.ndarray,
        landmark_embedding: LandmarkEmbedding | None = None,
    ) -> None:
        n = v_template.shape[0]
        if shapedirs.shape[:2] != (n, 3) or posedirs.shape != (n, 3, 36) or weights.shape != (n, 5):
            raise FlameFormatError("shapedirs, posedirs and weights must match v_template's vertices")
        if j_regressor.shape != (5, n):
            raise FlameFormatError(f"J_regressor must be (5, {n})")
        if landmark_embedding is not None and landmark_embedding.triangles.max() >= n:
            raise FlameFormatError("landmark embedding refers to vertices the model does not have")
        self.name = name
        self.faces = np.asarray(faces, dtype=np.int64)
        self.v_template = np.asarray(v_template, dtype=np.float64)
        self.shapedirs = np.asarray(shapedirs, dtype=np.float64)  # (N, 3, n_shape + n_expression)
        self.posedirs = np.asarray(posedirs, dtype=np.float64)
        self.weights = np.asarray(weights, dtype=np.float64)
        j_regressor = np.asarray(j_regressor, dtype=np.float64)
        # Joints are linear in the coefficients: precompute them once so restricted
        # evaluations still see joints regressed from every vertex.
        self.joints_template = j_regressor @ self.v_template  # (5, 3)
        self.joints_dirs = np.einsum("jn,ndk->jdk", j_regressor, self.shapedirs)  # (5, 3, K)
        n_expression = self.shapedirs.shape[2] - n_shape
        self.identity_names = tuple(f"shape{i:03d}" for i in range(n_shape))
        self.expression_names = tuple(f"expr{i:03d}" for i in range(n_expression)) + POSE_NAMES
        self._embedding = landmark_embedding
        self._torch_cache: dict = {}

    @property
    def landmark_embedding(self) -> LandmarkEmbedding:
        if self._embedding is None:
            raise FlameFormatError(
                f"FLAME model '{self.name}' has no landmark embedding: load it with a mediapipe embedding "
                "file (embedding_path=..., e.g. mediapipe_landmark_embedding.npz) to fit it to landmarks"
            )
        return self._embedding

    @property
    def has_landmark_embedding(self) -> bool:
        return self._embedding is not None

    @property
    def n_vertices(self) -> int:
        return self.v_template.shape[0]

    def _tensors(self, vertex_ids: np.ndarray | None, dtype, device) -> tuple:
        key = (None if vertex_ids is None else vertex_ids.tobytes(), dtype, str(device))
        if key not in self._torch_cache:
            import torch

            sel = slice(None) if vertex_ids is None else vertex_ids
            arrays = (self.v_template[sel], self.shapedirs[sel], self.posedirs[sel], self.weights[sel],
                      self.joints_template, self.joints_dirs)  # fmt: skip
            self._torch_cache[key] = tuple(
                torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device) for a in arrays
            )
        return self._torch_cache[key]

    def vertices_torch(self, identity, expression, vertex_ids: np.ndarray | None = None):
        """Vertices ``(B, N', 3)`` in the project frame; ``vertex_ids`` restricts blendshapes and skinning."""
        import torch

        from fitting.camera_model import axis_angle_to_matrix

        if identity.ndim != 2 or identity.shape[1] != self.n_identity:
            raise ValueError(f"identity must be (B, {self.n_identity}), got {tuple(identity.shape)}")
        if tuple(expression.shape) != (identity.shape[0], self.n_expression):
            got = tuple(expression.shape)
            raise ValueError(f"expression must be ({identity.shape[0]}, {self.n_expression}), got {got}")
        if vertex_ids is not None:
            vertex_ids = np.asarray(vertex_ids, dtype=np.int64).reshape(-1)
        dtype = identity.dtype if identity.is_floating_point() else torch.float32
        template, shapedirs, posedirs, weights, j_template, j_dirs = self._tensors(vertex_ids, dtype, identity.device)
        identity, expression = identity.to(dtype), expression.to(dtype)
        batch = identity.shape[0]
        coeffs = torch.cat([identity, expression[:, : -len(POSE_NAMES)]], dim=1)
        v_shaped = template + torch.einsum("bk,ndk->bnd", coeffs, shapedirs)
        joints = j_template + torch.einsum("bk,jdk->bjd", coeffs, j_dirs)  # (B, 5, 3)

        pose = expression[:, -len(POSE_NAMES) :].reshape(batch, len(POSE_JOINTS), 3)
        order = list(POSE_JOINTS.values())  # joint index of each 3-value block
        rot_pose = axis_angle_to_matrix(pose)
        eye = torch.eye(3, dtype=dtype, device=identity.device).expand(batch, 3, 3)
        rots = [eye] + [rot_pose[:, order.index(j)] for j in range(1, len(FLAME_PARENTS))]
        pose_feature = torch.stack([r - eye for r in rots[1:]], dim=1).reshape(batch, 36)
        v_posed = v_shaped + torch.einsum("bk,ndk->bnd", pose_feature, posedirs)

        # Kinematic chain: world rotation and translation of each joint, then the
        # skinning transform maps rest-pose points: x -> R_world x + (t_world - R_world J).
        world_r, world_t = [rots[0]], [joints[:, 0]]
        for j in range(1, len(FLAME_PARENTS)):
            p = FLAME_PARENTS[j]
            world_r.append(world_r[p] @ rots[j])
            world_t.append(world_t[p] + (world_r[p] @ (joints[:, j] - joints[:, p])[..., None])[..., 0])
        r_all = torch.stack(world_r, dim=1)  # (B, 5, 3, 3)
        t_all = torch.stack(world_t, dim=1) - (r_all @ joints[..., None])[..., 0]
        r_vert = torch.einsum("nj,bjxy->bnxy", weights, r_all)
        t_vert = torch.einsum("nj,bjx->bnx", weights, t_all)
        verts = torch.einsum("bnxy,bny->bnx", r_vert, v_posed) + t_vert
        return verts * torch.as_tensor(_TO_PROJECT, dtype=dtype, device=identity.device)
