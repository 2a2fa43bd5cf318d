"""Linear morphable models: ``template + identity_basis . identity + expression_basis . expression``.

One class serves every linear model the project has: the built-in model
(``builtin``; its vertices are mediapipe's 478 landmarks), ICT-FaceKit (``ict``)
and the simulator's off-span ground truth. The torch forward pass
(``vertices_torch``) is what the fitter optimises; ``vertices`` is the same sum in
float64 numpy (no torch), for the simulator, renderers and reports.

What a model may carry beyond the ``FaceModel`` interface, all optional: ``uv``
texture coordinates, ``face_labels`` (``SKIN``, ``EYE_FILL``, ``MOUTH_FILL`` per
triangle), a left/right ``mirror`` vertex map and ``expression_presets`` (the 13
capture expressions as weights of named expression components). The built-in
model has all four.

``dtype`` is the precision the template and bases are stored in: float32 by
default (what the fitter optimises in; halves ICT's memory), float64 to keep a
float64 source exact (the simulator draws the built-in model in float64).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from fitting.face_models.base import FaceModel, LandmarkEmbedding

#: Labels of ``LinearFaceModel.face_labels``: skin, eye fill (textured), mouth interior (dark).
SKIN, EYE_FILL, MOUTH_FILL = 0, 1, 2


class LinearFaceModel(FaceModel):
    """``template + identity_basis . identity + expression_basis . expression`` (ICT, the built-in model).

    ``faces`` are triangles (int64) oriented with outward normals; ``face_labels``
    (optional) marks which are skin, eye fill or mouth interior, and ``mirror``
    (optional) maps each vertex to its left/right mirror image (for mirrored
    detection and symmetry). ``uv`` (optional) is in [0, 1] of a texture, origin
    top-left. ``expression_presets`` (optional) maps a preset name to weights of
    named expression components (see ``expression_preset``).
    """

    def __init__(
        self,
        name: str,
        template: np.ndarray,
        faces: np.ndarray,
        identity_basis: np.ndarray,
        expression_basis: np.ndarray,
        identity_names: tuple[str, ...],
        expression_names: tuple[str, ...],
        landmark_embedding: LandmarkEmbedding,
        *,
        uv: np.ndarray | None = None,
        face_labels: np.ndarray | None = None,
        mirror: np.ndarray | None = None,
        expression_presets: Mapping[str, Mapping[str, float]] | None = None,
        dtype: np.dtype | type = np.float32,
    ) -> None:
        n = template.shape[0]
        if template.shape != (n, 3):
            raise ValueError("template must be (N, 3)")
        if identity_basis.shape[1:] != (n, 3) or expression_basis.shape[1:] != (n, 3):
            raise ValueError("bases must be (K, N, 3) on the template's vertices")
        if len(identity_names) != len(identity_basis) or len(expression_names) != len(expression_basis):
            raise ValueError("one name per basis component")
        faces = np.asarray(faces, dtype=np.int64)
        if faces.ndim != 2 or faces.shape[1] != 3 or faces.min() < 0 or faces.max() >= n:
            raise ValueError("faces must be (F, 3) vertex indices")
        if landmark_embedding.triangles.max() >= n:
            raise ValueError("landmark embedding refers to vertices the model does not have")
        if uv is not None and uv.shape != (n, 2):
            raise ValueError("uv must be (N, 2) like the template")
        if face_labels is not None and face_labels.shape != (len(faces),):
            raise ValueError("face_labels must hold one label per face")
        if mirror is not None and mirror.shape != (n,):
            raise ValueError("mirror must map each of the template's N vertices")
        presets = None
        if expression_presets is not None:
            presets = {k: dict(v) for k, v in expression_presets.items()}
            unknown = sorted({c for weights in presets.values() for c in weights} - set(expression_names))
            if unknown:
                raise ValueError(f"expression presets use components the model does not have: {', '.join(unknown)}")
        self.name = name
        self.template = np.asarray(template, dtype=dtype)
        self.faces = faces
        self.identity_basis = np.asarray(identity_basis, dtype=dtype)
        self.expression_basis = np.asarray(expression_basis, dtype=dtype)
        self.identity_names = tuple(identity_names)
        self.expression_names = tuple(expression_names)
        self.landmark_embedding = landmark_embedding
        self.uv = uv
        self.face_labels = face_labels
        self.mirror = mirror
        self.expression_presets = presets
        self._torch_cache: dict = {}

    @property
    def n_vertices(self) -> int:
        return self.template.shape[0]

    @property
    def skin_faces(self) -> np.ndarray:
        """Triangles of the skin surface only (no eye or mouth fill)."""
        if self.face_labels is None:
            return self.faces
        return self.faces[self.face_labels == SKIN]

    def vertices(
        self,
        identity: np.ndarray | None = None,
        expression: np.ndarray | None = None,
        rotation: np.ndarray | None = None,
        translation: np.ndarray | None = None,
    ) -> np.ndarray:
        """Vertices (N, 3) as float64 numpy: the linear model, then ``X @ rotation.T + translation``."""
        verts = self.template.astype(np.float64, copy=True)
        if identity is not None:
            verts += np.tensordot(self._coeffs(identity, self.n_identity, "identity"), self.identity_basis, axes=1)
        if expression is not None:
            coeffs = self._coeffs(expression, self.n_expression, "expression")
            verts += np.tensordot(coeffs, self.expression_basis, axes=1)
        if rotation is not None:
            verts = verts @ np.asarray(rotation, dtype=np.float64).reshape(3, 3).T
        if translation is not None:
            verts = verts + np.asarray(translation, dtype=np.float64).reshape(3)
        return verts

    def expression_preset(self, name: str) -> np.ndarray:
        """Expression coefficients for a named preset (the built-in model's: the 13 capture expressions)."""
        if self.expression_presets is None:
            raise ValueError(f"face model {self.name!r} has no expression presets")
        if name not in self.expression_presets:
            raise ValueError(f"unknown expression {name!r}; expected one of {', '.join(self.expression_presets)}")
        coeffs = np.zeros(self.n_expression)
        for component, weight in self.expression_presets[name].items():
            coeffs[self.expression_names.index(component)] = weight
        return coeffs

    @staticmethod
    def _coeffs(values: np.ndarray, n: int, what: str) -> np.ndarray:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
        if arr.shape != (n,):
            raise ValueError(f"{what} coefficients must have {n} values, got {arr.shape[0]}")
        return arr

    def _tensors(self, vertex_ids: np.ndarray | None, dtype, device):
        key = (None if vertex_ids is None else vertex_ids.tobytes(), dtype, str(device))
        if key not in self._torch_cache:
            import torch

            def tensor(a: np.ndarray):
                # a tensor must not share a read-only array (a float64 model shares the cached asset)
                a = np.ascontiguousarray(a)
                return torch.as_tensor(a if a.flags.writeable else a.copy(), dtype=dtype, device=device)

            sel = slice(None) if vertex_ids is None else np.asarray(vertex_ids)
            self._torch_cache[key] = tuple(
                tensor(a) for a in (self.template[sel], self.identity_basis[:, sel], self.expression_basis[:, sel])
            )
        return self._torch_cache[key]

    def vertices_torch(self, identity, expression, vertex_ids: np.ndarray | None = None):
        import torch

        template, id_basis, ex_basis = self._tensors(vertex_ids, identity.dtype, identity.device)
        return (
            template
            + torch.einsum("bk,knd->bnd", identity, id_basis)
            + torch.einsum("bk,knd->bnd", expression, ex_basis)
        )
