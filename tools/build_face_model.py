"""Build ``fitting/face_models/assets/face_model.npz``, the built-in morphable face model.

Run ``python -m tools.build_face_model [OUT]`` from the repository root (default: the
packaged asset); offline only, the wheel does not ship ``tools``.
Steps, all deterministic: mediapipe FaceMesh (static image, refined, 478 points) on
scikit-image's ``astronaut`` photo; pixel x, y, z (z has roughly x's scale) to
metres with the outer eye corners 0.09 m apart; undo the photo's head roll and yaw
by making the landmark cloud as left/right symmetric as possible, symmetrise it,
tilt it a little chin-forward; close the photo's parted lips; triangulate
(tessellation 3-cliques minus two spurious nostril triangles, plus eye and mouth
fills); add the hand-designed modes of ``tools.face_model_modes``. The texture
is the photo's face crop with the backdrop that reaches the face edge inpainted.
The npz holds no timestamps: rebuilding on one platform gives identical bytes.
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment, minimize
from scipy.spatial.transform import Rotation

from capture_schema.atomic import atomic_write_bytes
from fitting.face_models import builtin as mm
from fitting.face_models.linear import EYE_FILL, MOUTH_FILL, SKIN
from fitting.geometry import vertex_normals
from tools import face_model_modes as modes

EYE_CORNER_DISTANCE_M = 0.09
#: Head pitch added to the photo's (degrees, chin forward): the photo's head is a
#: little tucked; this centres the rig's up (+20) and low (-15) rings on the face.
PITCH_UP_DEG = 6.0
#: FaceMesh's relative z is only "roughly" x's scale; 0.85 gave the least FaceMesh
#: disagreement on oblique renders (0.7-1.2 tried) and keeps depths anthropometric
#: (nose tip to outer eye corner ~34 mm, to the face outline at the ear ~80 mm).
DEPTH_SCALE = 0.85
SPURIOUS_TRIANGLES = ({49, 64, 129}, {279, 294, 358})
TEXTURE_MARGIN_PX = 10
OUTLINE_UV_INSET = 0.4


def detect_photo_landmarks() -> tuple[np.ndarray, np.ndarray]:
    """FaceMesh on the astronaut photo: (478, 3) pixel-scaled landmarks and the RGB photo."""
    import mediapipe as mp
    from skimage import data

    image = data.astronaut()
    h, w = image.shape[:2]
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1) as fm:
        result = fm.process(image)
    if not result.multi_face_landmarks:
        raise RuntimeError("FaceMesh found no face in the astronaut photo")
    lm = np.array([[p.x, p.y, p.z] for p in result.multi_face_landmarks[0].landmark], dtype=np.float64)
    # Normalised coordinates are corner-based: pixel column j spans [j, j + 1).
    return lm * np.array([w, h, w]), image


def tessellation_triangles() -> np.ndarray:
    """Triangles of FaceMesh's tessellation (3-cliques of its edge set), sorted, spurious ones dropped."""
    import mediapipe as mp

    adj: dict[int, set[int]] = {}
    for a, b in mp.solutions.face_mesh.FACEMESH_TESSELATION:
        adj.setdefault(a, set()).add(b)
        adj.setdefault(b, set()).add(a)
    tris = {tuple(sorted((a, b, c))) for a in adj for b in adj[a] if b > a for c in adj[a] & adj[b] if c > b}
    tris = {t for t in tris if set(t) not in SPURIOUS_TRIANGLES}
    return np.array(sorted(tris), dtype=np.int32)


def fill_triangles() -> tuple[np.ndarray, np.ndarray]:
    """Eye fills (fans from the iris centre) and the mouth fill (a strip between the inner lips)."""
    eye = []
    for upper, lower, iris in ((mm.RIGHT_EYE_UPPER, mm.RIGHT_EYE_LOWER, mm.RIGHT_IRIS),
                               (mm.LEFT_EYE_UPPER, mm.LEFT_EYE_LOWER, mm.LEFT_IRIS)):
        ring = list(upper) + list(lower[-2:0:-1])
        eye += [(iris[0], ring[k], ring[(k + 1) % len(ring)]) for k in range(len(ring))]
    up, lo = mm.LIPS_UPPER_INNER, mm.LIPS_LOWER_INNER
    mouth = [(up[0], up[1], lo[1]), (up[-1], lo[-2], up[-2])]
    for k in range(1, len(up) - 2):
        mouth += [(up[k], up[k + 1], lo[k + 1]), (up[k], lo[k + 1], lo[k])]
    return np.array(eye, dtype=np.int32), np.array(mouth, dtype=np.int32)


def orient_outwards(points: np.ndarray, faces: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Flip triangles whose normal points towards ``centre`` (a point inside the head)."""
    a, b, c = points[faces[:, 0]], points[faces[:, 1]], points[faces[:, 2]]
    n = np.cross(b - a, c - a)
    inward = np.einsum("ij,ij->i", n, (a + b + c) / 3.0 - centre) < 0
    out = faces.copy()
    out[inward] = out[inward][:, [0, 2, 1]]
    return out


def mirror_permutation(points: np.ndarray) -> np.ndarray:
    """Index of each point's left/right mirror partner (optimal assignment of x-mirrored points)."""
    mirrored = points * np.array([-1.0, 1.0, 1.0])
    cost = np.linalg.norm(points[:, None, :] - mirrored[None, :, :], axis=-1)
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(len(points), dtype=np.int64)
    perm[rows] = cols
    return perm


def _frontalise(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotate (roll, yaw) so the cloud is as mirror-symmetric as possible; return it and the mirror map."""
    pts = points - points.mean(axis=0)
    corners = pts[list(mm.OUTER_EYE_CORNERS)]
    roll0 = -np.arctan2(corners[1, 1] - corners[0, 1], corners[1, 0] - corners[0, 0])
    perm = mirror_permutation(Rotation.from_euler("z", roll0).apply(pts))

    def asymmetry(angles: np.ndarray) -> float:
        q = Rotation.from_euler("zy", angles).apply(pts)
        q -= q.mean(axis=0)
        return float(np.mean(np.sum((q - q[perm] * np.array([-1.0, 1.0, 1.0])) ** 2, axis=1)))

    best = minimize(asymmetry, np.array([roll0, 0.0]), method="Nelder-Mead",
                    options={"xatol": 1e-7, "fatol": 1e-12, "maxiter": 2000})
    q = Rotation.from_euler("zy", best.x).apply(pts)
    q -= q.mean(axis=0)
    perm = mirror_permutation(q)
    if not np.array_equal(perm[perm], np.arange(len(perm))):
        raise RuntimeError("mirror map is not an involution")
    return q, perm


def build_template(photo_points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Metric, frontal, symmetric template (478, 3) and its mirror map."""
    q, perm = _frontalise(photo_points * np.array([1.0, 1.0, DEPTH_SCALE]))
    q = Rotation.from_euler("x", -PITCH_UP_DEG, degrees=True).apply(q)
    sym = 0.5 * (q + q[perm] * np.array([-1.0, 1.0, 1.0]))
    scale = EYE_CORNER_DISTANCE_M / np.linalg.norm(sym[mm.OUTER_EYE_CORNERS[0]] - sym[mm.OUTER_EYE_CORNERS[1]])
    template = sym * scale
    template -= template[:468].mean(axis=0) * np.array([0.0, 1.0, 1.0])
    return template, perm


def remove_backdrop(crop: np.ndarray) -> np.ndarray:
    """Inpaint the photo's grey backdrop and dark collar where they reach into the crop.

    Both are colourless regions touching the crop's border; left in, they show up as
    grey patches on the cheek in oblique views, where the photo's face edge is thin.
    """
    import cv2

    hsv = cv2.cvtColor(crop, cv2.COLOR_RGB2HSV_FULL)
    colourless = ((hsv[..., 1] < 0.16 * 255) | (hsv[..., 2] < 0.2 * 255)).astype(np.uint8)
    _, labels = cv2.connectedComponents(colourless, connectivity=4)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    mask = np.isin(labels, border[border > 0]).astype(np.uint8)
    mask = cv2.dilate(mask, np.ones((3, 3), np.uint8))
    return cv2.inpaint(crop, mask, 4, cv2.INPAINT_TELEA)


def texture_and_uv(photo: np.ndarray, photo_points: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Face crop of the photo and each landmark's position in it.

    Two nudges keep the photo's surroundings out of the skin: inner-lip points move
    a little into the lips (off the teeth), outline points a little inwards (off the
    background, collar and ears at the face's edge).
    """
    xy = photo_points[:, :2].copy()
    on_oval = np.zeros(len(xy), dtype=bool)
    on_oval[list(mm.FACE_OVAL)] = True
    for i in mm.FACE_OVAL:
        nbrs = np.unique(faces[(faces == i).any(axis=1)])
        inner = nbrs[~on_oval[nbrs]]
        xy[i] += OUTLINE_UV_INSET * (photo_points[inner, :2].mean(axis=0) - photo_points[i, :2])
    for inner, outer in ((mm.LIPS_UPPER_INNER, mm.LIPS_UPPER_OUTER), (mm.LIPS_LOWER_INNER, mm.LIPS_LOWER_OUTER)):
        idx_i, idx_o = list(inner[1:-1]), list(outer[1:-1])
        xy[idx_i] += 0.2 * (xy[idx_o] - xy[idx_i])
    x0, y0 = np.floor(xy.min(axis=0)).astype(int) - TEXTURE_MARGIN_PX
    x1, y1 = np.ceil(xy.max(axis=0)).astype(int) + TEXTURE_MARGIN_PX
    x0, y0 = max(x0, 0), max(y0, 0)
    crop = remove_backdrop(np.ascontiguousarray(photo[y0:y1, x0:x1]))
    uv = (xy - np.array([x0, y0])) / np.array([crop.shape[1], crop.shape[0]])
    return crop, uv


def build_arrays() -> dict[str, np.ndarray]:
    """Everything the npz holds, computed from the photo."""
    photo_points, photo = detect_photo_landmarks()
    template, perm = build_template(photo_points)
    skin = tessellation_triangles()
    eye, mouth = fill_triangles()
    centre = np.array([0.0, 0.0, template[:, 2].max()])
    faces = orient_outwards(template, np.concatenate([skin, eye, mouth]), centre)
    labels = np.concatenate([np.full(len(skin), SKIN), np.full(len(eye), EYE_FILL),
                             np.full(len(mouth), MOUTH_FILL)]).astype(np.int8)
    graph = modes.FaceGraph(template, faces[labels == SKIN], perm)
    closed = template + modes.close_lips(graph)
    closed = 0.5 * (closed + closed[perm] * np.array([-1.0, 1.0, 1.0]))
    closed -= closed[:468].mean(axis=0) * np.array([0.0, 1.0, 1.0])
    graph = modes.FaceGraph(closed, faces[labels == SKIN], perm)
    normals = vertex_normals(closed, faces[labels == SKIN])
    id_names, id_basis = modes.identity_modes(graph, normals)
    ex_names, ex_basis = modes.expression_modes(graph, normals)
    texture, uv = texture_and_uv(photo, photo_points, skin)
    return {
        "template": closed.astype(np.float64),
        "faces": faces.astype(np.int32),
        "face_labels": labels,
        "uv": uv.astype(np.float64),
        "mirror": perm.astype(np.int32),
        "identity_basis": id_basis.astype(np.float64),
        "expression_basis": ex_basis.astype(np.float64),
        "identity_names": np.array(id_names),
        "expression_names": np.array(ex_names),
        "texture": texture.astype(np.uint8),
    }


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``np.load``-able compressed npz with fixed zip timestamps (reproducible bytes)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())
    return out.getvalue()


def build_face_model(out_path: Path | str) -> Path:
    """Build the model and write it (atomically) to ``out_path``, an ``.npz``."""
    path = atomic_write_bytes(out_path, npz_bytes(build_arrays()))
    path.chmod(0o644)  # package data: readable like any other source file
    return path


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    default = Path(mm.__file__).resolve().parent / mm.ASSET
    print(build_face_model(args[0] if args else default))


if __name__ == "__main__":
    main()
