"""Build the packaged ICT npz files from ICT-FaceKit's original OBJ release.

ICT-FaceKit (github.com/ICT-VGL/ICT-FaceKit, MIT) ships ``FaceXModel/`` with
``generic_neutral_mesh.obj``, ``identity000.obj``..``identity099.obj`` and one OBJ per
expression named by its ARKit name (``jawOpen.obj``; the list is ``expressions`` in
``vertex_indices.json``), all on one topology. Each identity or expression OBJ is the
neutral mesh displaced by one mode, so a mode is ``obj - neutral`` (what ICT's own
``face_model_io`` computes). ``import_ict_obj`` keeps the skin part (vertices below
the last region's end, the faces wholly inside it) and writes the files
``fitting.face_models.ict.load_ict_model`` reads: quads (a triangle stored as
``(a, b, c, c)``), float16 deltas in centimetres, ICT's own frame. Users outside this
workplace run it once on their copy of the release.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fitting.face_models.ict import (
    EXPRESSION_FILE,
    IDENTITY_FILES,
    N_IDENTITY,
    TOPOLOGY_FILE,
    IctFormatError,
)

NEUTRAL_OBJ = "generic_neutral_mesh.obj"
LANDMARKS68_FILE = "ict_landmarks68_basis.npz"
#: ICT's README: the skin part's regions, ``(name, first vertex, end vertex)``.
ICT_SKIN_REGIONS: tuple[tuple[str, int, int], ...] = (
    ("face", 0, 9409),
    ("head_and_neck", 9409, 11248),
    ("mouth_socket", 11248, 13294),
    ("eye_socket_left", 13294, 13678),
    ("eye_socket_right", 13678, 14062),
)
#: ICT's README: Multi-PIE 68-point landmark vertex ids (0-based).
ICT_LANDMARKS68 = (
    1225, 1888, 1052, 367, 1719, 1722, 2199, 1447, 966, 3661, 4390, 3927, 3924, 2608, 3272, 4088, 3443,
    268, 493, 1914, 2044, 1401, 3615, 4240, 4114, 2734, 2509, 978, 4527, 4942, 4857, 1140, 2075, 1147,
    4269, 3360, 1507, 1542, 1537, 1528, 1518, 1511, 3742, 3751, 3756, 3721, 3725, 3732, 5708, 5695, 2081,
    0, 4275, 6200, 6213, 6346, 6461, 5518, 5957, 5841, 5702, 5711, 5533, 6216, 6207, 6470, 5517, 5966,
)  # fmt: skip
#: ICT's 53 expression blendshapes (``vertex_indices.json`` ``expressions``).
ICT_EXPRESSIONS = (
    "browDown_L", "browDown_R", "browInnerUp_L", "browInnerUp_R", "browOuterUp_L", "browOuterUp_R",
    "cheekPuff_L", "cheekPuff_R", "cheekSquint_L", "cheekSquint_R", "eyeBlink_L", "eyeBlink_R",
    "eyeLookDown_L", "eyeLookDown_R", "eyeLookIn_L", "eyeLookIn_R", "eyeLookOut_L", "eyeLookOut_R",
    "eyeLookUp_L", "eyeLookUp_R", "eyeSquint_L", "eyeSquint_R", "eyeWide_L", "eyeWide_R", "jawForward",
    "jawLeft", "jawOpen", "jawRight", "mouthClose", "mouthDimple_L", "mouthDimple_R", "mouthFrown_L",
    "mouthFrown_R", "mouthFunnel", "mouthLeft", "mouthLowerDown_L", "mouthLowerDown_R", "mouthPress_L",
    "mouthPress_R", "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
    "mouthShrugUpper", "mouthSmile_L", "mouthSmile_R", "mouthStretch_L", "mouthStretch_R", "mouthUpperUp_L",
    "mouthUpperUp_R", "noseSneer_L", "noseSneer_R",
)  # fmt: skip
_FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class ObjMesh:
    """What the importer needs from an OBJ: positions, faces as quads, texture coordinates."""

    vertices: np.ndarray  # (V, 3) float64
    faces: np.ndarray  # (F, 4) int64, 0-based; a triangle repeats its last index
    uv: np.ndarray  # (T, 2) float64
    faces_uv: np.ndarray  # (F, 4) int64, -1 where a face corner has no texture coordinate


def read_obj(path: str | Path, vertices_only: bool = False) -> ObjMesh:
    """A minimal OBJ reader: ``v``, ``vt`` and ``f`` (``v``, ``v/vt``, ``v//vn``, ``v/vt/vn``;
    triangles and quads; negative indices); everything else is ignored."""
    path = Path(path)
    if not path.is_file():
        raise IctFormatError(f"OBJ file not found: {path}")
    lines = path.read_text(errors="replace").splitlines()
    try:
        vertices = _floats([ln[2:] for ln in lines if ln.startswith("v ")], 3, path, "v")
        if vertices_only:
            return ObjMesh(vertices, np.zeros((0, 4), np.int64), np.zeros((0, 2)), np.zeros((0, 4), np.int64))
        uv = _floats([ln[3:] for ln in lines if ln.startswith("vt ")], 2, path, "vt")
    except ValueError as exc:
        raise IctFormatError(f"{path.name}: unreadable vertex line ({exc})") from exc
    faces, faces_uv = [], []
    for number, line in enumerate(lines, 1):
        if not line.startswith("f "):
            continue
        tokens = line.split()[1:]
        if len(tokens) not in (3, 4):
            raise IctFormatError(f"{path.name}:{number}: a face with {len(tokens)} corners (only 3 or 4 are read)")
        try:
            vi = [_index(tok.split("/")[0], len(vertices)) for tok in tokens]
            ti = [_index(parts[1], len(uv)) if len(parts) > 1 and parts[1] else -1
                  for parts in (tok.split("/") for tok in tokens)]
        except ValueError as exc:
            raise IctFormatError(f"{path.name}:{number}: bad face {line.strip()!r} ({exc})") from exc
        faces.append(vi + vi[-1:] * (4 - len(vi)))
        faces_uv.append(ti + ti[-1:] * (4 - len(ti)))
    faces_arr = np.array(faces, dtype=np.int64).reshape(-1, 4)
    if faces_arr.size and (faces_arr.min() < 0 or faces_arr.max() >= len(vertices)):
        raise IctFormatError(f"{path.name}: a face refers to a vertex that does not exist")
    return ObjMesh(vertices, faces_arr, uv, np.array(faces_uv, dtype=np.int64).reshape(-1, 4))


def _floats(rows: list[str], width: int, path: Path, what: str) -> np.ndarray:
    if not rows:
        return np.zeros((0, width))
    values = [row.split()[:width] for row in rows]
    if any(len(v) < width for v in values):
        raise IctFormatError(f"{path.name}: a '{what}' line has fewer than {width} numbers")
    return np.array(values, dtype=np.float64)


def _index(token: str, count: int) -> int:
    i = int(token)
    if i == 0:
        raise ValueError("OBJ indices start at 1")
    return i - 1 if i > 0 else count + i


def import_ict_obj(
    obj_dir: str | Path,
    out_dir: str | Path,
    n_identity: int = N_IDENTITY,
    expression_names: Sequence[str] | None = None,
    landmarks68: Sequence[int] | None = None,
    regions: Sequence[tuple[str, int, int]] = ICT_SKIN_REGIONS,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[Path]:
    """Read ICT's OBJs from ``obj_dir`` and write the packaged npz files into ``out_dir``.

    ``expression_names`` and ``landmarks68`` default to ``vertex_indices.json`` in
    ``obj_dir`` when it is there, else to ICT's published lists; ``regions`` are
    contiguous vertex ranges from 0 (the skin part). Every OBJ named must exist (a
    missing one raises ``IctFormatError`` naming it before anything is written).
    ``progress(done, total, file name)`` is called after each OBJ (154 for the full
    model, ~2.5 MB each). Returns the files written.
    """
    obj_dir, out_dir = Path(obj_dir), Path(out_dir)
    config = _read_config(obj_dir)
    if expression_names is None:
        expression_names = config.get("expressions", ICT_EXPRESSIONS)
    names = tuple(str(name) for name in expression_names)
    lm68 = np.asarray(landmarks68 if landmarks68 is not None else config.get("idx_to_landmark_verts", ICT_LANDMARKS68))
    n_skin = _check_regions(regions)
    if lm68.shape != (68,) or lm68.min() < 0 or lm68.max() >= n_skin:
        raise IctFormatError(f"landmarks68 must be 68 vertex ids in 0..{n_skin - 1}")
    if not 0 <= n_identity <= N_IDENTITY:
        raise ValueError(f"n_identity must be in 0..{N_IDENTITY}, got {n_identity}")
    id_files = [f"identity{i:03d}.obj" for i in range(n_identity)]
    wanted = [NEUTRAL_OBJ, *id_files, *(f"{name}.obj" for name in names)]
    missing = [name for name in wanted if not (obj_dir / name).is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise IctFormatError(f"ICT OBJ file(s) missing in {obj_dir}: {shown}")

    done = 0

    def step(name: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, len(wanted), name)

    neutral = read_obj(obj_dir / NEUTRAL_OBJ)
    if len(neutral.vertices) < n_skin:
        raise IctFormatError(f"{NEUTRAL_OBJ} has {len(neutral.vertices)} vertices, fewer than the skin's {n_skin}")
    step(NEUTRAL_OBJ)

    def deltas(files: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """float16 deltas of the skin, and exact float32 ones at the 68 landmarks."""
        out = np.zeros((len(files), n_skin, 3), dtype=np.float16)
        at_landmarks = np.zeros((len(files), 68, 3), dtype=np.float32)
        for k, name in enumerate(files):
            verts = read_obj(obj_dir / name, vertices_only=True).vertices
            if len(verts) != len(neutral.vertices):
                raise IctFormatError(f"{name} has {len(verts)} vertices, {NEUTRAL_OBJ} {len(neutral.vertices)}")
            delta = verts[:n_skin] - neutral.vertices[:n_skin]
            if not np.all(np.abs(delta) < _FLOAT16_MAX):
                raise IctFormatError(f"{name}: deltas do not fit float16")
            out[k] = delta.astype(np.float16)
            at_landmarks[k] = delta[lm68]
            step(name)
        return out, at_landmarks

    identity, identity68 = deltas(id_files)
    expression, expression68 = deltas([f"{name}.obj" for name in names])

    out_dir.mkdir(parents=True, exist_ok=True)
    skin = (neutral.faces < n_skin).all(axis=1)
    template = neutral.vertices[:n_skin].astype(np.float32)
    topology = {
        "v_template": template,
        "faces": neutral.faces[skin].astype(np.int32),
        "faces_uv": neutral.faces_uv[skin].astype(np.int32),
        "uv": neutral.uv.astype(np.float32),
        "region_ranges": np.array([[a, b] for _, a, b in regions], dtype=np.int32),
        "region_names": np.array([r[0] for r in regions], dtype="<U16"),
        "landmarks_multipie68": lm68.astype(np.int32),
        "units": np.array("cm"),
        "n_vertices_full_model": np.array(len(neutral.vertices), dtype=np.int64),
    }
    for key, json_key in (("rigid_landmark_idx", "idx_to_rigid_landmark_idx"), ("fitting_verts", "idx_to_fitting_verts"),
                          ("rigid_verts", "idx_to_rigid_verts")):
        if json_key in config:
            topology[key] = np.asarray(config[json_key], dtype=np.int32)
    written = [_save(out_dir / TOPOLOGY_FILE, topology)]
    written.append(_save(out_dir / EXPRESSION_FILE, {"expr_dirs": expression, "expr_names": np.array(names, "<U16")}))
    for name, first, count in IDENTITY_FILES:
        if first < n_identity:
            chunk = identity[first : first + count]
            written.append(_save(out_dir / name, {"id_dirs": chunk, "first_mode": np.array(first, dtype=np.int64)}))
    written.append(_save(out_dir / LANDMARKS68_FILE, {
        "landmark_vertex_idx": lm68.astype(np.int32),
        "v_template": template[lm68],
        "id_dirs": identity68,
        "expr_dirs": expression68,
        "expr_names": np.array(names, "<U16"),
        "units": np.array("cm"),
    }))  # fmt: skip
    return written


def _read_config(obj_dir: Path) -> dict:
    path = obj_dir / "vertex_indices.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise IctFormatError(f"{path} is not valid JSON: {exc}") from exc


def _check_regions(regions: Sequence[tuple[str, int, int]]) -> int:
    """The skin's vertex count; the regions must tile ``0..n`` in order and include ``face``."""
    end = 0
    for name, start, stop in regions:
        if start != end or stop <= start:
            raise IctFormatError(f"region {name!r} [{start}, {stop}) does not continue from vertex {end}")
        end = stop
    if "face" not in [r[0] for r in regions]:
        raise IctFormatError("regions must include 'face'")
    return end


def _save(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez_compressed(path, **arrays)
    return path
