"""One interface for every morphable face model the pipeline can fit.

A model maps identity coefficients and expression coefficients to vertices in
its own canonical frame (metres, OpenCV-like axes: x towards the subject's left,
y down, the face looking towards -z); the head pose is a rigid transform applied
on top by the caller, so every model shares one pose convention. Each model also
says where mediapipe's 478 landmarks sit on its surface (``LandmarkEmbedding``),
which is all the multi-view fitter needs to compare it with detections.

The forward pass is torch (batched, differentiable) because fitting optimises it;
``vertices`` is the numpy convenience for everything else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

N_MEDIAPIPE_LANDMARKS = 478


@dataclass(frozen=True, eq=False)
class LandmarkEmbedding:
    """Where mediapipe landmarks lie on a mesh: a triangle and barycentric weights each.

    ``landmark_ids[i]`` is the mediapipe id (0..477) of row ``i``; a model need not
    embed all 478 (FLAME's published embedding covers 105). A landmark that *is* a
    vertex is the triangle ``(v, v, v)`` with weights ``(1, 0, 0)``.
    """

    landmark_ids: np.ndarray  # (L,) int64, unique, sorted
    triangles: np.ndarray  # (L, 3) int64 vertex indices
    barycentric: np.ndarray  # (L, 3) float64, rows sum to 1

    def __post_init__(self) -> None:
        ids = np.asarray(self.landmark_ids, dtype=np.int64).reshape(-1)
        tri = np.asarray(self.triangles, dtype=np.int64)
        bary = np.asarray(self.barycentric, dtype=np.float64)
        if tri.shape != (len(ids), 3) or bary.shape != (len(ids), 3):
            raise ValueError("triangles and barycentric must be (L, 3) for L landmark ids")
        if len(ids) == 0 or ids.min() < 0 or ids.max() >= N_MEDIAPIPE_LANDMARKS or len(np.unique(ids)) != len(ids):
            raise ValueError(f"landmark ids must be unique mediapipe ids in 0..{N_MEDIAPIPE_LANDMARKS - 1}")
        if not np.allclose(bary.sum(axis=1), 1.0, atol=1e-4):
            raise ValueError("barycentric weights must sum to 1 per landmark")
        order = np.argsort(ids)
        object.__setattr__(self, "landmark_ids", ids[order])
        object.__setattr__(self, "triangles", tri[order])
        object.__setattr__(self, "barycentric", bary[order])

    @classmethod
    def identity(cls, n: int = N_MEDIAPIPE_LANDMARKS) -> "LandmarkEmbedding":
        """Landmark ``i`` is vertex ``i`` (the built-in model's topology)."""
        ids = np.arange(n)
        return cls(ids, np.repeat(ids[:, None], 3, axis=1), np.tile([1.0, 0.0, 0.0], (n, 1)))

    @property
    def vertex_ids(self) -> np.ndarray:
        """The vertices the landmarks depend on (sorted, unique)."""
        return np.unique(self.triangles)

    def points(self, vertices):
        """Landmark positions ``(..., L, 3)`` from vertices ``(..., N, 3)`` (numpy or torch)."""
        v = vertices[..., self.triangles.reshape(-1), :]
        v = v.reshape(*vertices.shape[:-2], len(self.landmark_ids), 3, 3)
        if isinstance(vertices, np.ndarray):
            return np.einsum("...lkd,lk->...ld", v, self.barycentric)
        import torch

        w = torch.as_tensor(self.barycentric, dtype=vertices.dtype, device=vertices.device)
        return torch.einsum("...lkd,lk->...ld", v, w)

    def restricted_to(self, vertex_ids: np.ndarray) -> "LandmarkEmbedding":
        """The same embedding with triangles re-indexed into ``vertices[vertex_ids]``."""
        lookup = {int(v): i for i, v in enumerate(vertex_ids)}
        tri = np.vectorize(lookup.__getitem__)(self.triangles)
        return LandmarkEmbedding(self.landmark_ids, tri, self.barycentric)


class FaceModel(ABC):
    """A morphable face model: ``(identity, expression) -> vertices`` plus its mesh and landmarks.

    Coefficients are scaled so that a standard-normal prior on identity and an L2
    prior on expression are sensible; ``expression_names`` name each expression
    coefficient (ARKit-like names where the model has them).
    """

    name: str
    faces: np.ndarray  # (F, 3) int triangles
    identity_names: tuple[str, ...]
    expression_names: tuple[str, ...]
    landmark_embedding: LandmarkEmbedding

    @property
    def n_identity(self) -> int:
        return len(self.identity_names)

    @property
    def n_expression(self) -> int:
        return len(self.expression_names)

    @property
    @abstractmethod
    def n_vertices(self) -> int: ...

    @abstractmethod
    def vertices_torch(self, identity, expression, vertex_ids: np.ndarray | None = None):
        """Vertices ``(B, N', 3)`` in the model frame for coefficient batches ``(B, n_id)``
        and ``(B, n_expr)`` (torch tensors); ``vertex_ids`` restricts the output (and,
        where the model allows, the work) to those vertices."""

    def landmarks_torch(self, identity, expression):
        """Embedded mediapipe landmarks ``(B, L, 3)`` in the model frame."""
        cached = self.__dict__.get("_restricted_embedding")
        if cached is None or cached[0] is not self.landmark_embedding:
            ids = self.landmark_embedding.vertex_ids
            cached = (self.landmark_embedding, ids, self.landmark_embedding.restricted_to(ids))
            self.__dict__["_restricted_embedding"] = cached
        _, ids, embedding = cached
        return embedding.points(self.vertices_torch(identity, expression, vertex_ids=ids))

    def vertices(
        self,
        identity: np.ndarray | None = None,
        expression: np.ndarray | None = None,
        rotation: np.ndarray | None = None,
        translation: np.ndarray | None = None,
    ) -> np.ndarray:
        """Vertices (N, 3) as float64 numpy: the model, then ``X @ rotation.T + translation``."""
        import torch

        ident = np.zeros(self.n_identity) if identity is None else np.asarray(identity, dtype=np.float64)
        expr = np.zeros(self.n_expression) if expression is None else np.asarray(expression, dtype=np.float64)
        if ident.shape != (self.n_identity,):
            raise ValueError(f"identity coefficients must have {self.n_identity} values, got {ident.size}")
        if expr.shape != (self.n_expression,):
            raise ValueError(f"expression coefficients must have {self.n_expression} values, got {expr.size}")
        with torch.no_grad():
            verts = self.vertices_torch(torch.from_numpy(ident)[None], torch.from_numpy(expr)[None])[0]
        out = verts.double().numpy()
        if rotation is not None:
            out = out @ np.asarray(rotation, dtype=np.float64).reshape(3, 3).T
        if translation is not None:
            out = out + np.asarray(translation, dtype=np.float64).reshape(3)
        return out
