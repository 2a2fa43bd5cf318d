"""Each validation code is triggered by a deliberately broken session, and nothing is modified."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Callable

import cv2
import pytest

from capture_schema import derived_layout as layout
from capture_schema.problems import ProblemCode
from capture_schema.validation import validate_session
from conftest import tree_hashes
from pipelines.cli import main

CAM, CAM2 = "mid_C00", "mid_L30"


def _jpg(session: Path, expression: str = "neutral", camera: str = CAM) -> Path:
    return session / "images" / expression / f"{camera}.jpg"


def _edit_session_json(session: Path, **changes) -> None:
    path = session / "session.json"
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def _truncate(s: Path) -> None:
    p = _jpg(s)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _garbage(s: Path) -> None:
    _jpg(s, "smile").write_bytes(b"this is not an image at all" * 10)


def _png_as_jpg(s: Path) -> None:
    img = cv2.imread(str(_jpg(s, "smile")))
    _jpg(s, "smile").write_bytes(cv2.imencode(".png", img)[1].tobytes())


def _resized(s: Path) -> None:
    img = cv2.imread(str(_jpg(s)))
    _jpg(s).write_bytes(cv2.imencode(".jpg", cv2.resize(img, (100, 90)))[1].tobytes())


def _ambiguous(s: Path) -> None:
    img = cv2.imread(str(_jpg(s)))
    (s / "images" / "neutral" / f"{CAM}.png").write_bytes(cv2.imencode(".png", img)[1].tobytes())


def _outside_link(s: Path) -> None:
    outside = s.parent.parent / "elsewhere.jpg"
    shutil.copy(_jpg(s), outside)
    _jpg(s).unlink()
    _jpg(s).symlink_to(outside)


def _outside_dir_link(s: Path) -> None:
    outside = s.parent.parent / "elsewhere_dir"
    outside.mkdir()
    (s / "images" / "neutral" / "more").symlink_to(outside, target_is_directory=True)


def _calibration_escapes(s: Path) -> None:
    _edit_session_json(s, calibration="../../../somewhere")


def _empty_camera_calibration(s: Path) -> None:
    for f in (s / "calibration" / CAM2).iterdir():
        f.unlink()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def header_only_png(width: int, height: int) -> bytes:
    """A structurally valid PNG (CRCs right) that claims ``width`` x ``height`` but holds one tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + _png_chunk(b"IEND", b""))


def _huge_pngs(s: Path) -> None:
    """13 header-only PNGs claiming 20000 x 20000 px (one expression row), replacing the JPEGs."""
    for jpg in sorted((s / "images" / "smile").glob("*.jpg")):
        jpg.unlink()
        jpg.with_suffix(".png").write_bytes(header_only_png(20000, 20000))


def _fifo_cell(s: Path) -> None:
    _jpg(s).unlink()
    os.mkfifo(_jpg(s))


def _zero_padded(s: Path) -> None:
    with open(_jpg(s), "ab") as fh:
        fh.write(b"\0" * (1 << 20))


def _board_images(s: Path, camera: str = CAM2) -> list[Path]:
    return sorted((s / "calibration" / camera).iterdir())


def _corrupt_board_image(s: Path) -> None:
    path = _board_images(s)[0]
    path.write_bytes(path.read_bytes()[:200])


def _board_image_link_out(s: Path) -> None:
    path = _board_images(s)[0]
    outside = s.parent.parent / "elsewhere_board.png"
    shutil.copy(path, outside)
    path.unlink()
    path.symlink_to(outside)


def _camera_folder_link_out(s: Path) -> None:
    outside = s.parent.parent / "elsewhere_camera"
    shutil.move(s / "calibration" / CAM2, outside)
    (s / "calibration" / CAM2).symlink_to(outside, target_is_directory=True)


def _board_json_link_out(s: Path) -> None:
    outside = s.parent.parent / "elsewhere_board.json"
    shutil.move(s / "calibration" / "board.json", outside)
    (s / "calibration" / "board.json").symlink_to(outside)


def _calibration_file(s: Path, cameras: tuple[str, ...] | None = None, size: int = 512) -> None:
    """Point session.json at a calibration .json file (what ``o2a import-calibration`` writes) of a rig of
    ``size`` px images holding ``cameras`` (default: all thirteen)."""
    from capture_schema.calibration_file import Calibration, write_calibration
    from capture_simulator.rig import default_rig

    rig = default_rig(size=size)
    write_calibration(s / "rig.json", Calibration({c: rig[c] for c in cameras or rig}))
    _edit_session_json(s, calibration="rig.json")


def _nested_session_json(s: Path) -> None:
    (s / "session.json").write_text("[" * 100_000 + "]" * 100_000)


BREAKAGES: list[tuple[str, Callable[[Path], None], ProblemCode]] = [
    ("missing image", lambda s: _jpg(s).unlink(), ProblemCode.IMAGE_MISSING),
    ("extra file in grid", lambda s: (s / "images" / "neutral" / "notes.txt").write_text("x"), ProblemCode.UNEXPECTED_FILE),
    ("unknown camera", lambda s: shutil.copy(_jpg(s), s / "images" / "neutral" / "cam99.jpg"), ProblemCode.UNEXPECTED_FILE),
    ("unknown expression folder", lambda s: shutil.copytree(s / "images" / "neutral", s / "images" / "yawn"), ProblemCode.UNEXPECTED_FILE),
    ("extra top-level file", lambda s: (s / "notes.md").write_text("x"), ProblemCode.UNEXPECTED_FILE),
    ("two files for one cell", _ambiguous, ProblemCode.IMAGE_AMBIGUOUS),
    ("truncated jpeg", _truncate, ProblemCode.IMAGE_CORRUPT),
    ("garbage bytes", _garbage, ProblemCode.IMAGE_CORRUPT),
    ("png bytes named .jpg", _png_as_jpg, ProblemCode.IMAGE_CORRUPT),
    ("empty file", lambda s: _jpg(s).write_bytes(b""), ProblemCode.IMAGE_CORRUPT),
    ("size differs", _resized, ProblemCode.IMAGE_SIZE_MISMATCH),
    ("duplicate bytes", lambda s: shutil.copy(_jpg(s, "smile"), _jpg(s, "surprise")), ProblemCode.DUPLICATE_IMAGE),
    ("no session.json", lambda s: (s / "session.json").unlink(), ProblemCode.SESSION_FILE_MISSING),
    ("session.json not json", lambda s: (s / "session.json").write_text("{not json"), ProblemCode.SESSION_FILE_INVALID),
    ("session.json a list", lambda s: (s / "session.json").write_text("[1, 2]"), ProblemCode.SESSION_FILE_INVALID),
    ("field missing", lambda s: _edit_session_json(s, rig_id=None), ProblemCode.SESSION_FIELD_MISSING),
    ("bad date", lambda s: _edit_session_json(s, captured_at="yesterday"), ProblemCode.SESSION_FIELD_INVALID),
    ("bad id", lambda s: _edit_session_json(s, subject_id="a/b"), ProblemCode.SESSION_FIELD_INVALID),
    ("repeated camera", lambda s: _edit_session_json(s, cameras=[CAM, CAM]), ProblemCode.SESSION_FIELD_INVALID),
    ("session id differs from folder", lambda s: _edit_session_json(s, session_id="other"), ProblemCode.SESSION_FIELD_INVALID),
    ("symlink out of the session", _outside_link, ProblemCode.PATH_OUTSIDE_SESSION),
    ("folder symlink out of the session", _outside_dir_link, ProblemCode.PATH_OUTSIDE_SESSION),
    ("calibration path escapes", _calibration_escapes, ProblemCode.PATH_OUTSIDE_SESSION),
    ("calibration missing", lambda s: shutil.rmtree(s / "calibration"), ProblemCode.CALIBRATION_MISSING),
    ("calibration camera empty", _empty_camera_calibration, ProblemCode.CALIBRATION_CAMERA_EMPTY),
    ("board.json invalid", lambda s: (s / "calibration" / "board.json").write_text('{"type": "charuco"}'), ProblemCode.CALIBRATION_BOARD_INVALID),
    ("board.json missing", lambda s: (s / "calibration" / "board.json").unlink(), ProblemCode.CALIBRATION_BOARD_INVALID),
    ("calibration file not a calibration", lambda s: (_calibration_file(s), (s / "rig.json").write_text("[]")),
     ProblemCode.CALIBRATION_FILE_INVALID),
    ("calibration file lacks a camera", lambda s: _calibration_file(s, (CAM,)), ProblemCode.CALIBRATION_CAMERA_MISSING),
    ("calibration file of another image size", lambda s: _calibration_file(s, size=100),
     ProblemCode.CALIBRATION_SIZE_MISMATCH),
    # Hostile input: each refused with a code, never a hang, a traceback or an unbounded read.
    ("FIFO in an image cell", _fifo_cell, ProblemCode.IMAGE_CORRUPT),
    ("header-only 20000 px PNGs", _huge_pngs, ProblemCode.IMAGE_CORRUPT),
    ("1 MiB of zeros after a JPEG", _zero_padded, ProblemCode.IMAGE_CORRUPT),
    ("id with a trailing newline", lambda s: _edit_session_json(s, subject_id="sim0011\n"), ProblemCode.SESSION_FIELD_INVALID),
    ("deeply nested session.json", _nested_session_json, ProblemCode.SESSION_FILE_INVALID),
    ("stray file in calibration", lambda s: (s / "calibration" / "notes.txt").write_text("x"), ProblemCode.UNEXPECTED_FILE),
    ("stray file in a camera's board images", lambda s: (s / "calibration" / CAM / "readme.txt").write_text("x"), ProblemCode.UNEXPECTED_FILE),
    ("corrupt board image", _corrupt_board_image, ProblemCode.CALIBRATION_IMAGE_INVALID),
    ("board image symlink out", _board_image_link_out, ProblemCode.PATH_OUTSIDE_SESSION),
    ("camera folder symlink out", _camera_folder_link_out, ProblemCode.PATH_OUTSIDE_SESSION),
    ("board.json symlink out", _board_json_link_out, ProblemCode.CALIBRATION_BOARD_INVALID),
]


def test_simulated_session_is_valid(session_copy: Path, capsys) -> None:
    report = validate_session(session_copy)
    assert report.valid, report.problems
    assert len(report.images) == 169
    assert main(["validate", str(session_copy), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"valid": True, "problems": []}


def test_every_code_has_a_breakage() -> None:
    assert {code for _, _, code in BREAKAGES} == set(ProblemCode)


@pytest.mark.parametrize("name,breakage,code", BREAKAGES, ids=[b[0] for b in BREAKAGES])
def test_breakage_is_reported_and_nothing_modified(session_copy: Path, capsys, name, breakage, code) -> None:
    breakage(session_copy)
    before = tree_hashes(session_copy.parent.parent)
    exit_code = main(["validate", str(session_copy), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert exit_code == 1
    assert out["valid"] is False
    assert code.value in {p["code"] for p in out["problems"]}, out["problems"]
    for problem in out["problems"]:
        assert set(problem) == {"code", "path", "message"} and problem["message"]
    assert tree_hashes(session_copy.parent.parent) == before


def test_problem_paths_name_the_cell(session_copy: Path) -> None:
    _jpg(session_copy, "smile", CAM2).unlink()
    _truncate(session_copy)
    problems = {(p.code, p.path) for p in validate_session(session_copy).problems}
    assert (ProblemCode.IMAGE_MISSING, f"images/smile/{CAM2}") in problems
    assert (ProblemCode.IMAGE_CORRUPT, f"images/neutral/{CAM}.jpg") in problems
    assert len(problems) == 2


def test_deep_decode_accepts_valid_images(session_copy: Path) -> None:
    assert validate_session(session_copy, deep=True).valid


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert main(["validate", str(tmp_path / "nope")]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["validate"])
    assert exc.value.code == 2


def test_console_script_prints_no_traceback(session_copy: Path) -> None:
    (session_copy / "session.json").write_text("{broken")
    o2a = Path(sys.executable).parent / "o2a"
    proc = subprocess.run([str(o2a), "validate", str(session_copy)], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "session_file_invalid" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_every_code_belongs_to_exactly_one_check() -> None:
    from capture_schema.problems import CALIBRATION_CODES, GRID_CODES, IMAGE_INTEGRITY_CODES, SESSION_FILE_CODES

    groups = [SESSION_FILE_CODES, GRID_CODES, IMAGE_INTEGRITY_CODES, CALIBRATION_CODES]
    assert sum(len(g) for g in groups) == len(ProblemCode)
    assert frozenset().union(*groups) == set(ProblemCode)


def test_one_pass_reports_every_fault(session_copy: Path) -> None:
    """A session.json missing a field does not hide the grid, image and calibration faults beside it."""
    _edit_session_json(session_copy, subject_id=None)
    _jpg(session_copy, "smile", CAM2).unlink()
    _truncate(session_copy)
    shutil.copy(_jpg(session_copy, "pucker"), _jpg(session_copy, "surprise"))
    (session_copy / "notes.md").write_text("x")
    (session_copy / "calibration" / "board.json").write_text('{"type": "charuco"}')
    _corrupt_board_image(session_copy)
    (session_copy / "calibration" / "notes.txt").write_text("x")
    for f in _board_images(session_copy, "up_C00"):
        f.unlink()
    found = {(p.code, p.path) for p in validate_session(session_copy).problems}
    assert found == {
        (ProblemCode.SESSION_FIELD_MISSING, "session.json"),
        (ProblemCode.IMAGE_MISSING, f"images/smile/{CAM2}"),
        (ProblemCode.IMAGE_CORRUPT, f"images/neutral/{CAM}.jpg"),
        (ProblemCode.DUPLICATE_IMAGE, f"images/{sorted(['pucker', 'surprise'])[1]}/{CAM}.jpg"),
        (ProblemCode.UNEXPECTED_FILE, "notes.md"),
        (ProblemCode.CALIBRATION_BOARD_INVALID, "calibration/board.json"),
        (ProblemCode.CALIBRATION_IMAGE_INVALID, f"calibration/{CAM2}/{_board_images(session_copy)[0].name}"),
        (ProblemCode.UNEXPECTED_FILE, "calibration/notes.txt"),
        (ProblemCode.CALIBRATION_CAMERA_EMPTY, "calibration/up_C00"),
    }


def test_without_a_camera_list_images_are_still_checked(session_copy: Path) -> None:
    """With 'cameras' unusable, missing cells cannot be known, but every image is still read and checked."""
    _edit_session_json(session_copy, cameras="all of them")
    _truncate(session_copy)
    report = validate_session(session_copy)
    codes = {(p.code, p.path) for p in report.problems}
    assert (ProblemCode.SESSION_FIELD_INVALID, "session.json") in codes
    assert (ProblemCode.IMAGE_CORRUPT, f"images/neutral/{CAM}.jpg") in codes
    assert len(report.images) == 168
    assert not any(p.code == ProblemCode.IMAGE_MISSING for p in report.problems)


def test_fifo_cell_does_not_hang_the_cli(session_copy: Path) -> None:
    _fifo_cell(session_copy)
    o2a = Path(sys.executable).parent / "o2a"
    proc = subprocess.run([str(o2a), "validate", str(session_copy), "--json"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    problem = [p for p in json.loads(proc.stdout)["problems"] if p["path"] == f"images/neutral/{CAM}.jpg"]
    assert problem and "FIFO" in problem[0]["message"], problem


def test_relative_session_paths_name_the_folder(session_copy: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """``o2a ingest S/..`` and ``o2a ingest .`` ingest the folder they lead to, never a nameless one."""
    storage = tmp_path / "derived"
    monkeypatch.chdir(session_copy)
    assert main(["ingest", ".", "--storage", f"file://{storage}"]) == 0
    assert (storage / layout.manifest(session_copy.name)).is_file()
    assert main(["ingest", f"{session_copy}/images/..", "--storage", f"file://{storage}"]) == 0
    assert sorted(p.name for p in (storage / layout.INGEST).iterdir()) == [session_copy.name]
    assert not (storage / layout.MANIFEST_FILE).exists() and not (storage / layout.QUARANTINE).exists()
    # A path whose folder name cannot be an id is refused before anything is written.
    badly_named = tmp_path / "sim 0001.v2"
    shutil.copytree(session_copy, badly_named)
    capsys.readouterr()
    assert main(["ingest", str(badly_named), "--storage", f"file://{tmp_path / 'other'}"]) == 1
    assert "not a valid session id" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
