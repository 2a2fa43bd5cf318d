"""The project's built-in morphable face model, on mediapipe's 478-landmark topology.

This is a *simple linear model*, not a learned one: the template is mediapipe
FaceMesh's reconstruction of one photograph (scikit-image's ``astronaut``), and the
identity and expression bases are hand-designed, smooth displacement fields on
landmark regions (see ``fitting.face_model_modes``). It exists so the simulator,
the fitter and the tests share one model whose vertices *are* the landmarks that
mediapipe detects, with no licensed asset and no download. A learned model (e.g.
FLAME, ICT-FaceKit) can replace it behind the same ``MorphableModel`` fields.

Coordinates: metres, OpenCV-like world axes (x towards the subject's left, y down,
z away from the frontal cameras: the face looks towards -z), template centroid at
the origin. ``vertices`` = template + identity + expression, then a rigid pose.
Expression components carry ARKit-like names (``jaw_open``, ``eye_close_left``;
``left`` is always the subject's left) and ``expression_preset`` maps the 13
capture expressions onto them. The template's mouth is closed and its eyes open.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

from capture_schema.layout import DEFAULT_EXPRESSIONS
from fitting.face_models.base import LandmarkEmbedding, LinearFaceModel

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

#: Labels of ``MorphableModel.face_labels``: skin, eye fill (textured), mouth interior (dark).
SKIN, EYE_FILL, MOUTH_FILL = 0, 1, 2

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


@dataclass(frozen=True, eq=False)
class MorphableModel:
    """A linear face model: ``template + B_id @ identity + B_expr @ expression``.

    ``faces`` are triangles oriented with outward normals; ``face_labels`` (optional)
    marks which are skin, eye fill or mouth interior, and ``mirror`` (optional) maps
    each vertex to its left/right mirror image (for mirrored detection and symmetry).
    """

    template: np.ndarray  # (478, 3) metres
    faces: np.ndarray  # (F, 3) int32
    uv: np.ndarray  # (478, 2) in [0, 1] of the texture, origin top-left
    identity_basis: np.ndarray  # (n_id, 478, 3) metres per unit coefficient
    expression_basis: np.ndarray  # (n_expr, 478, 3)
    identity_names: tuple[str, ...]
    expression_names: tuple[str, ...]
    face_labels: np.ndarray | None = None  # (F,) int8: SKIN, EYE_FILL, MOUTH_FILL
    mirror: np.ndarray | None = None  # (478,) int

    def __post_init__(self) -> None:
        n = self.template.shape[0]
        if self.template.shape != (n, 3) or self.uv.shape != (n, 2):
            raise ValueError("template must be (N, 3) and uv (N, 2)")
        if self.identity_basis.shape[1:] != (n, 3) or self.expression_basis.shape[1:] != (n, 3):
            raise ValueError("bases must be (K, N, 3) on the template's vertices")
        if len(self.identity_names) != len(self.identity_basis):
            raise ValueError("one identity name per identity component")
        if len(self.expression_names) != len(self.expression_basis):
            raise ValueError("one expression name per expression component")
        if self.faces.ndim != 2 or self.faces.shape[1] != 3 or self.faces.min() < 0 or self.faces.max() >= n:
            raise ValueError("faces must be (F, 3) vertex indices")

    @property
    def n_identity(self) -> int:
        return len(self.identity_names)

    @property
    def n_expression(self) -> int:
        return len(self.expression_names)

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
        """Vertices (N, 3): the linear model, then ``X @ rotation.T + translation``."""
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
        """Expression coefficients for one of the 13 capture expressions."""
        if name not in _PRESETS:
            raise ValueError(f"unknown expression {name!r}; expected one of {', '.join(DEFAULT_EXPRESSIONS)}")
        coeffs = np.zeros(self.n_expression)
        for component, weight in _PRESETS[name].items():
            coeffs[self.expression_names.index(component)] = weight
        return coeffs

    @staticmethod
    def _coeffs(values: np.ndarray, n: int, what: str) -> np.ndarray:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
        if arr.shape != (n,):
            raise ValueError(f"{what} coefficients must have {n} values, got {arr.shape[0]}")
        return arr


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


def load_default_model() -> MorphableModel:
    """The packaged model (``fitting/face_models/assets/face_model.npz``, built by ``build_face_model``)."""
    a = _asset()
    return MorphableModel(
        template=a["template"],
        faces=a["faces"],
        uv=a["uv"],
        identity_basis=a["identity_basis"],
        expression_basis=a["expression_basis"],
        identity_names=tuple(str(s) for s in a["identity_names"]),
        expression_names=tuple(str(s) for s in a["expression_names"]),
        face_labels=a["face_labels"],
        mirror=a["mirror"],
    )


def load_default_texture() -> np.ndarray:
    """The model's texture, uint8 (H, W, 3) RGB: the face crop of the astronaut photo."""
    return _asset()["texture"]


@lru_cache(maxsize=1)
def builtin_face_model() -> LinearFaceModel:
    """The packaged model (``fitting/face_models/assets/face_model.npz``) as a ``LinearFaceModel``."""
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
