"""Shared fixtures: one small simulated capture set per test run, copied before breaking it."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

SIM_SIZE = 512
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def sim_dataset(tmp_path_factory: pytest.TempPathFactory):
    """Two simulated subjects at 512 px (the size the board and the face detector need), 10 board poses."""
    from capture_simulator.simulate import simulate_dataset

    return simulate_dataset(tmp_path_factory.mktemp("sim"), n_subjects=2, size=SIM_SIZE, seed=7, n_board_poses=10)


@pytest.fixture()
def session_copy(sim_dataset, tmp_path: Path) -> Path:
    """A private copy of the first simulated session, safe to break."""
    src = sim_dataset.captures_root / sim_dataset.session_ids[0]
    dst = tmp_path / "captures" / src.name
    shutil.copytree(src, dst, symlinks=True)
    return dst


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file (and link target) below root, to prove nothing was touched."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "link:" + str(path.readlink())
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="session")
def sim_landmarks(sim_dataset):
    """mediapipe landmarks of the first simulated session (detected once per test run)."""
    from fitting.landmarks import detect_session

    return detect_session(sim_dataset.captures_root / sim_dataset.session_ids[0], workers=2)


def sim_ground_truth(sim_dataset, index: int = 0) -> dict:
    """The simulator's truth for one session: cameras, 2D landmarks, per-frame model parameters."""
    import json

    import numpy as np

    from capture_schema.calibration_file import read_calibration

    gt = sim_dataset.ground_truth_root / sim_dataset.session_ids[index]
    frames = json.loads((gt / "frames.json").read_text())
    with np.load(gt / "landmarks_2d.npz") as data:
        landmarks = data["landmarks"].astype(np.float64)
    return {"calibration": read_calibration(gt / "calibration.json"), "landmarks_2d": landmarks,
            "identity": np.asarray(frames["identity_coeffs"]), "frames": frames["frames"]}
