"""Write a simulated capture set: sessions in the capture layout, ground truth apart.

``OUT/captures/<session_id>/...`` follows the capture contract exactly, so every
pipeline step runs on it unchanged; ``OUT/ground_truth/<session_id>/`` holds what
no real capture has (true cameras, morphable-model parameters, 2D landmarks) for
tests and evaluation. Deterministic for a seed: same seed, same bytes.

A ``FaceSource`` (``capture_simulator.face_source``) says which model shapes the
subjects. The default is ``OffSpanFaceSource`` (``capture_simulator.off_span``): the
built-in model's subjects plus shape outside its span, so a fit by the built-in model
is never exact and mediapipe errs on them as on a face it has not seen (the built-in
template is mediapipe's own mesh of one photo). ``BuiltinFaceSource`` (the model's own
faces) and ``IctFaceSource`` are the alternatives. ``frames.json`` names the source's
truth model (``face_model``) and holds identity and per-frame expression coefficients
in that model's spaces, with the head pose mapping its model frame to the world, so
``face_source.model.vertices(identity, expression, R, t)`` is the true mesh.
``mesh_3d.npz`` holds the drawn face itself (built-in topology, metres): ``vertices``
(13, 478, 3) posed in the world per expression and ``neutral`` (478, 3) the subject's
neutral face at zero head pose, so a test can compare a fit with the
truth without rebuilding any model; ``landmarks_2d.npz`` holds the projected 478
points of the drawn face.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np

from capture_schema.atomic import atomic_write_bytes, atomic_write_json
from capture_schema.board import BoardSpec, write_board
from capture_schema.calibration_file import Calibration, write_calibration
from capture_schema.cameras import Camera
from capture_schema.layout import (
    BOARD_FILE,
    DEFAULT_CALIBRATION_DIR,
    DEFAULT_EXPRESSIONS,
    IMAGES_DIR,
)
from capture_schema.session import SessionInfo, write_session
from capture_simulator.board_render import DEFAULT_BOARD, DEFAULT_N_BOARD_POSES, board_poses, render_board_view
from capture_simulator.face_source import FaceSource
from capture_simulator.off_span import OffSpanFaceSource
from capture_simulator.render_face import project_landmarks, render_view
from capture_simulator.rig import default_rig
from capture_simulator.subjects import SubjectAppearance
from fitting.face_models.builtin import builtin_face_model, builtin_texture

JPEG_QUALITY = 95
RIG_ID = "sim_rig_01"
BASE_TIME = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)


@dataclass(frozen=True)
class SimulatedDataset:
    captures_root: Path
    ground_truth_root: Path
    session_ids: tuple[str, ...]


def _head_pose(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A subject never holds perfectly still: a few degrees and millimetres per frame."""
    rvec = rng.normal(0.0, np.radians(2.0), 3)
    R, _ = cv2.Rodrigues(rvec)
    return R, rng.normal(0.0, 0.004, 3)


def _encode_jpeg_rgb(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _encode_png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def render_calibration_captures(
    rig: dict[str, Camera], board: BoardSpec, n_poses: int, seed: int
) -> tuple[dict[str, list[bytes]], list[tuple[np.ndarray, np.ndarray]]]:
    """PNG board captures per camera (index = moment, shared by all cameras) and the true board poses."""
    rng = np.random.default_rng([seed, 1])
    poses = board_poses(n_poses, rng, board_size_m=(board.width_m, board.height_m))
    captures: dict[str, list[bytes]] = {cam_id: [] for cam_id in rig}
    for R, t in poses:
        for cam_id, camera in rig.items():
            captures[cam_id].append(_encode_png(render_board_view(board, R, t, camera, rng)))
    return captures, poses


def _simulate_subject(args: tuple) -> dict:
    """Render one session's 13 x 13 grid; returns encoded images and ground truth (picklable)."""
    index, seed, rig, source = args
    model, texture = builtin_face_model(np.float64), builtin_texture()  # the drawn topology, uv and texture
    rng = np.random.default_rng([seed, 2, index])
    appearance = source.sample_subject(rng)
    images: dict[tuple[str, str], bytes] = {}
    frames = []
    landmarks = np.zeros((len(DEFAULT_EXPRESSIONS), len(rig), 478, 2))
    meshes = np.zeros((len(DEFAULT_EXPRESSIONS), 478, 3))
    for e, expression in enumerate(DEFAULT_EXPRESSIONS):
        coeffs = source.expression_coeffs(expression)
        shape = source.render_shape(appearance.identity, coeffs)
        R, t = source.posed(*_head_pose(rng))
        meshes[e] = shape @ R.T + t
        frames.append({"expression": expression, "expression_coeffs": coeffs.tolist(),
                       "head_rotation": R.tolist(), "head_translation": t.tolist()})
        for c, (cam_id, camera) in enumerate(rig.items()):
            image = render_view(model, texture, appearance, coeffs, R, t, camera, shape=shape)
            images[(expression, cam_id)] = _encode_jpeg_rgb(image)
            landmarks[e, c] = project_landmarks(model, appearance, coeffs, R, t, camera, shape=shape)
    R0, t0 = source.posed(np.eye(3), np.zeros(3))  # the source's model frame in the built-in head frame
    neutral = source.render_shape(appearance.identity, source.expression_coeffs("neutral")) @ R0.T + t0
    return {"index": index, "appearance": appearance, "images": images, "frames": frames, "landmarks": landmarks,
            "meshes": meshes, "neutral": neutral, "face_model": source.name}


def _appearance_dict(appearance: SubjectAppearance) -> dict:
    return {k: np.asarray(v).tolist() for k, v in dataclasses.asdict(appearance).items()}


def _write_session(captures_root: Path, gt_root: Path, rendered: dict, rig: dict[str, Camera], board: BoardSpec,
                   calib: dict[str, list[bytes]], poses: list) -> str:
    index = rendered["index"]
    session_id = f"sim{index:04d}_s01"
    session_dir = captures_root / session_id
    for (expression, cam_id), data in rendered["images"].items():
        atomic_write_bytes(session_dir / IMAGES_DIR / expression / f"{cam_id}.jpg", data)
    calib_dir = session_dir / DEFAULT_CALIBRATION_DIR
    write_board(calib_dir / BOARD_FILE, board)
    for cam_id, shots in calib.items():
        for n, data in enumerate(shots):
            atomic_write_bytes(calib_dir / cam_id / f"{n:03d}.png", data)
    info = SessionInfo(
        subject_id=f"sim{index:04d}",
        session_id=session_id,
        rig_id=RIG_ID,
        captured_at=(BASE_TIME + timedelta(minutes=20 * index)).isoformat(),
        expressions=DEFAULT_EXPRESSIONS,
        cameras=tuple(rig),
    )
    write_session(session_dir, info)  # written last: a session is complete once session.json exists

    gt = gt_root / session_id
    write_calibration(gt / "calibration.json", Calibration(dict(rig)))
    appearance = rendered["appearance"]
    atomic_write_json(gt / "frames.json", {
        "session_id": session_id,
        "face_model": rendered["face_model"],
        "identity_coeffs": np.asarray(appearance.identity).tolist(),
        "appearance": _appearance_dict(appearance),
        "frames": rendered["frames"],
        "board_poses": [{"R": R.tolist(), "t": t.tolist()} for R, t in poses],
        "landmarks_file": "landmarks_2d.npz",
    })
    tmp = gt / ".landmarks_2d.tmp.npz"
    np.savez_compressed(tmp, landmarks=rendered["landmarks"].astype(np.float32),
                        expressions=np.array(DEFAULT_EXPRESSIONS), cameras=np.array(list(rig)))
    os.replace(tmp, gt / "landmarks_2d.npz")
    tmp = gt / ".mesh_3d.tmp.npz"
    np.savez_compressed(tmp, vertices=rendered["meshes"].astype(np.float32),
                        neutral=rendered["neutral"].astype(np.float32), expressions=np.array(DEFAULT_EXPRESSIONS))
    os.replace(tmp, gt / "mesh_3d.npz")
    return session_id


def simulate_dataset(
    out: str | os.PathLike[str],
    n_subjects: int,
    size: int = 512,
    seed: int = 0,
    *,
    board: BoardSpec = DEFAULT_BOARD,
    n_board_poses: int = DEFAULT_N_BOARD_POSES,
    workers: int | None = None,
    progress: bool = False,
    face_source: FaceSource | None = None,
) -> SimulatedDataset:
    """Simulate ``n_subjects`` sessions (one rig, one shared board capture) under ``out``.

    ``face_source`` shapes the subjects (None: ``OffSpanFaceSource()``, see the module docstring).
    """
    if n_subjects < 1:
        raise ValueError("n_subjects must be >= 1")
    out = Path(out)
    captures_root, gt_root = out / "captures", out / "ground_truth"
    rig = default_rig(size=size, seed=seed)
    calib, poses = render_calibration_captures(rig, board, n_board_poses, seed)
    workers = workers or min(os.cpu_count() or 1, n_subjects, 4)
    source = face_source or OffSpanFaceSource()
    jobs = [(i, seed, rig, source) for i in range(n_subjects)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_subjects, desc="simulating subjects", unit="subject")
    session_ids = []
    with ProcessPoolExecutor(max_workers=workers) if workers > 1 else _InlineExecutor() as pool:
        for rendered in pool.map(_simulate_subject, jobs):
            session_ids.append(_write_session(captures_root, gt_root, rendered, rig, board, calib, poses))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return SimulatedDataset(captures_root, gt_root, tuple(session_ids))


class _InlineExecutor:
    """``map`` in this process: one subject needs no process pool."""

    def __enter__(self) -> "_InlineExecutor":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, fn, items):
        return map(fn, items)
