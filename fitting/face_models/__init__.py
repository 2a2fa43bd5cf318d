"""Morphable face models behind one interface (``base.FaceModel``): built-in, ICT-FaceKit, FLAME.

``base`` is the interface and the mediapipe ``LandmarkEmbedding``; ``linear`` is
``LinearFaceModel``, the one class for every linear model (the built-in model of
``builtin`` with its packaged ``assets/face_model.npz``, ICT-FaceKit from ``ict``,
whose landmark embedding ``ict_embedding`` builds and ``ict_obj`` imports from
ICT's OBJ files); ``flame`` is FLAME (skinned, not linear), read through
``safe_pickle`` because its model file is a pickle.

``load_face_model`` is the one place a configuration (CLI flags, the Dagster
resource) turns into a model, so every step of a run uses the same one. Model
modules are imported on demand; torch only when a model runs its forward pass.
"""

from __future__ import annotations

import os

from fitting.face_models.base import FaceModel

FACE_MODEL_KINDS = ("builtin", "ict", "flame")


def load_face_model(kind: str = "builtin", path: str | os.PathLike[str] | None = None,
                    embedding: str | os.PathLike[str] | None = None) -> FaceModel:
    """``builtin``; ``ict`` with ``path`` = the folder of packaged ICT-FaceKit npz files;
    ``flame`` with ``path`` = the model pickle and ``embedding`` = its mediapipe embedding npz."""
    if kind == "builtin":
        from fitting.face_models.builtin import builtin_face_model

        return builtin_face_model()
    if kind not in FACE_MODEL_KINDS:
        raise ValueError(f"unknown face model {kind!r}; expected one of {', '.join(FACE_MODEL_KINDS)}")
    if not path:
        what = "the folder holding the ICT-FaceKit npz files" if kind == "ict" else "the FLAME model .pkl"
        raise ValueError(f"face model {kind!r} needs a path: {what} (CLI --model-path, env O2A_FACE_MODEL_PATH)")
    if kind == "ict":
        from fitting.face_models.ict import load_ict_model

        return load_ict_model(path)
    from fitting.face_models.flame import load_flame_model

    return load_flame_model(path, embedding_path=embedding)

