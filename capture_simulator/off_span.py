"""Simulated subjects outside the built-in model's span, without licensed data (``--face-model offspan``).

The built-in source's subjects lie exactly in the built-in model's span (template + its own
identity and expression modes), so the fitter can represent them exactly and mediapipe finds
them unusually precisely. ``OffSpanFaceSource`` adds fixed smooth identity and expression fields
with every component in that span removed; its ground truth is the built-in model with those
fields appended (``builtin+offspan``). Measured with ``benchmarks/offspan_noise.py``: mediapipe
errs 2.9 px frontal, 3.5 px at 30-40 degrees and 8.6 px at 60-70 degrees on them (512 px), in
line with independently rendered heads (REFERENCE.md), against 2.0 / 2.7 / 7.7 px on built-in ones.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property, lru_cache

import numpy as np

from capture_schema.layout import DEFAULT_EXPRESSIONS
from capture_simulator.face_source import _EYES, ICT_IDENTITY_CLIP, FaceSource, _check_expression
from capture_simulator.subjects import IDENTITY_CLIP, SubjectAppearance
from fitting.face_models import builtin as mm
from fitting.face_models.base import FaceModel
from fitting.face_models.linear import LinearFaceModel
from fitting.geometry import vertex_normals


# --- Off-span subjects ------------------------------------------------------------------------
#
# The built-in source's subjects lie exactly in the built-in model's span (template + its own
# identity and expression modes), so the fitter can represent them exactly. ``OffSpanFaceSource``
# adds shape the built-in model cannot express, without licensed data.

#: Seed of the off-span fields' random parts (bump placement of the two random fields and the
#: per-preset expression perturbations). Fixed: every run builds the same fields.
OFFSPAN_SEED = 20260105
#: Root-mean-square (over the 468 mesh vertices, irises excluded) of one subject's off-span
#: identity displacement, in mm, for unclipped N(0, 1) coefficients: each of the K fields is
#: scaled to ``OFFSPAN_IDENTITY_RMS_MM / sqrt(K)`` so the expected squared RMS is this squared
#: (independent coefficients). Measured for comparison: ICT-FaceKit subjects (their 468 embedded
#: landmarks, neutral) lie 1.9 mm RMS (1.6-2.3 mm over 20 subjects) from the built-in model's
#: span after a similarity alignment; 2.5 mm is a little further out, as real faces are further
#: from a 12-mode hand-made model than ICT's (itself a learned model) faces are.
#: ``benchmarks/offspan_noise.py`` (6 subjects, 512 px), mediapipe's median error against the true
#: 2D landmarks, 0-10 / 30-40 / 60-70 degrees off axis: 2.90 / 3.52 / 8.59 px (built-in subjects
#: 1.95 / 2.67 / 7.67; with 1.9 mm: 2.64 / 3.28 / 8.43; REFERENCE.md's independently rendered heads
#: 1.8-2.5 frontal, 2.5-4.0 at 30, 7-26 at 60 degrees). Most of the rise is this identity part:
#: without the expression components (``expression_fraction=0``) the numbers are the same
#: (2.88 / 3.51 / 8.76).
OFFSPAN_IDENTITY_RMS_MM = 2.5
#: Off-span coefficients ~N(0, 1) clipped here (as ICT's, ``ICT_IDENTITY_CLIP``): the fields are
#: local, so a subject's largest off-span displacement is ~4x its RMS (median 9 mm over 300
#: subjects; ICT-FaceKit subjects' largest distance from the built-in span: 7.3 mm median).
OFFSPAN_CLIP = ICT_IDENTITY_CLIP
#: Each non-neutral expression preset gets an off-span component of this RMS relative to the
#: built-in preset's own displacement RMS (smile 2.6 mm -> 0.5 mm, mouth_open 6.8 mm -> 1.4 mm).
#: ICT-FaceKit's presets measured 0.5-1.2 mm RMS off the built-in span beyond ICT's mean face.
OFFSPAN_EXPRESSION_FRACTION = 0.2
#: One centimetre in metres: the fields' Gaussian bump widths (sigma) are given in cm, the
#: scale of facial features.
_BUMP_CM = 0.01
_N_MESH = mm.RIGHT_IRIS[0]  # 468: vertices of the tessellated mesh; 468..477 are the irises


def _gauss(points: np.ndarray, centres: np.ndarray, sigma: float) -> np.ndarray:
    """(N,) sum of unit Gaussian bumps of width ``sigma`` at ``centres`` (M, 3)."""
    d2 = ((points[:, None, :] - np.atleast_2d(centres)[None]) ** 2).sum(-1)
    return np.exp(-0.5 * d2 / sigma**2).sum(1)


def _mirror_field(field: np.ndarray, mirror: np.ndarray) -> np.ndarray:
    out = field[mirror].copy()
    out[:, 0] *= -1.0
    return out


def _iris_maps(template: np.ndarray) -> list[tuple[list[int], list[int], np.ndarray]]:
    """Per eye (contour ids, iris ids, M): a contour displacement ``d`` (18, 3) moves the iris by
    ``M @ d``, the least-squares affine map of the template contour onto the moved one applied to
    the template iris (linear in ``d``; ``IctFaceSource`` uses the same map on whole shapes)."""
    out = []
    for contour, iris in _EYES:
        contour, iris = list(contour), list(iris)
        src = np.hstack([template[contour], np.ones((len(contour), 1))])
        pts = np.hstack([template[iris], np.ones((len(iris), 1))])
        out.append((contour, iris, pts @ np.linalg.pinv(src)))
    return out


def _irises_follow(field: np.ndarray, iris_maps) -> np.ndarray:
    """``field`` with each iris displacement replaced by the eye contour's affine one."""
    field = field.copy()
    for contour, iris, M in iris_maps:
        field[iris] = M @ field[contour]
    return field


def _rigid_fields(template: np.ndarray) -> np.ndarray:
    """(7, N, 3): three translations, three small rotations and a uniform scale about the centroid."""
    c = template - template.mean(0)
    out = []
    for k in range(3):
        d = np.zeros_like(template)
        d[:, k] = 1.0
        out.append(d)
    for k in range(3):
        out.append(np.cross(np.eye(3)[k], c))
    out.append(c)
    return np.stack(out)


def _span_basis(span: np.ndarray) -> np.ndarray:
    """(468*3, R) orthonormal basis of the column space of ``span`` (S, N, 3) over the mesh
    vertices' coordinates, R = its rank (the built-in face width, height and depth modes and
    a translation make up the uniform scale, so R < S). From the eigenvectors of the
    column-normalised Gram matrix: a 41 x 41 problem, no large LAPACK call."""
    a = span[:, :_N_MESH].reshape(len(span), -1).T
    a = a / np.linalg.norm(a, axis=0)
    w, v = np.linalg.eigh(a.T @ a)
    keep = w > 1e-10 * w.max()
    return a @ (v[:, keep] / np.sqrt(w[keep]))


def _off_span(fields: np.ndarray, q: np.ndarray, iris_maps) -> np.ndarray:
    """``fields`` (K, N, 3) minus their least-squares fit by the span with orthonormal basis ``q``
    (``_span_basis``) over every coordinate of the mesh vertices (irises excluded), irises then
    re-attached to their eyes."""
    b = fields[:, :_N_MESH].reshape(len(fields), -1).T
    out = fields.copy()
    out[:, :_N_MESH] = (b - q @ (q.T @ b)).T.reshape(len(fields), _N_MESH, 3)
    return np.stack([_irises_follow(f, iris_maps) for f in out])


def _rms_mm(field: np.ndarray) -> float:
    return 1000.0 * float(np.sqrt((field[:_N_MESH] ** 2).sum(-1).mean()))


def offspan_identity_fields(morphable: LinearFaceModel,
                            seed: int = OFFSPAN_SEED) -> tuple[tuple[str, ...], np.ndarray]:
    """Names and (K, 478, 3) raw displacement fields, before projection and scaling.

    Ten anatomical fields the built-in modes lack or only approximate (its face height, width
    and depth are uniform scales, its jaw width, nose length and eye spacing single fixed
    patterns; its identity modes are all left/right symmetric) and two fields of random Gaussian bumps (one
    mirror-symmetric, one not), all smooth at cm scale.
    """
    p = morphable.template.astype(np.float64)
    mirror = np.asarray(morphable.mirror)
    normals = vertex_normals(p, morphable.skin_faces)
    x, y = p[:, 0], p[:, 1]
    zeros = np.zeros(len(p))

    def smoothstep(a: float, b: float, v: np.ndarray) -> np.ndarray:
        t = np.clip((v - a) / (b - a), 0.0, 1.0)
        return t * t * (3.0 - 2.0 * t)

    def sym(field: np.ndarray) -> np.ndarray:
        return field + _mirror_field(field, mirror)

    cm = _BUMP_CM
    y_nose, y_chin, y_eye, y_top = p[2, 1], p[152, 1], p[[33, 263], 1].mean(), p[10, 1]
    fields: dict[str, np.ndarray] = {}
    # lower face longer (nose base to chin stretched), upper face unchanged
    fields["lower_face_length"] = np.stack([zeros, smoothstep(y_nose, y_chin, y) * (y - y_nose), zeros], 1)
    # nasal bridge height: the dorsum forward (-z), most between the eyes and mid-nose
    bridge = _gauss(p, p[[168, 6, 197, 195]], 0.9 * cm)
    fields["nasal_bridge_height"] = np.stack([zeros, zeros, -bridge], 1)
    # deep-set eyes: eyeballs, lids and the skin around them back (+z)
    eyes = _gauss(p, p[[468, 473]], 1.3 * cm)
    fields["eye_depth"] = np.stack([zeros, zeros, eyes], 1)
    # cheekbones out along the surface normal
    fields["cheekbone_prominence"] = sym(_gauss(p, p[[116, 123]], 1.4 * cm)[:, None] * normals
                                         * (x < 0)[:, None])
    # brow ridge forward (-z), glabella included
    fields["brow_ridge"] = np.stack([zeros, zeros, -_gauss(p, p[[105, 66, 9, 296, 334]], 1.1 * cm)], 1)
    # fuller lips: upper lip up, lower lip down, away from the mouth line, and forward
    mouth = _gauss(p, p[[0, 17, 61, 291]], 1.0 * cm)
    fields["lip_fullness"] = np.stack([zeros, np.tanh((y - p[13, 1]) / 0.004), -0.5 * np.ones(len(p))], 1) \
        * mouth[:, None]
    # upper face (temples, forehead) wider than the rest
    fields["temple_width"] = np.stack([x * smoothstep(y_eye, y_top, y), zeros, zeros], 1)
    # asymmetric: the left eye and brow higher (-y), the right lower
    left, right = _gauss(p, p[[473, 334]], 1.6 * cm), _gauss(p, p[[468, 105]], 1.6 * cm)
    fields["eye_height_asymmetry"] = np.stack([zeros, right - left, zeros], 1)
    # asymmetric: crooked nose, the tip more than the bridge towards +x
    fields["nose_deviation"] = np.stack([_gauss(p, p[[4, 1, 5]], 1.0 * cm) + 0.5 * bridge, zeros, zeros], 1)
    # asymmetric: the right jaw angle out (-x) and down
    jaw = _gauss(p, p[[172, 58]], 2.0 * cm)
    fields["jaw_asymmetry"] = jaw[:, None] * np.array([-1.0, 0.6, 0.0])
    rng = np.random.default_rng([seed, 0])
    for name, symmetric in (("random_bumps_symmetric", True), ("random_bumps", False)):
        field = np.zeros_like(p)
        for _ in range(6):
            centre = p[rng.integers(_N_MESH)]
            sigma = rng.uniform(1.0, 2.5) * cm
            direction = rng.normal(size=3)
            field += _gauss(p, centre, sigma)[:, None] * direction / np.linalg.norm(direction)
        fields[name] = sym(field) if symmetric else field
    return tuple(fields), np.stack(list(fields.values()))


class OffSpanFaceSource(FaceSource):
    """Built-in subjects plus identity (and expression) shape OUTSIDE the built-in model's span.

    A subject's neutral face is ``template + B_id . a + F . b``: ``a`` the built-in identity
    coefficients (as ``BuiltinFaceSource`` draws them), ``b`` K = 12 more N(0, 1) coefficients
    clipped at ``OFFSPAN_CLIP``, and ``F`` fixed smooth fields (``offspan_identity_fields``:
    ten anatomical ones and two of random bumps, from ``seed``) with their least-squares fit by
    the built-in identity AND expression modes and by a rigid motion plus uniform scale removed
    (over every coordinate of the 468 mesh vertices), then each scaled to RMS
    ``identity_rms_mm / sqrt(K)``: a subject's off-span part is ~``identity_rms_mm`` RMS
    (expected value of the squared RMS) and no built-in coefficient, head pose or scale can
    absorb any of it. Irises carry no field of their own: each follows its eye contour by the
    least-squares affine map (as in ``IctFaceSource``), which is linear, so the model stays exact.

    Expressions: the built-in presets, plus per non-neutral preset one fixed off-span
    component (``expression_fraction`` x the preset's RMS, 0 for none): the preset's own
    displacement re-weighted by a smooth random field and turned a little in direction, with
    its in-span part removed as above. So a smile is not exactly the model's smile either.

    ``model`` is the ground truth, a ``LinearFaceModel`` named ``builtin+offspan``: the
    built-in template and bases with the K identity fields appended to the identity basis and
    the expression components to the expression basis, so ``frames.json`` holds
    ``n_identity = 12 + K`` identity and ``22 (+ 12)`` expression coefficients and
    ``model.vertices`` is the drawn face exactly.

    ``texture_warp_mm`` (default 0: off) also warps each subject's copy of the photo texture in
    uv space by a smooth random field (six Gaussian bumps, 1.5-2.5 cm wide) whose RMS over the
    mesh vertices is this many mm on the template's surface: the drawn eye corners, lip lines
    and brows then sit slightly off the mesh's landmark vertices (the ground truth), as a real
    face's features differ from a detector's landmark definitions. It is carried by the subject's
    ``SubjectAppearance`` (``WarpedTextureAppearance``), so the simulator needs no change.
    Measured (``benchmarks/offspan_noise.py``, 6 subjects): 1.5 mm adds only 0.1-0.2 px to
    mediapipe's median error (3.02 / 3.65 / 8.83 px at 0-10 / 30-40 / 60-70 degrees against
    2.90 / 3.52 / 8.59 px without): the off-span shape, not the texture, is what moves it.
    """

    name = "builtin+offspan"

    def __init__(self, *, seed: int = OFFSPAN_SEED, identity_rms_mm: float = OFFSPAN_IDENTITY_RMS_MM,
                 expression_fraction: float = OFFSPAN_EXPRESSION_FRACTION, texture_warp_mm: float = 0.0) -> None:
        if identity_rms_mm < 0 or expression_fraction < 0 or texture_warp_mm < 0:
            raise ValueError("identity_rms_mm, expression_fraction and texture_warp_mm must be >= 0")
        self.seed, self.identity_rms_mm = int(seed), float(identity_rms_mm)
        self.expression_fraction, self.texture_warp_mm = float(expression_fraction), float(texture_warp_mm)
        self.morphable = mm.builtin_face_model(np.float64)
        self.centre = np.zeros(3)
        m = self.morphable
        template = m.template.astype(np.float64)
        iris_maps = _iris_maps(template)
        span = _span_basis(np.concatenate([m.identity_basis, m.expression_basis,
                                           _rigid_fields(template)]).astype(np.float64))
        names, raw = offspan_identity_fields(m, self.seed)
        fields = _off_span(np.stack([_irises_follow(f, iris_maps) for f in raw]), span, iris_maps)
        scale = self.identity_rms_mm / np.sqrt(len(fields))
        self.identity_field_names = tuple(f"offspan_{n}" for n in names)
        self.identity_fields = np.stack([f * (scale / _rms_mm(f)) for f in fields])
        self.expression_field_names: tuple[str, ...] = ()
        self.expression_fields = np.zeros((0, len(template), 3))
        if self.expression_fraction > 0:
            rng = np.random.default_rng([self.seed, 1])
            presets = DEFAULT_EXPRESSIONS[1:]
            disps, raw_ex = [], []
            for preset in presets:
                disp = np.tensordot(m.expression_preset(preset), m.expression_basis, axes=1).astype(np.float64)
                weight = np.zeros(len(template))
                for _ in range(4):
                    weight += rng.choice([-1.0, 1.0]) * _gauss(template, template[rng.integers(_N_MESH)],
                                                               rng.uniform(1.5, 2.5) * _BUMP_CM)
                axis = rng.normal(size=3)
                disps.append(disp)
                raw_ex.append(weight[:, None] * disp + np.cross(0.5 * axis / np.linalg.norm(axis), disp))
            ex = _off_span(np.stack(raw_ex), span, iris_maps)
            self.expression_field_names = tuple(f"offspan_{p}" for p in presets)
            self.expression_fields = np.stack([f * (self.expression_fraction * _rms_mm(d) / _rms_mm(f))
                                               for f, d in zip(ex, disps)])
        # the ground truth's float32 bases; render_shape sums the same numbers in float64
        self._identity_basis = np.concatenate([m.identity_basis, self.identity_fields]).astype(np.float32)
        self._expression_basis = np.concatenate([m.expression_basis, self.expression_fields]).astype(np.float32)
        self._render = (m.template.astype(np.float64), self._identity_basis.astype(np.float64),
                        self._expression_basis.astype(np.float64))

    def __reduce__(self):
        """Pickle as the settings (workers rebuild the fields, ~0.1 s, instead of copying the bases)."""
        return (_offspan_from_settings, (self.seed, self.identity_rms_mm, self.expression_fraction,
                                         self.texture_warp_mm))

    @cached_property
    def model(self) -> FaceModel:
        from fitting.face_models.base import LandmarkEmbedding

        m = self.morphable
        return LinearFaceModel(
            name=self.name, template=m.template, faces=m.faces,
            identity_basis=self._identity_basis, expression_basis=self._expression_basis,
            identity_names=m.identity_names + self.identity_field_names,
            expression_names=m.expression_names + self.expression_field_names,
            landmark_embedding=LandmarkEmbedding.identity(m.template.shape[0]))

    @property
    def n_identity(self) -> int:
        return len(self._identity_basis)

    @property
    def n_expression(self) -> int:
        return len(self._expression_basis)

    def sample_identity(self, rng: np.random.Generator) -> np.ndarray:
        """Built-in coefficients first (the built-in source's draws), then the K off-span ones."""
        builtin = np.clip(rng.standard_normal(self.morphable.n_identity), -IDENTITY_CLIP, IDENTITY_CLIP)
        extra = np.clip(rng.standard_normal(len(self.identity_fields)), -OFFSPAN_CLIP, OFFSPAN_CLIP)
        return np.concatenate([builtin, extra])

    def sample_subject(self, rng: np.random.Generator) -> SubjectAppearance:
        """Identity, colouring, then a texture-warp seed (drawn even when the warp is off, so a
        subject is the same with and without it)."""
        appearance = super().sample_subject(rng)
        warp_seed = int(rng.integers(2**31))
        fields = {f.name: getattr(appearance, f.name) for f in dataclasses.fields(appearance)}
        return WarpedTextureAppearance(**fields, texture_warp_seed=warp_seed, texture_warp_mm=self.texture_warp_mm)

    def expression_coeffs(self, expression: str) -> np.ndarray:
        _check_expression(expression)
        coeffs = np.zeros(self.n_expression)
        coeffs[: self.morphable.n_expression] = self.morphable.expression_preset(expression)
        name = f"offspan_{expression}"
        if name in self.expression_field_names:
            coeffs[self.morphable.n_expression + self.expression_field_names.index(name)] = 1.0
        return coeffs

    def render_shape(self, identity: np.ndarray, expression: np.ndarray) -> np.ndarray:
        identity, expression = np.asarray(identity, dtype=np.float64), np.asarray(expression, dtype=np.float64)
        if identity.shape != (self.n_identity,) or expression.shape != (self.n_expression,):
            raise ValueError(f"{self.name} needs {self.n_identity} identity and {self.n_expression} expression "
                             f"coefficients, got {identity.shape} and {expression.shape}")
        template, id_basis, ex_basis = self._render
        return template + np.tensordot(identity, id_basis, axes=1) + np.tensordot(expression, ex_basis, axes=1)


def _offspan_from_settings(seed: int, identity_rms_mm: float, expression_fraction: float,
                           texture_warp_mm: float) -> OffSpanFaceSource:
    return OffSpanFaceSource(seed=seed, identity_rms_mm=identity_rms_mm, expression_fraction=expression_fraction,
                             texture_warp_mm=texture_warp_mm)


#: Texture warp: Gaussian bumps of 1.5-2.5 cm (on the template's surface) with random 2D
#: directions, at random mesh vertices' uv positions.
TEXTURE_WARP_BUMPS = 6


@dataclasses.dataclass(frozen=True, eq=False)
class WarpedTextureAppearance(SubjectAppearance):
    """A subject whose albedo map is the photo texture, recoloured AND warped in uv space.

    ``recolor`` of the model's texture image (``builtin_texture()``'s shape) also moves its
    content by a smooth field from ``texture_warp_seed`` of RMS ``texture_warp_mm`` over the mesh
    vertices (mm on the template's surface, through each vertex's local mm-per-texel); anything
    else (a colour list, another image) is only recoloured. ``texture_warp_mm`` = 0: no warp.
    """

    texture_warp_seed: int = 0
    texture_warp_mm: float = 0.0

    def recolor(self, rgb: np.ndarray) -> np.ndarray:
        out = super().recolor(rgb)
        if self.texture_warp_mm <= 0 or out.ndim != 3 or out.shape[:2] != _texture_shape():
            return out
        import cv2

        map_x, map_y = self.texture_warp_maps()
        return cv2.remap(np.ascontiguousarray(out), map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)

    def texture_warp_maps(self) -> tuple[np.ndarray, np.ndarray]:
        """float32 (H, W) source coordinates per texel (cv2.remap maps) of this subject's warp."""
        disp = _unit_texture_warp(self.texture_warp_seed) * self.texture_warp_mm
        h, w = disp.shape[:2]
        xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        return xs + disp[..., 0], ys + disp[..., 1]


def _texture_shape() -> tuple[int, int]:
    return tuple(mm.builtin_texture().shape[:2])  # type: ignore[return-value]


@lru_cache(maxsize=1)
def _texel_geometry() -> tuple[np.ndarray, np.ndarray]:
    """Texel position (texture px) of every vertex, and each mesh vertex's local mm per texel
    (median over its edges of 3D length / uv length)."""
    m = mm.builtin_face_model(np.float64)
    h, w = _texture_shape()
    template = m.template.astype(np.float64)
    uv_px = m.uv.astype(np.float64) * [w, h] - 0.5
    faces = m.skin_faces
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    ratio = 1000 * np.linalg.norm(template[edges[:, 0]] - template[edges[:, 1]], axis=1) / np.maximum(
        np.linalg.norm(uv_px[edges[:, 0]] - uv_px[edges[:, 1]], axis=1), 1e-6)
    return uv_px, np.array([np.median(ratio[(edges == v).any(1)]) for v in range(_N_MESH)])


@lru_cache(maxsize=8)
def _unit_texture_warp(seed: int) -> np.ndarray:
    """(H, W, 2) texel displacement (source offset) of RMS 1 mm over the mesh vertices (read-only)."""
    h, w = _texture_shape()
    uv_px, mm_per_texel = _texel_geometry()
    rng = np.random.default_rng([OFFSPAN_SEED, 2, seed])
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    grid = np.stack([xs, ys], -1)
    disp = np.zeros((h, w, 2))
    at_vertices = np.zeros((_N_MESH, 2))
    for _ in range(TEXTURE_WARP_BUMPS):
        v = rng.integers(_N_MESH)
        sigma = rng.uniform(1.5, 2.5) * 10.0 / mm_per_texel[v]  # cm -> texels at that vertex
        angle = rng.uniform(0, 2 * np.pi)
        direction = np.array([np.cos(angle), np.sin(angle)])
        disp += np.exp(-0.5 * ((grid - uv_px[v]) ** 2).sum(-1) / sigma**2)[..., None] * direction
        at_vertices += np.exp(-0.5 * ((uv_px[:_N_MESH] - uv_px[v]) ** 2).sum(-1) / sigma**2)[:, None] * direction
    rms = np.sqrt(((at_vertices * mm_per_texel[:, None]) ** 2).sum(1).mean())
    out = (disp / rms).astype(np.float32)
    out.flags.writeable = False
    return out
