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
