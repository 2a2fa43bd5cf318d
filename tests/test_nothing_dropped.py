"""Nothing under the captures root is skipped without a word, and derived files are written safely."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from capture_schema import derived_layout as layout
from capture_schema.atomic import atomic_directory, atomic_write_bytes
from capture_schema.captures_root import CALIBRATION, NOT_A_SESSION, SESSION, scan_captures_root
from pipelines.cli import main


@pytest.fixture()
def mixed_root(sim_dataset, tmp_path: Path) -> Path:
    """One quarantined session on a shared calibration, plus every kind of entry that is not a session."""
    root = tmp_path / "captures"
    sid = sim_dataset.session_ids[0]
    shutil.copytree(sim_dataset.captures_root / sid, root / sid)
    shutil.move(root / sid / "calibration", root / "rig_calibration")
    session_file = root / sid / "session.json"
    session_file.write_text(json.dumps({**json.loads(session_file.read_text()), "calibration": "../rig_calibration"}))
    (root / sid / "images" / "smile" / "mid_C00.jpg").unlink()  # quarantined by grid_complete
    (root / "bad.name").mkdir()
    (root / "bad.name" / "session.json").write_text("{}")
    (root / "notes").mkdir()
    (root / "README.txt").write_text("x")
    os.mkfifo(root / "pipe")
    (root / "linked").symlink_to(root / sid, target_is_directory=True)
    return root


def test_every_entry_is_classified(mixed_root: Path, sim_dataset) -> None:
    entries = {e.name: e for e in scan_captures_root(mixed_root)}
    sid = sim_dataset.session_ids[0]
    assert {n: e.kind for n, e in entries.items()} == {
        sid: SESSION, "rig_calibration": CALIBRATION, "bad.name": NOT_A_SESSION, "notes": NOT_A_SESSION,
        "README.txt": NOT_A_SESSION, "pipe": NOT_A_SESSION, "linked": NOT_A_SESSION}
    assert "not a valid id" in entries["bad.name"].reason
    assert "no session.json" in entries["notes"].reason
    assert "FIFO" in entries["pipe"].reason and "symbolic link" in entries["linked"].reason
    assert sid in entries["rig_calibration"].reason


def test_pipeline_run_accounts_for_every_folder(mixed_root: Path, tmp_path: Path, capsys) -> None:
    code = main(["pipeline", "run", "--captures", str(mixed_root), "--storage", f"file://{tmp_path / 'derived'}",
                 "--no-prior"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "0 ok, 1 quarantined, 0 failed, 5 not a session" in out
    for name in ("bad.name", "notes", "README.txt", "pipe", "linked"):
        assert f"  {name}: NOT A SESSION (" in out
    assert "  rig_calibration: calibration (shared calibration folder of 1 session(s)" in out
    listing = json.loads((tmp_path / "derived" / layout.CAPTURES_ROOT_LISTING).read_text())
    assert {e["name"] for e in listing} == {p.name for p in mixed_root.iterdir()}


def test_capture_folders_asset_flags_the_entries_that_are_not_sessions(mixed_root: Path, tmp_path: Path) -> None:
    from pipelines.assets.ingest import capture_folders
    from pipelines.resources import CapturesResource, StorageResource

    result = dg.materialize([capture_folders], instance=dg.DagsterInstance.ephemeral(),
                            resources={"captures": CapturesResource(root=str(mixed_root)),
                                       "storage": StorageResource(url=f"file://{tmp_path / 'derived'}")})
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "every_folder_is_a_session" and not check.passed
    assert "`notes`" in check.metadata["not_sessions"].value
    meta = result.asset_materializations_for_node("capture_folders")[0].metadata
    assert (meta["sessions"].value, meta["not_sessions"].value) == (1, 5)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_written_files_follow_the_umask(tmp_path: Path) -> None:
    path = atomic_write_bytes(tmp_path / "a" / "x.json", b"{}")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()
    with atomic_directory(tmp_path / "folder") as tmp:
        (tmp / "f").write_bytes(b"1")
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o777 & ~_umask()
    # Another umask in another process: the storage layer follows it too.
    script = ("import os, sys; os.umask(0o027); from capture_schema.storage import Storage; "
              "Storage('file://' + sys.argv[1]).write_bytes('y.bin', b'1')")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "store")], check=True,
                   cwd=Path(__file__).resolve().parents[1])
    assert stat.S_IMODE((tmp_path / "store" / "y.bin").stat().st_mode) == 0o640


def test_killed_writes_leave_temporaries_that_the_next_write_sweeps(tmp_path: Path) -> None:
    target = tmp_path / "manifest.parquet"
    old_file, young_file = tmp_path / ".manifest.parquet.k1ll3d.tmp", tmp_path / ".manifest.parquet.running.tmp"
    old_dir = tmp_path / ".manifest.parquet.d1r.tmp"
    other = tmp_path / ".summary.json.abc.tmp"
    for path in (old_file, young_file, other):
        path.write_bytes(b"partial")
    old_dir.mkdir()
    (old_dir / "chunk").write_bytes(b"1")
    two_hours_ago = time.time() - 7200
    for path in (old_file, old_dir, other):
        os.utime(path, (two_hours_ago, two_hours_ago))
    atomic_write_bytes(target, b"data")
    assert not old_file.exists() and not old_dir.exists()
    assert young_file.exists()  # may belong to a writer still running
    assert other.exists()  # another file's temporary: swept when that file is written
    # A write that fails removes its own temporary at once.
    with pytest.raises(TypeError):
        atomic_write_bytes(tmp_path / "bad.json", "not bytes")  # type: ignore[arg-type]
    assert not list(tmp_path.glob(".bad.json.*"))
