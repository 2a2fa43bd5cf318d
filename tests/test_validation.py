"""Each validation code is triggered by a deliberately broken session, and nothing is modified."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import cv2
import pytest

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
