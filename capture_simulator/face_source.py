"""Where a simulated subject's face shape comes from: the built-in model (with or without
shape outside its span) or ICT-FaceKit.

The renderer always draws the built-in 478-vertex topology (mediapipe's mesh, textured
by the astronaut photo through its uv); a face source says where those 478 vertices
*are* (``render_shape``) and which ``FaceModel`` holds the ground truth (``model``).

* ``BuiltinFaceSource``: the built-in model itself; the render shape is its vertices,
  so a fit by the built-in model can be exact (a control, not the default).
* ``IctFaceSource``: ICT-FaceKit drives the positions. The 468 non-iris vertices are
  ICT's embedded mediapipe landmarks (``model.landmark_embedding``), so a detector
  that finds the drawn face finds points on ICT's surface and the ground-truth mesh
  is ICT's full mesh. ICT has no eyeballs, so each iris (468-477) is the built-in
  template's iris carried by the least-squares affine map that takes the template's
  eye contour of that eye onto the ICT-driven contour (it follows lid and eye shape,
  and is squashed shut with the lids in a blink, as the built-in model's iris is).
* ``OffSpanFaceSource`` (``offspan``): built-in subjects plus fixed smooth identity and
  expression fields with every component in the built-in model's span removed, so the
  fitter cannot represent its subjects exactly; its ground truth is the built-in model
  with those fields appended (``builtin+offspan``). No licensed data, unlike ``ict``;
  the simulator's default.

Every source puts the head's rotation centre (``centre``, model frame) at the world
origin, where the rig aims: the built-in template is centred there already (``centre`` = 0,
so nothing changes, for ``offspan`` too), ICT's origin sits ~10 cm behind the face, so its ``centre`` is
the mean face's landmark centroid.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from functools import cached_property
from pathlib import Path

import numpy as np

from capture_schema.layout import DEFAULT_EXPRESSIONS
from capture_simulator.subjects import IDENTITY_CLIP, SubjectAppearance, sample_subject
from fitting.face_models import builtin as mm
from fitting.face_models.base import FaceModel

FACE_SOURCE_KINDS = ("offspan", "builtin", "ict")

#: ICT identity coefficients: N(0, 1) (ICT's modes are scaled to unit variance), clipped
#: at 2 sigma so no subject is a caricature the photo texture no longer fits.
ICT_IDENTITY_CLIP = 2.0
ICT_IDENTITY_SCALE = 1.0

#: The 13 capture expressions as ICT's ARKit blendshape weights (``_L`` = the subject's
#: left, +x: ``eyeBlink_L`` closes the +x eye, ``jawLeft`` moves the chin to +x). ICT's
#: full-weight shapes are about twice the built-in presets' amplitude (jawOpen 1.0 parts
#: the lips by 33 mm), so weights are chosen for a similar landmark motion.
ICT_PRESETS: dict[str, dict[str, float]] = {
    "neutral": {},
    "smile": {"mouthSmile_L": 0.7, "mouthSmile_R": 0.7, "cheekSquint_L": 0.4, "cheekSquint_R": 0.4},
    "mouth_open": {"jawOpen": 0.45},
    "surprise": {"jawOpen": 0.3, "browInnerUp_L": 0.8, "browInnerUp_R": 0.8, "browOuterUp_L": 0.8,
                 "browOuterUp_R": 0.8, "eyeWide_L": 0.8, "eyeWide_R": 0.8},
    "brows_raised": {"browInnerUp_L": 0.8, "browInnerUp_R": 0.8, "browOuterUp_L": 0.8, "browOuterUp_R": 0.8},
    "brows_lowered": {"browDown_L": 1.0, "browDown_R": 1.0},
    "eyes_closed": {"eyeBlink_L": 1.0, "eyeBlink_R": 1.0},
    "wink_left": {"eyeBlink_L": 1.0, "cheekSquint_L": 0.3, "mouthSmile_L": 0.3},
    "pucker": {"mouthPucker": 0.9},
    "jaw_left": {"jawLeft": 1.0},
    "jaw_right": {"jawRight": 1.0},
    "cheeks_puffed": {"cheekPuff_L": 0.7, "cheekPuff_R": 0.7},
    "disgust": {"noseSneer_L": 0.7, "noseSneer_R": 0.7, "mouthUpperUp_L": 0.4, "mouthUpperUp_R": 0.4,
                "browDown_L": 0.4, "browDown_R": 0.4, "mouthFrown_L": 0.3, "mouthFrown_R": 0.3},
}
assert tuple(ICT_PRESETS) == DEFAULT_EXPRESSIONS

_EYES = ((mm.RIGHT_EYE_UPPER + mm.RIGHT_EYE_LOWER, mm.RIGHT_IRIS),
         (mm.LEFT_EYE_UPPER + mm.LEFT_EYE_LOWER, mm.LEFT_IRIS))


class _NoShape:
    """Stands in for a model in ``sample_subject`` so it draws the colouring only."""

    n_identity = 0


class FaceSource(ABC):
    """A simulated subject's shape: identity prior, expression presets, 478 render positions."""

    name: str
    centre: np.ndarray  # (3,) model-frame point placed at the world origin (the rig's aim)

    @property
    @abstractmethod
    def model(self) -> FaceModel:
        """The model whose vertices are the ground truth (``identity``/``expression`` are its coefficients)."""

    @abstractmethod
    def sample_identity(self, rng: np.random.Generator) -> np.ndarray:
        """Identity coefficients of one random subject."""

    @abstractmethod
    def expression_coeffs(self, expression: str) -> np.ndarray:
        """The model's expression coefficients for one of the 13 capture expressions."""

    @abstractmethod
    def render_shape(self, identity: np.ndarray, expression: np.ndarray) -> np.ndarray:
        """(478, 3) positions of the built-in topology's vertices in the model frame (metres)."""

    def sample_subject(self, rng: np.random.Generator) -> SubjectAppearance:
        """Identity first, then the colouring, from one generator (the built-in order)."""
        identity = self.sample_identity(rng)
        return dataclasses.replace(sample_subject(rng, _NoShape()), identity=identity)  # type: ignore[arg-type]

    def posed(self, rotation: np.ndarray, translation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Model-to-world pose for a head rotation about ``centre`` and a shift of it from the origin."""
        if not np.any(self.centre):
            return rotation, translation
        return rotation, translation - rotation @ self.centre


def _check_expression(name: str) -> None:
    if name not in DEFAULT_EXPRESSIONS:
        raise ValueError(f"unknown expression {name!r}; expected one of {', '.join(DEFAULT_EXPRESSIONS)}")


class BuiltinFaceSource(FaceSource):
    """The built-in model: render shape = its vertices, presets = ``LinearFaceModel.expression_preset``."""

    name = "builtin"

    def __init__(self) -> None:
        self.morphable = mm.builtin_face_model(np.float64)
        self.centre = np.zeros(3)

    @cached_property
    def model(self) -> FaceModel:
        return mm.builtin_face_model()

    def sample_identity(self, rng: np.random.Generator) -> np.ndarray:
        return np.clip(rng.standard_normal(self.morphable.n_identity), -IDENTITY_CLIP, IDENTITY_CLIP)

    def expression_coeffs(self, expression: str) -> np.ndarray:
        return self.morphable.expression_preset(expression)

    def render_shape(self, identity: np.ndarray, expression: np.ndarray) -> np.ndarray:
        return self.morphable.vertices(identity, expression)


class IctFaceSource(FaceSource):
    """ICT-FaceKit (``load_ict_model(directory)``) drives the 478 render positions."""

    def __init__(self, directory: str | Path) -> None:
        from fitting.face_models.ict import load_ict_model

        self.directory = Path(directory)
        self._model = load_ict_model(self.directory)
        self.name = self._model.name
        emb = self._model.landmark_embedding
        if not np.array_equal(emb.landmark_ids, np.arange(mm.RIGHT_IRIS[0])):
            raise ValueError("the ICT landmark embedding must cover mediapipe ids 0..467")
        # numpy only (no torch): worker processes are forked, and torch's thread pool does
        # not survive a fork of a process that has used it.
        ids = emb.vertex_ids
        self._embedding = emb.restricted_to(ids)
        self._lm_template = self._model.template[ids].astype(np.float64)
        self._lm_identity = self._model.identity_basis[:, ids].astype(np.float64)
        self._lm_expression = self._model.expression_basis[:, ids].astype(np.float64)
        self._template = mm.builtin_face_model(np.float64).template.astype(np.float64)
        self.centre = self._landmarks(np.zeros(self._model.n_identity), np.zeros(self._model.n_expression)).mean(0)

    def __reduce__(self):
        """Pickle as the folder (worker processes reload the model, ~0.5 s, instead of copying ~30 MB)."""
        return (IctFaceSource, (str(self.directory),))

    @property
    def model(self) -> FaceModel:
        return self._model

    def sample_identity(self, rng: np.random.Generator) -> np.ndarray:
        z = np.clip(rng.standard_normal(self._model.n_identity), -ICT_IDENTITY_CLIP, ICT_IDENTITY_CLIP)
        return ICT_IDENTITY_SCALE * z

    def expression_coeffs(self, expression: str) -> np.ndarray:
        _check_expression(expression)
        coeffs = np.zeros(self._model.n_expression)
        for blendshape, weight in ICT_PRESETS[expression].items():
            coeffs[self._model.expression_names.index(blendshape)] = weight
        return coeffs

    def _landmarks(self, identity: np.ndarray, expression: np.ndarray) -> np.ndarray:
        """The 468 embedded landmarks (model frame) from the vertices they depend on."""
        verts = (self._lm_template + np.tensordot(identity, self._lm_identity, axes=1)
                 + np.tensordot(expression, self._lm_expression, axes=1))
        return self._embedding.points(verts)

    def render_shape(self, identity: np.ndarray, expression: np.ndarray) -> np.ndarray:
        shape = np.empty((mm.N_VERTICES, 3))
        identity, expression = np.asarray(identity, dtype=np.float64), np.asarray(expression, dtype=np.float64)
        if identity.shape != (self._model.n_identity,) or expression.shape != (self._model.n_expression,):
            raise ValueError(f"ICT needs {self._model.n_identity} identity and {self._model.n_expression} "
                             f"expression coefficients, got {identity.shape} and {expression.shape}")
        shape[: mm.RIGHT_IRIS[0]] = self._landmarks(identity, expression)
        for contour, iris in _EYES:
            shape[list(iris)] = _affine_map(self._template[list(contour)], shape[list(contour)],
                                            self._template[list(iris)])
        return shape


def _affine_map(src: np.ndarray, dst: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``points`` under the least-squares affine map taking ``src`` (K, 3) onto ``dst`` (K, 3)."""
    h = np.hstack([src, np.ones((len(src), 1))])
    A, *_ = np.linalg.lstsq(h, dst, rcond=None)
    return np.hstack([points, np.ones((len(points), 1))]) @ A


def load_face_source(kind: str = "offspan", path: str | Path | None = None) -> FaceSource:
    """``builtin``, ``ict`` with ``path`` = the folder of ICT-FaceKit's packaged npz files, or
    ``offspan`` (``OffSpanFaceSource`` with its default settings)."""
    if kind == "builtin":
        return BuiltinFaceSource()
    if kind == "ict":
        if not path:
            raise ValueError("face model 'ict' needs the folder holding the ICT-FaceKit npz files (--face-model-path)")
        return IctFaceSource(path)
    if kind == "offspan":
        from capture_simulator.off_span import OffSpanFaceSource  # it builds on this module's classes

        return OffSpanFaceSource()
    raise ValueError(f"unknown face model {kind!r}; expected one of {', '.join(FACE_SOURCE_KINDS)}")
