"""The project's built-in morphable face model, on mediapipe's 478-landmark topology.

This is a *simple linear model*, not a learned one: the template is mediapipe
FaceMesh's reconstruction of one photograph (scikit-image's ``astronaut``), and the
identity and expression bases are hand-designed, smooth displacement fields on
landmark regions (built offline by ``tools.build_face_model`` with the modes of
``tools.face_model_modes``). It exists so the simulator, the fitter and the tests
share one model whose vertices *are* the landmarks that mediapipe detects, with no
licensed asset and no download. A learned model (e.g. FLAME, ICT-FaceKit) can
replace it behind the ``FaceModel`` interface.

``builtin_face_model()`` is the model, a ``LinearFaceModel``; this module also
names mediapipe's landmark regions (eye, lip and brow contours, irises, the face
oval), which the fitter, the simulator and the gates use by id.

Coordinates: metres, OpenCV-like world axes (x towards the subject's left, y down,
z away from the frontal cameras: the face looks towards -z), template centroid at
the origin. ``vertices`` = template + identity + expression, then a rigid pose.
Expression components carry ARKit-like names (``jaw_open``, ``eye_close_left``;
``left`` is always the subject's left) and ``expression_preset`` maps the 13
capture expressions onto them. The template's mouth is closed and its eyes open.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np

from capture_schema.layout import DEFAULT_EXPRESSIONS
from fitting.face_models.base import LandmarkEmbedding
from fitting.face_models.linear import LinearFaceModel

N_VERTICES = 478
ASSET = "assets/face_model.npz"

# Landmark regions of mediapipe's face mesh ("left" = the subject's left, +x).
# Eye and lip contours run corner to corner; upper[i] and lower[i] face each other.
RIGHT_EYE_UPPER = (33, 246, 161, 160, 159, 158, 157, 173, 133)
RIGHT_EYE_LOWER = (33, 7, 163, 144, 145, 153, 154, 155, 133)
LEFT_EYE_UPPER = (263, 466, 388, 387, 386, 385, 384, 398, 362)
LEFT_EYE_LOWER = (263, 249, 390, 373, 374, 380, 381, 382, 362)
RIGHT_IRIS = (468, 469, 470, 471, 472)  # centre first
LEFT_IRIS = (473, 474, 475, 476, 477)
RIGHT_BROW = (46, 53, 52, 65, 55, 70, 63, 105, 66, 107)
LEFT_BROW = (276, 283, 282, 295, 285, 300, 293, 334, 296, 336)
LIPS_UPPER_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LIPS_LOWER_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
LIPS_UPPER_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LIPS_LOWER_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
#: Closed loop around the face, clockwise in the image from the forehead (10).
FACE_OVAL = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)
OUTER_EYE_CORNERS = (33, 263)

#: Expression presets as weights of named expression components.
_PRESETS: dict[str, dict[str, float]] = {
    "neutral": {},
    "smile": {"mouth_corner_up_left": 1.0, "mouth_corner_up_right": 1.0, "cheek_raise_left": 0.6,
              "cheek_raise_right": 0.6},
    "mouth_open": {"jaw_open": 1.0},
    "surprise": {"jaw_open": 0.7, "brow_raise_left": 1.0, "brow_raise_right": 1.0,
                 "eye_wide_left": 1.0, "eye_wide_right": 1.0},
    "brows_raised": {"brow_raise_left": 1.0, "brow_raise_right": 1.0},
    "brows_lowered": {"brow_lower_left": 1.0, "brow_lower_right": 1.0},
    "eyes_closed": {"eye_close_left": 1.0, "eye_close_right": 1.0},
    "wink_left": {"eye_close_left": 1.0, "cheek_raise_left": 0.3, "mouth_corner_up_left": 0.3},
    "pucker": {"lip_pucker": 1.0},
    "jaw_left": {"jaw_left": 1.0},
    "jaw_right": {"jaw_right": 1.0},
    "cheeks_puffed": {"cheek_puff": 1.0},
    "disgust": {"nose_wrinkle": 1.0, "upper_lip_raise_left": 1.0, "upper_lip_raise_right": 1.0,
                "brow_lower_left": 0.5, "brow_lower_right": 0.5, "mouth_corner_down_left": 0.4,
                "mouth_corner_down_right": 0.4},
}
assert tuple(_PRESETS) == DEFAULT_EXPRESSIONS


def _read_asset() -> dict[str, np.ndarray]:
    with resources.files("fitting.face_models").joinpath(ASSET).open("rb") as fh:
        with np.load(fh, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}


@lru_cache(maxsize=1)
def _asset() -> dict[str, np.ndarray]:
    arrays = _read_asset()
    for arr in arrays.values():
        arr.flags.writeable = False
    return arrays


def builtin_face_model(dtype: np.dtype | type = np.float32) -> LinearFaceModel:
    """The packaged model (``fitting/face_models/assets/face_model.npz``, built by
    ``tools.build_face_model``), named ``builtin``, with its uv, face labels, mirror
    map and the 13 capture expressions as presets.

    ``dtype`` is the precision of its template and bases: float32 (default) is the
    fitter's; float64 is the asset's own, for code that must reproduce it exactly
    (the simulator, the ICT embedding). One instance per precision is shared.
    """
    return _builtin_face_model(np.dtype(dtype))


@lru_cache(maxsize=2)
def _builtin_face_model(dtype: np.dtype) -> LinearFaceModel:
    a = _asset()
    return LinearFaceModel(
        name="builtin",
        template=a["template"],
        faces=a["faces"],
        identity_basis=a["identity_basis"],
        expression_basis=a["expression_basis"],
        identity_names=tuple(str(s) for s in a["identity_names"]),
        expression_names=tuple(str(s) for s in a["expression_names"]),
        landmark_embedding=LandmarkEmbedding.identity(a["template"].shape[0]),
        uv=a["uv"],
        face_labels=a["face_labels"],
        mirror=a["mirror"],
        expression_presets=_PRESETS,
        dtype=dtype,
    )


def builtin_texture() -> np.ndarray:
    """The built-in model's texture, uint8 (H, W, 3) RGB: the face crop of the astronaut photo."""
    return _asset()["texture"]
