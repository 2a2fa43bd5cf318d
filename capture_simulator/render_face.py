"""Render one camera's view of a synthetic subject: textured face, simple head, studio.

The face is the morphable model's mesh with the photo texture recoloured by the
subject's albedo; the eye fills show the photo's eyes, the mouth fill shows a band
of upper teeth over a dark cavity and tongue (so an open mouth reads as a mouth).
A head is grown from the face's outline back
over an ellipsoid (skin at the sides and under the jaw, hair on top and at the
back) and a neck cylinder hangs below it, so the face never floats. Lighting is a
fixed studio set-up in world space (Lambertian key + fill + ambient on
interpolated vertex normals) over a light-grey gradient backdrop. Vertices are
projected with ``Camera.project``, so lens distortion is applied per vertex.
The ground truth for landmark detectors is ``project_landmarks`` (+ visibility).
"""

from __future__ import annotations

import cv2
import numpy as np

from capture_schema.cameras import Camera
from capture_simulator.rasterize import Raster, rasterize
from capture_simulator.subjects import SubjectAppearance
from fitting.face_models import builtin as mm
from fitting.face_models.linear import MOUTH_FILL, LinearFaceModel

KEY_LIGHT = np.array([-0.5, -0.6, -1.0]) / np.linalg.norm([-0.5, -0.6, -1.0])
FILL_LIGHT = np.array([0.7, -0.2, -0.8]) / np.linalg.norm([0.7, -0.2, -0.8])
KEY, FILL, AMBIENT = 0.5, 0.22, 0.36
#: Mouth interior from the upper to the lower inner lip: teeth, dark cavity, tongue.
TEETH_COLOR = np.array([0.78, 0.74, 0.66])
CAVITY_COLOR = np.array([0.10, 0.04, 0.04])
TONGUE_COLOR = np.array([0.42, 0.16, 0.15])
BACKGROUND_TOP, BACKGROUND_BOTTOM = np.array([0.80, 0.80, 0.82]), np.array([0.64, 0.64, 0.67])
SKIN_SAMPLE_LANDMARKS = (50, 280, 101, 330, 123, 352, 151, 108, 337, 199, 175, 36, 266)
RINGS = 10
MERIDIANS_PER_EDGE = 3
NECK_SEGMENTS = 32
_TEXTURED, _VERTEX_COLOR, _MOUTH = 0, 1, 2


def _smoothstep(a: float, b: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - a) / (b - a), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _hair_weight(points: np.ndarray, dirs: np.ndarray, eye_y: float, face_h: float) -> np.ndarray:
    """Hair above the eye line (temples included) and at the back down to the nape."""
    y_rel = (points[:, 1] - eye_y) / face_h
    top = 1.0 - _smoothstep(-0.06, 0.02, y_rel)
    back = _smoothstep(0.0, 0.3, dirs[:, 2]) * (1.0 - _smoothstep(0.25, 0.4, y_rel))
    return np.maximum(top, back)


def _outline_tangents(face: np.ndarray, faces: np.ndarray, oval: np.ndarray) -> np.ndarray:
    """Unit direction in which the face surface leaves each outline vertex."""
    on_oval = np.zeros(len(face), dtype=bool)
    on_oval[oval] = True
    tangents = np.zeros((len(oval), 3))
    for k, i in enumerate(oval):
        nbrs = np.unique(faces[(faces == i).any(axis=1)])
        inner = nbrs[~on_oval[nbrs]]
        tangents[k] = face[i] - face[inner].mean(axis=0)
    return tangents / np.linalg.norm(tangents, axis=1, keepdims=True)


def _skull(face: np.ndarray, faces: np.ndarray, first: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Skull vertices, triangles (indices from ``first`` on), hair weights of the outline
    and skull vertices, and the ellipsoid (``centre``, ``radii``, ``eye_y``, ``face_h``)."""
    oval = np.array(mm.FACE_OVAL)
    eye_y = face[list(mm.OUTER_EYE_CORNERS), 1].mean()
    face_h = face[152, 1] - face[10, 1]
    centre = np.array([0.0, eye_y - 0.03 * face_h, face[9, 2] + 0.62 * face_h])
    radii = np.array([1.12 * np.abs(face[oval, 0]).max(), 0.72 * face_h, 0.6 * face_h])
    s = MERIDIANS_PER_EDGE
    frac = np.arange(s)[None, :, None] / s
    start = (face[oval][:, None] * (1 - frac) + face[np.roll(oval, -1)][:, None] * frac).reshape(-1, 3)
    tan = _outline_tangents(face, faces, oval)
    tan = (tan[:, None] * (1 - frac) + np.roll(tan, -1, axis=0)[:, None] * frac).reshape(-1, 3)
    tan /= np.linalg.norm(tan, axis=1, keepdims=True)
    n_mer = len(start)
    pole = np.array([0.0, 0.0, 1.0])
    u = (start - centre) / radii
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    omega = np.arccos(np.clip(u @ pole, -1.0, 1.0))[:, None]
    arc = omega * radii.mean()  # rough length of each meridian
    rings, dirs = [], []
    for k in range(1, RINGS):
        t = k / RINGS
        d = (np.sin((1 - t) * omega) * u + np.sin(t * omega) * pole) / np.sin(omega)
        w = float(_smoothstep(0.0, 0.3, np.array(t)))
        rings.append((1 - w) * (start + t * arc * tan) + w * (centre + radii * d))
        dirs.append(d)
    verts = np.concatenate(rings + [centre[None] + radii * pole])
    ring_idx = [first + k * n_mer + np.arange(n_mer) for k in range(RINGS - 1)]
    tip = first + (RINGS - 1) * n_mer
    # Outline vertex i fans over the first ring's meridians s*i .. s*i + s//2, its
    # successor over the rest up to s*(i+1); one triangle joins the two.
    r1 = ring_idx[0].reshape(-1, s)
    r1_next = np.roll(ring_idx[0], -s).reshape(-1, s)[:, 0]
    o, o2 = oval, np.roll(oval, -1)
    tris = [np.stack([o if j < s // 2 else o2, r1[:, j], r1[:, j + 1] if j + 1 < s else r1_next], 1)
            for j in range(s)]
    tris.append(np.stack([o, r1[:, s // 2], o2], 1))
    for a, b in zip(ring_idx[:-1], ring_idx[1:]):
        tris += [np.stack([a, np.roll(a, -1), np.roll(b, -1)], 1), np.stack([a, np.roll(b, -1), b], 1)]
    tris.append(np.stack([ring_idx[-1], np.roll(ring_idx[-1], -1), np.full(n_mer, tip)], 1))
    hair = _hair_weight(np.concatenate([face[oval], verts]),
                        np.concatenate([u.reshape(len(oval), s, 3)[:, 0]] + dirs + [pole[None]]), eye_y, face_h)
    shape = {"centre": centre, "radii": radii, "eye_y": eye_y, "face_h": face_h}
    return verts, np.concatenate(tris), hair, shape


def _neck(shape: dict, first: int) -> tuple[np.ndarray, np.ndarray, float]:
    """An elliptic cylinder from inside the head down out of the picture; and its axis z."""
    ang = 2 * np.pi * np.arange(NECK_SEGMENTS) / NECK_SEGMENTS
    face_h, centre = shape["face_h"], shape["centre"]
    axis_z = centre[2] - 0.05 * face_h
    ys = centre[1] + np.array([0.45, 1.3, 2.2, 3.2]) * shape["radii"][1]
    verts = np.concatenate([np.stack([0.36 * face_h * np.sin(ang), np.full_like(ang, y),
                                      axis_z - 0.38 * face_h * np.cos(ang)], 1) for y in ys])
    tris = []
    for r in range(len(ys) - 1):
        a = first + r * NECK_SEGMENTS + np.arange(NECK_SEGMENTS)
        b = a + NECK_SEGMENTS
        tris += [np.stack([a, np.roll(a, -1), np.roll(b, -1)], 1), np.stack([a, np.roll(b, -1), b], 1)]
    return verts, np.concatenate(tris), axis_z


def head_mesh(face: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Skull and neck around a face (model frame, before pose).

    The skull's meridians leave the face outline along the face surface's own
    direction (no crease at the seam), then bend onto an ellipsoid and run to a pole
    at the back of the head (``MERIDIANS_PER_EDGE`` per outline edge, so the
    silhouette is round). Returns extra vertices (M, 3), triangles (K, 3) indexing
    ``[face; extra]`` with outward normals, and a hair weight for every vertex of
    ``[face; extra]`` (used where vertex colours are drawn: skull, neck, seam).
    """
    n_face = len(face)
    skull, skull_tris, skull_hair, shape = _skull(face, faces, n_face)
    neck, neck_tris, neck_z = _neck(shape, n_face + len(skull))
    extra = np.concatenate([skull, neck])
    tris = np.concatenate([skull_tris, neck_tris]).astype(np.int64)
    # Orient outwards: away from the skull centre, or from the neck axis.
    pts = np.concatenate([face, extra])
    a, b, c = pts[tris[:, 0]], pts[tris[:, 1]], pts[tris[:, 2]]
    mid = (a + b + c) / 3.0
    is_neck = (np.arange(len(tris)) >= len(skull_tris))[:, None]
    axis = np.stack([np.zeros(len(mid)), mid[:, 1], np.full(len(mid), neck_z)], 1)
    flip = np.einsum("ij,ij->i", np.cross(b - a, c - a), mid - np.where(is_neck, axis, shape["centre"])) < 0
    tris[flip] = tris[flip][:, [0, 2, 1]]
    hair = np.zeros(len(pts))
    hair[list(mm.FACE_OVAL)] = skull_hair[: len(mm.FACE_OVAL)]
    hair[n_face: n_face + len(skull)] = skull_hair[len(mm.FACE_OVAL):]
    return extra, tris, hair


def _vertex_normals(points: np.ndarray, faces: np.ndarray) -> np.ndarray:
    fn = np.cross(points[faces[:, 1]] - points[faces[:, 0]], points[faces[:, 2]] - points[faces[:, 0]])
    normals = np.zeros_like(points)
    for k in range(3):
        np.add.at(normals, faces[:, k], fn)
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


def _pose(rotation: np.ndarray | None, translation: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    R = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64).reshape(3, 3)
    t = np.zeros(3) if translation is None else np.asarray(translation, dtype=np.float64).reshape(3)
    return R, t


def skin_color(model: LinearFaceModel, texture: np.ndarray) -> np.ndarray:
    """Median photo colour over cheek/forehead/chin landmarks, RGB in [0, 1]."""
    h, w = texture.shape[:2]
    uv = model.uv[list(SKIN_SAMPLE_LANDMARKS)]
    px = np.clip((uv * [w, h] - 0.5).round().astype(int), 0, [w - 1, h - 1])
    return np.median(texture[px[:, 1], px[:, 0]].astype(np.float64), axis=0) / 255.0


def _scene(model: LinearFaceModel, texture: np.ndarray, appearance: SubjectAppearance, expression: np.ndarray,
           rotation: np.ndarray | None, translation: np.ndarray | None,
           shape: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """World-space vertices, triangles, per-face material, per-vertex surface
    coordinates (texture u, v and mouth depth 0..1) and per-vertex colour."""
    face = _face(model, appearance, expression, shape)
    extra, extra_tris, hair = head_mesh(face, model.skin_faces)
    R, t = _pose(rotation, translation)
    verts = np.concatenate([face, extra]) @ R.T + t
    labels = model.face_labels if model.face_labels is not None else np.zeros(len(model.faces), np.int8)
    faces = np.concatenate([model.faces.astype(np.int64), extra_tris])
    material = np.concatenate([np.where(labels == MOUTH_FILL, _MOUTH, _TEXTURED),
                               np.full(len(extra_tris), _VERTEX_COLOR)])
    skin = appearance.recolor(skin_color(model, texture)[None].astype(np.float32))[0]
    color = (1.0 - hair[:, None]) * skin + hair[:, None] * np.asarray(appearance.hair_color)
    uv = np.concatenate([model.uv, np.zeros((len(extra), 2))])
    mouth_v = np.full((len(verts), 1), 0.5)
    mouth_v[list(mm.LIPS_UPPER_INNER[1:-1])] = 0.0
    mouth_v[list(mm.LIPS_LOWER_INNER[1:-1])] = 1.0
    return verts, faces, material, np.concatenate([uv, mouth_v], axis=1), color


def _face(model: LinearFaceModel, appearance: SubjectAppearance, expression: np.ndarray | None,
          shape: np.ndarray | None) -> np.ndarray:
    """The unposed face (478, 3): ``shape`` where given (another model drives the
    positions, see ``face_source``), else the model's own vertices."""
    if shape is None:
        return model.vertices(appearance.identity, expression)
    shape = np.asarray(shape, dtype=np.float64)
    if shape.shape != model.template.shape:
        raise ValueError(f"shape must be {model.template.shape} like the model's template, got {shape.shape}")
    return shape


def _camera_pixels(camera: Camera, verts: np.ndarray, supersample: int) -> tuple[np.ndarray, np.ndarray]:
    """Projected pixel positions on the supersampled grid, and camera depths."""
    xy = camera.project(verts)
    s = float(supersample)
    return s * (xy + 0.5) - 0.5, camera.depth(verts)


def _background(height: int, width: int) -> np.ndarray:
    """Studio backdrop: a vertical light-grey gradient, slightly darker at the sides."""
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    x = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :, None]
    top, bottom = BACKGROUND_TOP.astype(np.float32), BACKGROUND_BOTTOM.astype(np.float32)
    return ((1 - t) * top + t * bottom) * (1.0 - 0.06 * x**2)


def render_view(model: LinearFaceModel, texture: np.ndarray, appearance: SubjectAppearance,
                expression_coeffs: np.ndarray, head_rotation: np.ndarray | None,
                head_translation: np.ndarray | None, camera: Camera, supersample: int = 2,
                shape: np.ndarray | None = None) -> np.ndarray:
    """One RGB uint8 image (H, W, 3) of the subject from ``camera`` (``supersample``^2 samples a pixel).

    ``shape`` (478, 3), unposed model frame, replaces ``model.vertices(identity, expression)``
    (``expression_coeffs`` is then unused): the topology, uv and labels stay the model's.
    """
    if supersample < 1:
        raise ValueError("supersample must be >= 1")
    verts, faces, material, surface, color = _scene(model, texture, appearance, expression_coeffs,
                                                    head_rotation, head_translation, shape)
    s = int(supersample)
    H, W = camera.height * s, camera.width * s
    xy, depth = _camera_pixels(camera, verts, s)
    raster = rasterize(xy, depth, faces, W, H)
    image = _background(H, W).reshape(-1, 3)
    fg = np.flatnonzero(raster.triangle.ravel() >= 0)
    if fg.size:
        image[fg] = _shade(raster, fg, verts, faces, material, surface, color, texture, appearance)
    image = image.reshape(H, W, 3)
    if s > 1:
        image = cv2.resize(image, (camera.width, camera.height), interpolation=cv2.INTER_AREA)
    return np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _shade(raster: Raster, fg: np.ndarray, verts: np.ndarray, faces: np.ndarray, material: np.ndarray,
           surface: np.ndarray, color: np.ndarray, texture: np.ndarray, appearance: SubjectAppearance) -> np.ndarray:
    """Colour of the foreground pixels ``fg`` (flat indices): albedo x studio lighting."""
    tri = raster.triangle.ravel()[fg]
    bary = raster.barycentric.reshape(-1, 3)[fg]
    attrs = np.concatenate([_vertex_normals(verts, faces), color, surface], axis=1).astype(np.float32)
    pix = np.einsum("pk,pkc->pc", bary, attrs[faces[tri]])
    n = pix[:, :3] / np.maximum(np.linalg.norm(pix[:, :3], axis=1, keepdims=True), 1e-12)
    light = (AMBIENT + KEY * np.clip(n @ KEY_LIGHT.astype(np.float32), 0, None)
             + FILL * np.clip(n @ FILL_LIGHT.astype(np.float32), 0, None))
    albedo = pix[:, 3:6]
    mat = material[tri]
    textured = mat == _TEXTURED
    if textured.any():
        albedo[textured] = _sample(appearance.recolor(texture), pix[textured, 6:8])
    mouth = mat == _MOUTH
    if mouth.any():
        albedo[mouth] = _mouth_interior(pix[mouth, 8])
    return albedo * light[:, None]


def _mouth_interior(v: np.ndarray) -> np.ndarray:
    """Interior colour at ``v`` (0 = upper inner lip, 1 = lower): a band of upper teeth,
    the dark cavity, the tongue near the lower lip."""
    teeth = 1.0 - _smoothstep(0.18, 0.26, v)
    tongue = _smoothstep(0.7, 0.85, v)
    cavity = np.clip(1.0 - teeth - tongue, 0.0, 1.0)
    color = teeth[:, None] * TEETH_COLOR + cavity[:, None] * CAVITY_COLOR + tongue[:, None] * TONGUE_COLOR
    return color.astype(np.float32)


def _sample(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear texture lookup at ``uv`` (N, 2) (origin top-left, 1 = far edge)."""
    h, w = texture.shape[:2]
    cols = 1024
    pad = (-len(uv)) % cols
    maps = np.concatenate([uv * [w, h] - 0.5, np.zeros((pad, 2))]).astype(np.float32).reshape(-1, cols, 2)
    out = cv2.remap(texture, maps[..., 0], maps[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(-1, 3)[: len(uv)]


def project_landmarks(model: LinearFaceModel, appearance: SubjectAppearance, expression_coeffs: np.ndarray,
                      head_rotation: np.ndarray | None, head_translation: np.ndarray | None,
                      camera: Camera, shape: np.ndarray | None = None) -> np.ndarray:
    """Ground-truth 2D landmarks (478, 2) in ``camera``'s distorted pixel coordinates
    (of ``shape`` where given, as in ``render_view``)."""
    R, t = _pose(head_rotation, head_translation)
    if shape is None:
        return camera.project(model.vertices(appearance.identity, expression_coeffs, R, t))
    return camera.project(_face(model, appearance, None, shape) @ R.T + t)


def landmark_visibility(model: LinearFaceModel, appearance: SubjectAppearance, expression_coeffs: np.ndarray,
                        head_rotation: np.ndarray | None, head_translation: np.ndarray | None,
                        camera: Camera, tolerance_m: float = 0.004, shape: np.ndarray | None = None) -> np.ndarray:
    """Which landmarks (478,) are unoccluded in ``camera``: depth within ``tolerance_m`` of the z-buffer."""
    verts, faces, _, _, _ = _scene(model, np.zeros((1, 1, 3), np.uint8), appearance, expression_coeffs,
                                   head_rotation, head_translation, shape)
    xy, depth = _camera_pixels(camera, verts, 1)
    raster = rasterize(xy, depth, faces, camera.width, camera.height)
    n = model.template.shape[0]
    px = np.round(xy[:n]).astype(int)
    inside = (px[:, 0] >= 0) & (px[:, 0] < camera.width) & (px[:, 1] >= 0) & (px[:, 1] < camera.height)
    visible = np.zeros(n, dtype=bool)
    zb = raster.depth[np.clip(px[:, 1], 0, camera.height - 1), np.clip(px[:, 0], 0, camera.width - 1)]
    visible[inside] = depth[:n][inside] <= zb[inside] + tolerance_m
    return visible
