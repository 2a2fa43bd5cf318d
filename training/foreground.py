"""Training images and head masks: the fitted mesh tells grabCut where the head is.

``train_members`` makes a sample's ``train.png`` (the image resized so its longer
side is the training resolution, ``training.shards.format.train_size``, INTER_AREA) and
``mask.png`` (0/255 at the same size).

The fitted 3DMM covers the face only (forehead to chin). Where the fit's head rotation
is known, the upper half of the face (brows up, in the model frame) is also carried
``HEAD_DEPTH_M`` and half that towards the back of the head, and the convex hull of
the face and those copies stands in for the skull and hair: in an oblique view the back
of the head reaches far beyond the face, and dark hair left as *probable background*
was cut away (measured on the 12-subject test fixture: held-in PSNR of the prior fell to
9-14 dB in 30-60 degree views whose masks dropped the hair). The lower half carried down
(``neck_proxy``) is *sure* background away from the face, so skin-coloured neck is not
pulled in. The silhouette is then grown
by ``DILATE_FRACTION`` of the face size and marked *probable* foreground; a band along
the image border is *sure* background and everything else *probable* background. grabCut
then settles the boundary from the colours. Its k-means initialisation draws from
OpenCV's per-thread RNG, so the RNG is seeded before every call: the same image
and fit always give the same mask bytes.
"""

from __future__ import annotations

import cv2
import numpy as np

from capture_schema.cameras import Camera
from training.shards.format import MASK_MEMBER, TRAIN_MEMBER, train_block, train_size

PNG_COMPRESSION = 3  # a fixed zlib level: PNG bytes are reproducible
DILATE_FRACTION = 0.15
#: How far the head reaches behind the face mesh; the prior frames its crops with the same
#: reach (``PriorConfig.head_depth``).
HEAD_DEPTH_M = 0.12
#: How far below the face the neck proxy reaches (sure background).
NECK_DROP_M = 0.12
#: The neck proxy stays this fraction of the face size away from the face's silhouette.
NECK_MARGIN_FRACTION = 0.05
BORDER_FRACTION = 0.03
GRABCUT_ITERATIONS = 5
RNG_SEED = 0
_SHIFT = 4  # fixed-point bits for sub-pixel polygon filling


def silhouette(camera: Camera, vertices: np.ndarray, faces: np.ndarray | None, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W) mask (0/1) of the mesh projected through ``camera``, drawn at ``size`` = (W, H).

    ``size`` may differ from the camera's image size (a resized training image): pixel
    coordinates are rescaled with the OpenCV pixel-centre convention. Without ``faces``
    the convex hull of the projected vertices stands in for the mesh.
    """
    width, height = size
    out = np.zeros((height, width), np.uint8)
    vertices = np.asarray(vertices, dtype=np.float64)
    if not np.isfinite(vertices).all() or (camera.depth(vertices) <= 0).any():
        return out
    pix = camera.project(vertices)
    pix = (pix + 0.5) * (width / camera.width, height / camera.height) - 0.5
    fixed = np.round(pix * (1 << _SHIFT)).astype(np.int32)
    if faces is None:
        cv2.fillConvexPoly(out, cv2.convexHull(fixed), 1, cv2.LINE_8, _SHIFT)
        return out
    for tri in fixed[np.asarray(faces, dtype=np.intp)]:
        cv2.fillConvexPoly(out, tri, 1, cv2.LINE_8, _SHIFT)
    return out


def _halves(vertices: np.ndarray, rotation: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Upper and lower half of the face (model y points down, every FaceModel), and the posed
    unit directions towards the back of the head (model +z) and down (model +y)."""
    vertices = np.asarray(vertices, dtype=np.float64)
    rotation = np.asarray(rotation, dtype=np.float64)
    height = (vertices @ rotation)[:, 1]
    middle = np.median(height)
    return vertices[height < middle], vertices[height >= middle], rotation[:, 2], rotation[:, 1]


def head_proxy(vertices: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Points standing in for skull and hair: the face's upper half carried ``HEAD_DEPTH_M`` and
    half that towards the back of the head (``rotation``: the fit's model-to-world rotation)."""
    upper, _, back, _ = _halves(vertices, rotation)
    return np.concatenate([upper + HEAD_DEPTH_M * back, upper + 0.5 * HEAD_DEPTH_M * back])


def neck_proxy(vertices: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Points standing in for the neck: the face's lower half carried ``NECK_DROP_M`` (from half
    to all of it) down and up to half ``HEAD_DEPTH_M`` back. Sure background outside the
    face itself, so skin-coloured neck is not pulled into a head mask."""
    _, lower, back, down = _halves(vertices, rotation)
    shifts = [f * NECK_DROP_M * down + b * HEAD_DEPTH_M * back for f in (0.5, 1.0) for b in (0.0, 0.5)]
    return np.concatenate([lower + s for s in shifts])


def head_mask(image_bgr: np.ndarray, mesh_mask: np.ndarray, head: np.ndarray | None = None,
              neck: np.ndarray | None = None) -> np.ndarray | None:
    """uint8 (H, W) head mask (0/255) of ``image_bgr`` seeded by ``mesh_mask`` (the face) and
    optionally ``head`` (more probable foreground) and ``neck`` (sure background where it is not
    face); None when the mesh is not in view."""
    height, width = mesh_mask.shape
    ys, xs = np.nonzero(mesh_mask)
    if len(xs) == 0:
        return None
    face_px = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    radius = max(1, int(round(DILATE_FRACTION * face_px)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    grown = cv2.dilate(mesh_mask if head is None else np.maximum(mesh_mask, head), kernel)
    labels = np.full((height, width), cv2.GC_PR_BGD, np.uint8)
    labels[grown > 0] = cv2.GC_PR_FGD
    if neck is not None:  # never on the face or a margin around it: the fit may be a few px off
        margin = max(1, int(round(NECK_MARGIN_FRACTION * face_px)))
        near_face = cv2.dilate(mesh_mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1,) * 2))
        labels[(neck > 0) & (near_face == 0)] = cv2.GC_BGD
    band = max(1, int(round(BORDER_FRACTION * max(width, height))))
    labels[:band], labels[-band:], labels[:, :band], labels[:, -band:] = (cv2.GC_BGD,) * 4
    if not (labels == cv2.GC_PR_FGD).any():
        return None
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(RNG_SEED)
    cv2.grabCut(np.ascontiguousarray(image_bgr), labels, None, bgd, fgd, GRABCUT_ITERATIONS, cv2.GC_INIT_WITH_MASK)
    return np.where((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD), 255, 0).astype(np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def train_members(data: bytes, camera: Camera, resolution: int, vertices: np.ndarray | None,
                  faces: np.ndarray | None, rotation: np.ndarray | None = None) -> tuple[dict[str, bytes] | None, dict | None]:
    """``train.png`` (+ ``mask.png`` when ``vertices``, the posed mesh in world metres, are given) and
    the json's ``train`` block; (None, None) when ``data`` does not decode. ``rotation`` (the fit's
    model-to-world head rotation) adds ``head_proxy`` to the mask's seed.

    EXIF orientation is ignored so pixels stay in the calibrated sensor layout.
    """
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        return None, None
    height, width = image.shape[:2]
    size = train_size(width, height, resolution)  # the loader resizes an original to the same size
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    members = {TRAIN_MEMBER: encode_png(small)}
    mask = None
    if vertices is not None:
        head = neck = None
        if rotation is not None and np.isfinite(rotation).all():
            head = silhouette(camera, np.concatenate([vertices, head_proxy(vertices, rotation)]), None, size)
            neck = silhouette(camera, neck_proxy(vertices, rotation), None, size)
        mask = head_mask(small, silhouette(camera, vertices, faces, size), head, neck)
    if mask is not None:
        members[MASK_MEMBER] = encode_png(mask)
    return members, train_block(width, height, resolution, mask=mask is not None)
