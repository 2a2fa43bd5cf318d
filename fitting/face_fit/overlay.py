"""A picture of a fit for people: the fitted mesh and landmarks drawn over the photo.

Detected landmarks are green dots, the fitted model's landmarks red dots, and
the fitted mesh a thin wireframe, so a reviewer sees at a glance whether the
model sits on the face (and where a detection disagreed with the other views).
"""

from __future__ import annotations

import cv2
import numpy as np

from capture_schema.cameras import Camera

MAX_WIRE_EDGES = 6000


def mesh_edges(faces: np.ndarray) -> np.ndarray:
    """Unique undirected edges (E, 2) of a triangle mesh."""
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    return np.unique(np.sort(e, axis=1), axis=0)


def draw_fit_overlay(image_rgb: np.ndarray, camera: Camera, vertices: np.ndarray, faces: np.ndarray,
                     detected: np.ndarray | None, fitted: np.ndarray | None) -> np.ndarray:
    """RGB uint8 copy of ``image_rgb`` with the posed mesh (world ``vertices``) and landmarks drawn."""
    out = np.ascontiguousarray(image_rgb.copy())
    if np.isfinite(vertices).all():
        pix = camera.project(vertices)
        front = camera.depth(vertices) > 0
        edges = mesh_edges(faces)
        edges = edges[front[edges].all(axis=1)]
        if len(edges) > MAX_WIRE_EDGES:  # big meshes (ICT, FLAME): a regular subset reads better
            edges = edges[:: int(np.ceil(len(edges) / MAX_WIRE_EDGES))]
        wire = np.zeros_like(out)
        lines = np.round(pix[edges] * 4).astype(np.int32)  # 2 bits of sub-pixel precision
        cv2.polylines(wire, list(lines), False, (90, 160, 255), 1, cv2.LINE_AA, shift=2)
        mask = wire.any(axis=2)
        out[mask] = (0.55 * out[mask] + 0.45 * wire[mask]).astype(np.uint8)
    radius = max(1, round(max(image_rgb.shape[:2]) / 400))
    for pts, color in ((detected, (40, 220, 60)), (fitted, (235, 40, 40))):
        if pts is None:
            continue
        for x, y in np.asarray(pts)[np.isfinite(pts).all(axis=1)]:
            cv2.circle(out, (int(round(x * 4)), int(round(y * 4))), radius * 4, color, -1, cv2.LINE_AA, shift=2)
    return out


def session_overlay(session_fit, session_dir, cameras: dict[str, Camera], landmarks,
                    faces: np.ndarray) -> tuple[np.ndarray | None, int, int]:
    """The overlay of the frame and view worth showing (``session.overlay_view``): RGB image
    (None when that capture image is missing), frame index, view index."""
    from fitting.face_fit.session import overlay_view
    from fitting.landmarks.detect import read_image_rgb, session_image_path

    e, c = overlay_view(session_fit, cameras)
    path = session_image_path(session_dir, session_fit.expressions[e], session_fit.cameras[c])
    if path is None:
        return None, e, c
    fit = session_fit.fit
    image = draw_fit_overlay(read_image_rgb(path), cameras[session_fit.cameras[c]], fit.vertices[e], faces,
                             landmarks.landmarks[e, c][fit.landmark_ids], fit.projected[e, c])
    return image, e, c
