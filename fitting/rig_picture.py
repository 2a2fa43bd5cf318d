"""A picture of a rig's cameras around the head, to see at a glance that they look at it.

A calibration can pass its reprojection gate while the rig is not what its names
say (two cameras' ids swapped, a camera mounted upside down or aimed past the
head); a 3D drawing of the frusta shows that at once. Each camera is a frustum (apex at its centre, image
rectangle from its intrinsics) with its id and a filled triangle on the image's
top edge (as COLMAP's GUI draws it), so a camera rolled by 180 degrees stands
out. The scene is turned so that the cameras' mean image-up is up on the page
and the viewer stands behind the rig's front, slightly above it.

Matplotlib's Agg canvas with its default style and no PNG timestamp: the same
cameras and mesh give the same bytes (``DESIGN.md``: re-running a step on
unchanged input gives byte-identical output).
"""

from __future__ import annotations

import io
from typing import Mapping

import numpy as np

from capture_schema.cameras import Camera

#: Frustum depth as a fraction of the median camera-to-target distance.
FRUSTUM_FRACTION = 0.22
#: Most triangles / points drawn for the head (matplotlib sorts every polygon each draw).
MAX_FACES = 3000
MAX_POINTS = 2500
#: Smallest eigenvalue of the optical-axes normal matrix per camera below which the axes
#: do not pin down a point (parallel axes, a single camera): about a 1 degree spread.
MIN_AXES_SPREAD = 3e-4
#: Picture size (width, height) in pixels: about the width Dagster's UI gives a metadata image.
PICTURE_PX = (640, 540)
DPI = 100
#: Dark, mutually distinct colours (one per camera, cycled): a 13-camera rig gets no repeats.
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#e07000", "#9467bd", "#8c564b", "#d0309f", "#0e8c99", "#555555",
           "#8c8a0a", "#c49a00", "#000000", "#6a3d9a", "#b8005c")


def _check_cameras(cameras: Mapping[str, Camera]) -> None:
    if not isinstance(cameras, Mapping) or not cameras:
        raise ValueError("cameras must be a non-empty mapping of camera id to Camera")
    bad = [str(k) for k, v in cameras.items() if not isinstance(v, Camera)]
    if bad:
        raise ValueError(f"cameras {', '.join(bad)} are not capture_schema.cameras.Camera objects")


def rig_target(cameras: Mapping[str, Camera]) -> np.ndarray:
    """The world point (3,) closest, in least squares, to every camera's optical axis: where the rig looks.

    Solves ``sum_i (I - d_i d_i^T) (p - c_i) = 0`` for centres ``c_i`` and viewing directions
    ``d_i`` (the third row of ``R``). Raises ``ValueError`` when the axes are (nearly) parallel,
    as for a single camera, because no point is then singled out.
    """
    _check_cameras(cameras)
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for cam in cameras.values():
        d = cam.R[2] / np.linalg.norm(cam.R[2])
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ cam.center
    if np.linalg.eigvalsh(A)[0] < MIN_AXES_SPREAD * len(cameras):
        raise ValueError(f"the optical axes of the {len(cameras)} camera(s) are (nearly) parallel: "
                         "they do not meet near one point, so there is no rig target")
    return np.linalg.solve(A, b)


def _rig_axes(cameras: Mapping[str, Camera], target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World ``up`` (the cameras' mean image-up, -y of OpenCV) and ``front`` (from the target towards
    the cameras, orthogonal to up): the rig's own frame, whatever its world frame is."""
    ups = np.array([-cam.R[1] for cam in cameras.values()])
    up = ups.mean(axis=0)
    if np.linalg.norm(up) < 0.3:  # cameras rolled every which way: fall back to the first one's
        up = ups[0]
    up = up / np.linalg.norm(up)
    towards = np.array([cam.center - target for cam in cameras.values()])
    lengths = np.linalg.norm(towards, axis=1, keepdims=True)
    towards = towards / np.where(lengths > 0, lengths, 1.0)
    front = towards.mean(axis=0)
    for candidate in (front, towards[0], -cameras[next(iter(cameras))].R[2], np.cross(up, [1.0, 0.0, 0.0]),
                      np.cross(up, [0.0, 0.0, 1.0])):
        flat = candidate - (candidate @ up) * up
        if np.linalg.norm(flat) > 0.2 * max(np.linalg.norm(candidate), 1e-12):
            return up, flat / np.linalg.norm(flat)
    raise AssertionError("unreachable: up is orthogonal to x or z")


def place_head(cameras: Mapping[str, Camera], vertices: np.ndarray, target: np.ndarray | None = None) -> np.ndarray:
    """Model-frame head vertices (N, 3) (face towards -z, y down) moved to ``target`` (default
    ``rig_target``), upright for the cameras and facing the rig's front: a stand-in before any fit."""
    _check_cameras(cameras)
    vertices = _vertices(vertices)
    target = rig_target(cameras) if target is None else np.asarray(target, np.float64).reshape(3)
    up, front = _rig_axes(cameras, target)
    y, z = -up, -front
    rotation = np.stack([np.cross(y, z), y, z], axis=1)  # columns: model x, y, z in the world
    return (vertices - vertices.mean(axis=0)) @ rotation.T + target


def _vertices(vertices: np.ndarray) -> np.ndarray:
    array = np.asarray(vertices)
    if array.ndim != 2 or array.shape[1] != 3 or len(array) == 0 or array.dtype.kind not in "iuf":
        raise ValueError(f"vertices must be a non-empty (N, 3) array of numbers, got shape {array.shape} "
                         f"dtype {array.dtype}")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError("vertices must be finite (a failed fit leaves NaN: pass None to draw cameras only)")
    return array


def _faces(faces: np.ndarray, n_vertices: int) -> np.ndarray:
    array = np.asarray(faces)
    if array.ndim != 2 or array.shape[1] != 3 or array.dtype.kind not in "iu":
        raise ValueError(f"faces must be an (F, 3) array of vertex indices, got shape {array.shape} dtype {array.dtype}")
    if len(array) and (array.min() < 0 or array.max() >= n_vertices):
        raise ValueError(f"faces refer to vertex {int(array.max()) if array.max() >= n_vertices else int(array.min())},"
                         f" outside the {n_vertices} vertices given")
    return array.astype(np.int64)


def _frustum(cam: Camera, depth: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World corners (4, 3) of the image rectangle at ``depth`` (top-left, top-right, bottom-right,
    bottom-left), and the triangle (3, 3) standing on its top edge, pointing to image-up."""
    w, h = cam.width, cam.height
    pixels = np.array([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]])
    rays = np.column_stack([(pixels[:, 0] - cam.cx) / cam.fx, (pixels[:, 1] - cam.cy) / cam.fy, np.ones(4)])

    def to_world(points: np.ndarray) -> np.ndarray:  # camera -> world: R^T x + centre, row by row
        return points @ cam.R + cam.center

    corners = to_world(depth * rays)
    top_mid = (rays[0] + rays[1]) / 2
    half = 0.35 * (rays[1][0] - rays[0][0])  # the triangle's half-width, a fraction of the image width
    tri = np.array([top_mid - [half, 0, 0], top_mid + [half, 0, 0], top_mid - [0, 1.3 * half, 0]])
    return corners, to_world(depth * tri), cam.center


def rig_picture(cameras: Mapping[str, Camera], vertices: np.ndarray | None = None, faces: np.ndarray | None = None,
                title: str = "") -> bytes:
    """PNG bytes of the cameras as labelled frusta around the head mesh (or points, without ``faces``).

    ``vertices`` (N, 3) are in the cameras' world frame (metres); ``faces`` (F, 3) index them.
    """
    _check_cameras(cameras)
    head = None if vertices is None else _vertices(vertices)
    if faces is not None and head is None:
        raise ValueError("faces were given without vertices")
    tris = None if faces is None else _faces(faces, len(head))
    centres = np.array([cam.center for cam in cameras.values()])
    try:
        target = rig_target(cameras) if head is None else head.mean(axis=0)
    except ValueError:  # one camera, or parallel axes: the frusta alone still say a lot
        target = centres.mean(axis=0) + np.mean([cam.R[2] for cam in cameras.values()], axis=0)
    distance = float(np.median(np.linalg.norm(centres - target, axis=1)))
    depth = FRUSTUM_FRACTION * distance if distance > 1e-6 else 0.1
    up, front = _rig_axes(cameras, target)
    # Display frame: x to the right of a viewer at the front, y into the scene, z up (a proper rotation).
    into = -front
    to_display = np.stack([np.cross(into, up), into, up])

    def show(points: np.ndarray) -> np.ndarray:
        return (np.asarray(points, np.float64) - target) @ to_display.T

    from matplotlib import style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from mpl_toolkits.mplot3d.art3d import Line3DCollection, Poly3DCollection

    with style.context("default"):
        fig = Figure(figsize=(PICTURE_PX[0] / DPI, PICTURE_PX[1] / DPI), dpi=DPI)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(projection="3d", computed_zorder=False)
        fig.subplots_adjust(left=-0.03, right=0.96, bottom=0.0, top=0.96)
        drawn = [np.zeros((1, 3))]
        if head is not None:
            shown = show(head)
            drawn.append(shown)
            if tris is not None and len(tris):
                step = -(-len(tris) // MAX_FACES)
                ax.add_collection3d(Poly3DCollection(shown[tris[::step]], facecolors=(0.93, 0.76, 0.62),
                                                     edgecolors=(0.6, 0.45, 0.35, 0.25), linewidths=0.2,
                                                     alpha=0.55, shade=True, zorder=1))
            else:
                step = -(-len(shown) // MAX_POINTS)
                ax.scatter(*shown[::step].T, s=2, color=(0.75, 0.55, 0.4), alpha=0.6, depthshade=False, zorder=1)
        for i, (cam_id, cam) in enumerate(cameras.items()):
            colour = PALETTE[i % len(PALETTE)]
            corners, triangle, apex = (show(p) for p in _frustum(cam, depth))
            edges = [[apex, c] for c in corners] + [[corners[k], corners[(k + 1) % 4]] for k in range(4)]
            ax.add_collection3d(Line3DCollection(edges, colors=[colour], linewidths=1.1, zorder=3))
            ax.add_collection3d(Poly3DCollection([triangle], facecolors=[colour], edgecolors=[colour], zorder=3))
            axis_end = show(cam.center + cam.R[2] * max(float(cam.R[2] @ (target - cam.center)), depth))
            ax.plot(*np.stack([apex, axis_end]).T, color=colour, linewidth=0.6, linestyle=(0, (2, 3)), alpha=0.7,
                    zorder=2)
            outward = apex / max(np.linalg.norm(apex), 1e-9)
            label = apex + 0.35 * depth * outward
            ax.text(*label, cam_id, color=colour, fontsize=7.5, fontweight="bold", ha="center", va="center",
                    zorder=4, bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "edgecolor": "none",
                                    "alpha": 0.7})
            drawn += [corners, apex[None], triangle, label[None]]
        points = np.concatenate(drawn)
        low, high = points.min(axis=0), points.max(axis=0)
        pad = 0.04 * float(np.max(high - low)) + 1e-6
        low, high = low - pad, high + pad
        ax.set_xlim(low[0], high[0])
        ax.set_ylim(low[1], high[1])
        ax.set_zlim(low[2], high[2])
        ax.set_box_aspect(tuple(high - low), zoom=1.15)
        ax.view_init(elev=30, azim=-66)
        ax.set_xlabel("right (m)", fontsize=7, labelpad=-6)
        ax.set_ylabel("depth (m)", fontsize=7, labelpad=-6)
        ax.set_zlabel("up (m)", fontsize=7, labelpad=-8)
        ax.tick_params(labelsize=6, pad=-2)
        for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
            axis.set_pane_color((0.93, 0.93, 0.93, 1.0))
        caption = title or f"{len(cameras)} cameras"
        origin = "the head's centre" if head is not None else "where the cameras look"
        fig.suptitle(f"{caption}\n(triangle = image top; dashed = optical axis; metres from {origin})",
                     fontsize=8.5, y=0.995)
        drawing = io.BytesIO()
        fig.savefig(drawing, format="png", dpi=DPI, metadata={"Software": None})
    return _small_png(drawing.getvalue())


def _small_png(png: bytes) -> bytes:
    """The picture in 256 colours (a quarter of the bytes of matplotlib's RGBA PNG, with no visible
    change to lines and text): it travels inline in Dagster's event log, once per materialisation."""
    from PIL import Image  # pillow: a matplotlib dependency

    with Image.open(io.BytesIO(png)) as image:
        palette = image.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE,
                                                dither=Image.Dither.NONE)
    out = io.BytesIO()
    palette.save(out, format="PNG", optimize=True)
    return out.getvalue()


def stand_in_picture(cameras: Mapping[str, Camera]) -> bytes:
    """The rig before any fit: the frusta around the built-in model's neutral face placed where the optical
    axes meet (``place_head``); the frusta alone when they meet nowhere (one camera, parallel axes).

    The built-in model, not the configured one: it ships with the code and loads at once, where the
    configured model may be a large licensed file the calibration step otherwise never needs."""
    from fitting.face_models.builtin import builtin_face_model

    model = builtin_face_model()
    try:
        head = place_head(cameras, model.vertices())
    except ValueError:
        return rig_picture(cameras, title="cameras of the rig (their optical axes do not meet)")
    return rig_picture(cameras, head, model.faces,
                       title="cameras of the rig; head: the built-in neutral face where the optical axes meet")
