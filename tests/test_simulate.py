"""The simulator writes valid sessions, keeps ground truth apart, and is deterministic per seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from capture_schema.calibration_file import read_calibration
from capture_schema.layout import DEFAULT_CAMERAS, DEFAULT_EXPRESSIONS
from capture_schema.validation import validate_session
from capture_simulator.simulate import simulate_dataset
from conftest import SIM_SIZE, tree_hashes
from pipelines.cli import main


def test_layout_and_ground_truth(sim_dataset) -> None:
    assert len(sim_dataset.session_ids) == 2 and len(set(sim_dataset.session_ids)) == 2
    for sid in sim_dataset.session_ids:
        session = sim_dataset.captures_root / sid
        assert validate_session(session).valid
        assert not any(p.name in {"calibration.json", "frames.json", "landmarks_2d.npz"} for p in session.rglob("*"))
        gt = sim_dataset.ground_truth_root / sid
        calib = read_calibration(gt / "calibration.json")
        assert list(calib.cameras) == list(DEFAULT_CAMERAS)
        frames = json.loads((gt / "frames.json").read_text())
        assert [f["expression"] for f in frames["frames"]] == list(DEFAULT_EXPRESSIONS)
        assert len(frames["board_poses"]) == 10
        landmarks = np.load(gt / "landmarks_2d.npz")["landmarks"]
        assert landmarks.shape == (13, 13, 478, 2)
        # Projected landmarks of the frontal camera sit inside the image, around its centre.
        frontal = landmarks[0, list(DEFAULT_CAMERAS).index("mid_C00")]
        assert 0 < frontal.min() and frontal.max() < SIM_SIZE
        assert abs(frontal.mean(axis=0) - SIM_SIZE / 2).max() < SIM_SIZE / 6


def test_subjects_differ(sim_dataset) -> None:
    gt = sim_dataset.ground_truth_root
    a, b = (json.loads((gt / sid / "frames.json").read_text()) for sid in sim_dataset.session_ids)
    assert a["identity_coeffs"] != b["identity_coeffs"]
    assert a["appearance"]["brightness_gain"] != b["appearance"]["brightness_gain"]
    img = [(sim_dataset.captures_root / sid / "images/neutral/mid_C00.jpg").read_bytes() for sid in sim_dataset.session_ids]
    assert img[0] != img[1]


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    first = simulate_dataset(tmp_path / "a", n_subjects=1, size=64, seed=3, n_board_poses=8)
    second = simulate_dataset(tmp_path / "b", n_subjects=1, size=64, seed=3, n_board_poses=8)
    other = simulate_dataset(tmp_path / "c", n_subjects=1, size=64, seed=4, n_board_poses=8)
    assert tree_hashes(tmp_path / "a") == tree_hashes(tmp_path / "b")
    assert tree_hashes(tmp_path / "a") != tree_hashes(tmp_path / "c")
    assert first.session_ids == second.session_ids == other.session_ids


def test_cli_simulate_rejects_bad_arguments(tmp_path: Path) -> None:
    assert main(["simulate", str(tmp_path), "--subjects", "0"]) == 2
