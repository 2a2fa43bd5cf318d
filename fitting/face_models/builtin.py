"""The built-in face model behind the ``FaceModel`` interface.

Its vertices are mediapipe's 478 landmarks, so its landmark embedding is the
identity map and nothing needs licensing or downloading.
"""

from __future__ import annotations

from functools import lru_cache

from fitting.face_models.base import LandmarkEmbedding, LinearFaceModel
from fitting.morphable_model import load_default_model


@lru_cache(maxsize=1)
def builtin_face_model() -> LinearFaceModel:
    """The packaged model (``fitting/assets/face_model.npz``) as a ``LinearFaceModel``."""
    m = load_default_model()
    return LinearFaceModel(
        name="builtin",
        template=m.template,
        faces=m.faces,
        identity_basis=m.identity_basis,
        expression_basis=m.expression_basis,
        identity_names=m.identity_names,
        expression_names=m.expression_names,
        landmark_embedding=LandmarkEmbedding.identity(m.template.shape[0]),
    )
