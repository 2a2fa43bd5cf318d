"""ICT-FaceKit (USC ICT, MIT licence) as a ``LinearFaceModel``, read from its packaged npz files.

The files (``TOPOLOGY_FILE``, ``IDENTITY_FILES``, ``EXPRESSION_FILE``) hold the "skin"
part of ICT's light model: vertices 0..14061 (face, head and neck, mouth socket, eye
sockets), quads, 100 identity modes (coefficients ~ N(0, 1)) and 53 ARKit-named
expression blendshapes, all as float16 deltas in centimetres. Nothing is shipped
with the project; ``load_ict_model(directory)`` reads a configured directory, and
``import_ict_obj`` (``fitting.face_models.ict_obj``) writes the files from ICT's
original OBJ release.

ICT's frame is y up with the face looking towards +z and the subject's left at +x
(its left eye's 68-point vertices have x > 0). The project's frame is x towards the
subject's left, y down, the face looking towards -z, in metres, so the conversion is
the proper rotation ``(x, y, z) -> (x, -y, -z)`` (no mirroring: quads keep their
outward orientation) and a factor 0.01. Quads are split into two triangles along
their 0-2 diagonal; a quad with a repeated index (a triangle stored as a quad) gives
one triangle. The mediapipe landmark embedding is computed from geometry at load
time (``fitting.face_models.ict_embedding``), on the face region only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fitting.face_models.ict_embedding import build_mediapipe_embedding
from fitting.face_models.linear import LinearFaceModel

MODEL_NAME = "ict-facekit"
TOPOLOGY_FILE = "ict_skin_topology.npz"
EXPRESSION_FILE = "ict_skin_expression53_f16.npz"
#: (file, first mode, number of modes): the 100 identity modes in three files (a
#: model with fewer modes fills them in order and may leave later files out).
IDENTITY_FILES = (
    ("ict_skin_identity000-033_f16.npz", 0, 34),
    ("ict_skin_identity034-066_f16.npz", 34, 33),
    ("ict_skin_identity067-099_f16.npz", 67, 33),
)
N_IDENTITY = 100
REGION_NAMES = ("face", "head_and_neck", "mouth_socket", "eye_socket_left", "eye_socket_right")
CM_TO_M = 0.01
#: ICT (y up, looking +z) -> project (y down, looking -z): a rotation of pi about x.
ICT_TO_MODEL_AXES = np.diag([1.0, -1.0, -1.0])


class IctFormatError(ValueError):
    """An ICT file is missing, lacks a key, or holds an array of the wrong shape."""


@dataclass(frozen=True)
class IctArrays:
    """The packaged files as read: ICT's own frame and units (cm), float32 deltas."""

    template: np.ndarray  # (N, 3)
    quads: np.ndarray  # (F, 4) int64
    identity: np.ndarray  # (K, N, 3)
    expression: np.ndarray  # (E, N, 3)
    expression_names: tuple[str, ...]
    region_names: tuple[str, ...]
    region_ranges: np.ndarray  # (R, 2) [start, stop)
    landmarks68: np.ndarray  # (68,) vertex ids


def _load_npz(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise IctFormatError(f"ICT model file not found: {path}")
    if path.stat().st_size == 0:
        raise IctFormatError(f"ICT model file {path} is empty")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise IctFormatError(f"{path} is a single .npy array, not an .npz archive")
        with loaded as data:
            missing = [k for k in keys if k not in data.files]
            if missing:
                raise IctFormatError(f"{path} lacks key(s) {', '.join(missing)} (has {', '.join(data.files) or 'none'})")
            return {k: data[k] for k in keys}
    except IctFormatError:
        raise
    except Exception as exc:  # a truncated or non-npz file (zipfile.BadZipFile, EOFError, ...)
        raise IctFormatError(f"cannot read {path} as an npz file: {type(exc).__name__}: {exc}") from None


def _numeric(arr: np.ndarray, dtype: type, where: str) -> np.ndarray:
    """``arr`` as ``dtype``; text or other non-numbers become an ``IctFormatError`` naming file and key."""
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise IctFormatError(f"{where} holds {arr.dtype} values, expected numbers")
    return arr.astype(dtype)


def _check_shape(arr: np.ndarray, expected: tuple, where: str) -> None:
    if arr.ndim != len(expected) or any(e is not None and s != e for s, e in zip(arr.shape, expected)):
        shown = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise IctFormatError(f"{where} has shape {arr.shape}, expected {shown}")


def read_ict_arrays(directory: str | Path, n_identity: int = N_IDENTITY) -> IctArrays:
    """Read and check the packaged files (only the identity files ``n_identity`` needs)."""
    directory = Path(directory)
    if not 0 <= n_identity <= N_IDENTITY:
        raise ValueError(f"n_identity must be in 0..{N_IDENTITY}, got {n_identity}")
    topo = _load_npz(
        directory / TOPOLOGY_FILE, ("v_template", "faces", "region_ranges", "region_names", "landmarks_multipie68")
    )
    template = _numeric(topo["v_template"], np.float32, f"{TOPOLOGY_FILE}:v_template")
    _check_shape(template, (None, 3), f"{TOPOLOGY_FILE}:v_template")
    n = len(template)
    quads = _numeric(topo["faces"], np.int64, f"{TOPOLOGY_FILE}:faces")
    _check_shape(quads, (None, 4), f"{TOPOLOGY_FILE}:faces")
    if quads.size and (quads.min() < 0 or quads.max() >= n):
        raise IctFormatError(f"{TOPOLOGY_FILE}:faces refers to vertices outside 0..{n - 1}")
    lm68 = _numeric(topo["landmarks_multipie68"], np.int64, f"{TOPOLOGY_FILE}:landmarks_multipie68")
    _check_shape(lm68, (68,), f"{TOPOLOGY_FILE}:landmarks_multipie68")
    if lm68.min() < 0 or lm68.max() >= n:
        raise IctFormatError(f"{TOPOLOGY_FILE}:landmarks_multipie68 refers to vertices outside 0..{n - 1}")
    _check_shape(topo["region_names"], (None,), f"{TOPOLOGY_FILE}:region_names")
    ranges = _numeric(topo["region_ranges"], np.int64, f"{TOPOLOGY_FILE}:region_ranges")
    _check_shape(ranges, (len(topo["region_names"]), 2), f"{TOPOLOGY_FILE}:region_ranges")

    expr = _load_npz(directory / EXPRESSION_FILE, ("expr_dirs", "expr_names"))
    _check_shape(expr["expr_dirs"], (None, n, 3), f"{EXPRESSION_FILE}:expr_dirs")
    _numeric(expr["expr_dirs"][:0], np.float32, f"{EXPRESSION_FILE}:expr_dirs")
    _check_shape(expr["expr_names"], (len(expr["expr_dirs"]),), f"{EXPRESSION_FILE}:expr_names")

    parts, have = [], 0
    for name, first, count in IDENTITY_FILES:
        if have >= n_identity:
            break
        data = _load_npz(directory / name, ("id_dirs", "first_mode"))
        dirs = data["id_dirs"]
        _check_shape(dirs, (None, n, 3), f"{name}:id_dirs")
        _numeric(dirs[:0], np.float32, f"{name}:id_dirs")
        first_mode = _numeric(np.asarray(data["first_mode"]), np.int64, f"{name}:first_mode")
        if first_mode.size != 1:
            raise IctFormatError(f"{name}:first_mode has shape {first_mode.shape}, expected one integer")
        if int(first_mode.reshape(())) != have or first != have:
            raise IctFormatError(f"{name} starts at identity mode {int(first_mode.reshape(()))}, expected {have}")
        parts.append(dirs[: n_identity - have].astype(np.float32))
        have += len(parts[-1])
        if len(dirs) < count and have < n_identity:
            raise IctFormatError(f"{name} holds {len(dirs)} identity modes, fewer than the {n_identity} asked for")
    identity = np.concatenate(parts) if parts else np.zeros((0, n, 3), np.float32)
    return IctArrays(
        template=template,
        quads=quads,
        identity=identity,
        expression=expr["expr_dirs"].astype(np.float32),
        expression_names=tuple(str(s) for s in expr["expr_names"]),
        region_names=tuple(str(s) for s in topo["region_names"]),
        region_ranges=ranges,
        landmarks68=lm68,
    )


def ict_to_model_frame(points_cm: np.ndarray) -> np.ndarray:
    """ICT points or deltas (..., 3) in cm, y up, looking +z -> metres, y down, looking -z."""
    return (np.asarray(points_cm) @ ICT_TO_MODEL_AXES.T * CM_TO_M).astype(np.float32)


def triangulate_quads(quads: np.ndarray) -> np.ndarray:
    """(F, 4) quads -> triangles (0, 1, 2) and (0, 2, 3), same winding; drops degenerate ones."""
    quads = np.asarray(quads, dtype=np.int64).reshape(-1, 4)
    tris = np.stack([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]], axis=1).reshape(-1, 3)
    ok = (tris[:, 0] != tris[:, 1]) & (tris[:, 1] != tris[:, 2]) & (tris[:, 0] != tris[:, 2])
    return tris[ok]


def load_ict_model(
    directory: str | Path,
    n_identity: int = N_IDENTITY,
    regions: Sequence[str] | None = None,
) -> LinearFaceModel:
    """ICT-FaceKit's skin as a ``LinearFaceModel`` named ``"ict-facekit"`` in the project frame.

    ``regions`` picks the vertex regions to keep (default: all five, 14062 vertices;
    ``("face", "head_and_neck")`` is enough to fit, the sockets help rendering an open
    mouth); ``"face"`` is required because the landmarks live there. Identity names
    are ``id000..``; expression names are ICT's ARKit names (``jawOpen``, ...).
    """
    arrays = read_ict_arrays(directory, n_identity)
    if "face" not in arrays.region_names:
        raise IctFormatError(f"{Path(directory) / TOPOLOGY_FILE}:region_names has no 'face' region "
                             f"(has {', '.join(arrays.region_names) or 'none'})")
    regions = tuple(arrays.region_names if regions is None else regions)
    unknown = [r for r in regions if r not in arrays.region_names]
    if unknown:
        raise ValueError(f"unknown region(s) {unknown}; ICT has {', '.join(arrays.region_names)}")
    if "face" not in regions:
        raise ValueError("regions must include 'face': the landmark embedding lives there")
    n = len(arrays.template)
    keep = np.zeros(n, dtype=bool)
    for name, (start, stop) in zip(arrays.region_names, arrays.region_ranges):
        if name in regions:
            keep[start:stop] = True
    new_index = np.full(n, -1, dtype=np.int64)
    new_index[keep] = np.arange(keep.sum())

    template = ict_to_model_frame(arrays.template)
    identity = ict_to_model_frame(arrays.identity)
    expression = ict_to_model_frame(arrays.expression)
    triangles = triangulate_quads(arrays.quads)
    start, stop = arrays.region_ranges[arrays.region_names.index("face")]
    face_tris = triangles[((triangles >= start) & (triangles < stop)).all(axis=1)]
    jaw = expression[arrays.expression_names.index("jawOpen")] if "jawOpen" in arrays.expression_names else None
    embedding = build_mediapipe_embedding(template, face_tris, arrays.landmarks68, jaw_open_delta=jaw)

    kept_tris = triangles[keep[triangles].all(axis=1)]
    return LinearFaceModel(
        name=MODEL_NAME,
        template=template[keep],
        faces=new_index[kept_tris],
        identity_basis=identity[:, keep],
        expression_basis=expression[:, keep],
        identity_names=tuple(f"id{i:03d}" for i in range(len(identity))),
        expression_names=arrays.expression_names,
        landmark_embedding=embedding.restricted_to(np.flatnonzero(keep)),
    )


def __getattr__(name: str):
    """``import_ict_obj`` and ``read_obj`` live in ``ict_obj`` (which imports this module)."""
    if name in ("import_ict_obj", "read_obj"):
        from fitting.face_models import ict_obj

        return getattr(ict_obj, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
