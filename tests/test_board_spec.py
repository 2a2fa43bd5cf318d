"""The board.json contract: valid forms round-trip, every bad input names its field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from capture_schema.board import (
    ARUCO_DICTIONARIES,
    BoardSpecError,
    CharucoBoardSpec,
    ChessboardSpec,
    board_to_dict,
    parse_board,
    read_board,
    write_board,
)

CHARUCO = {
    "type": "charuco",
    "squares_x": 7,
    "squares_y": 5,
    "square_length_m": 0.04,
    "marker_length_m": 0.03,
    "dictionary": "DICT_5X5_100",
}
CHESSBOARD = {"type": "chessboard", "cols": 9, "rows": 6, "square_length_m": 0.025}
_DROP = object()


def _with(base: dict, **changes: object) -> dict:
    out = dict(base)
    for key, value in changes.items():
        if value is _DROP:
            out.pop(key)
        else:
            out[key] = value
    return out


def test_charuco_parses_with_geometry() -> None:
    spec = parse_board(CHARUCO)
    assert spec == CharucoBoardSpec(7, 5, 0.04, 0.03, "DICT_5X5_100")
    assert spec.type == "charuco"
    assert spec.n_corners == 24 and spec.corner_grid == (6, 4)
    assert spec.n_markers == 17
    assert spec.width_m == pytest.approx(0.28) and spec.height_m == pytest.approx(0.20)


def test_chessboard_parses_with_geometry() -> None:
    spec = parse_board(CHESSBOARD)
    assert spec == ChessboardSpec(9, 6, 0.025)
    assert spec.type == "chessboard"
    assert spec.n_corners == 54 and spec.corner_grid == (9, 6)
    assert spec.width_m == pytest.approx(0.25) and spec.height_m == pytest.approx(0.175)
    assert not spec.order_ambiguous
    assert ChessboardSpec(8, 6, 0.025).order_ambiguous


@pytest.mark.parametrize("doc", [CHARUCO, CHESSBOARD, _with(CHARUCO, square_length_m=1, marker_length_m=0.5)])
def test_round_trip(doc: dict, tmp_path) -> None:
    spec = parse_board(doc)
    assert parse_board(board_to_dict(spec)) == spec
    assert parse_board(json.loads(json.dumps(board_to_dict(spec)))) == spec
    path = write_board(tmp_path / "calibration" / "board.json", spec)
    assert read_board(path) == spec
    first = path.read_bytes()
    write_board(path, spec)
    assert path.read_bytes() == first  # canonical, byte-identical reruns


def test_board_to_dict_is_exactly_the_contract() -> None:
    assert board_to_dict(parse_board(CHARUCO)) == CHARUCO
    assert board_to_dict(parse_board(CHESSBOARD)) == CHESSBOARD
    with pytest.raises(TypeError):
        board_to_dict({"type": "charuco"})  # type: ignore[arg-type]


BAD = [
    ([1, 2], ""),
    ("charuco", ""),
    (None, ""),
    (_with(CHARUCO, type=_DROP), "type"),
    (_with(CHARUCO, type="circles"), "type"),
    (_with(CHARUCO, type=3), "type"),
    (_with(CHARUCO, type="ChArUco"), "type"),
    (_with(CHARUCO, squares_x=_DROP), "squares_x"),
    (_with(CHARUCO, squares_y=_DROP), "squares_y"),
    (_with(CHARUCO, square_length_m=_DROP), "square_length_m"),
    (_with(CHARUCO, marker_length_m=_DROP), "marker_length_m"),
    (_with(CHARUCO, dictionary=_DROP), "dictionary"),
    (_with(CHARUCO, squares_x=True), "squares_x"),
    (_with(CHARUCO, squares_x=7.0), "squares_x"),
    (_with(CHARUCO, squares_x="7"), "squares_x"),
    (_with(CHARUCO, squares_x=None), "squares_x"),
    (_with(CHARUCO, squares_x=1), "squares_x"),
    (_with(CHARUCO, squares_y=0), "squares_y"),
    (_with(CHARUCO, squares_y=-5), "squares_y"),
    (_with(CHARUCO, square_length_m=0), "square_length_m"),
    (_with(CHARUCO, square_length_m=-0.04), "square_length_m"),
    (_with(CHARUCO, square_length_m="0.04"), "square_length_m"),
    (_with(CHARUCO, square_length_m=True), "square_length_m"),
    (_with(CHARUCO, square_length_m=float("nan")), "square_length_m"),
    (_with(CHARUCO, square_length_m=float("inf")), "square_length_m"),
    (_with(CHARUCO, square_length_m=40, marker_length_m=30), "square_length_m"),  # millimetres
    (_with(CHARUCO, marker_length_m=0), "marker_length_m"),
    (_with(CHARUCO, marker_length_m=False), "marker_length_m"),
    (_with(CHARUCO, marker_length_m=0.04), "marker_length_m"),
    (_with(CHARUCO, marker_length_m=0.05), "marker_length_m"),
    (_with(CHARUCO, dictionary="DICT_5X5_99"), "dictionary"),
    (_with(CHARUCO, dictionary="dict_5x5_100"), "dictionary"),
    (_with(CHARUCO, dictionary=5), "dictionary"),
    (_with(CHARUCO, squares_x=11, squares_y=11, dictionary="DICT_4X4_50"), "dictionary"),  # 60 markers > 50
    (_with(CHARUCO, square_length=0.04), "square_length"),
    (_with(CHARUCO, cols=9), "cols"),
    (_with(CHESSBOARD, cols=_DROP), "cols"),
    (_with(CHESSBOARD, rows=_DROP), "rows"),
    (_with(CHESSBOARD, square_length_m=_DROP), "square_length_m"),
    (_with(CHESSBOARD, cols=2), "cols"),
    (_with(CHESSBOARD, rows=True), "rows"),
    (_with(CHESSBOARD, rows=6.5), "rows"),
    (_with(CHESSBOARD, square_length_m=0.0), "square_length_m"),
    (_with(CHESSBOARD, marker_length_m=0.02), "marker_length_m"),
    (_with(CHESSBOARD, squares_x=7), "squares_x"),
]


@pytest.mark.parametrize(("doc", "field"), BAD)
def test_bad_input_names_the_field(doc: object, field: str) -> None:
    with pytest.raises(BoardSpecError) as info:
        parse_board(doc)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.field == field
    assert err.message and (field in str(err) if field else "board.json" in str(err))


def test_messages_say_what_is_expected() -> None:
    cases = {
        "must be an integer": _with(CHARUCO, squares_x=True),
        "at least 2": _with(CHARUCO, squares_x=1),
        "positive": _with(CHARUCO, square_length_m=-1.0),
        "millimetres": _with(CHARUCO, square_length_m=40),
        "smaller than square_length_m": _with(CHARUCO, marker_length_m=0.05),
        "DICT_5X5_100": _with(CHARUCO, dictionary="DICT_5x5_100"),
        "larger dictionary": _with(CHARUCO, squares_x=11, squares_y=11, dictionary="DICT_4X4_50"),
        "expected one of": _with(CHARUCO, type="aprilgrid"),
        "allowed keys": _with(CHESSBOARD, squares_x=7),
        "missing": _with(CHESSBOARD, cols=_DROP),
    }
    for phrase, doc in cases.items():
        with pytest.raises(BoardSpecError, match=phrase):
            parse_board(doc)


def test_read_board_file_errors(tmp_path) -> None:
    with pytest.raises(BoardSpecError) as info:
        read_board(tmp_path / "absent.json")
    assert info.value.field == "" and "absent.json" in str(info.value)

    with pytest.raises(BoardSpecError) as info:
        read_board(tmp_path)  # a directory
    assert info.value.field == ""

    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"type": "charuco", ')
    with pytest.raises(BoardSpecError, match="not valid JSON") as info:
        read_board(bad_json)
    assert info.value.field == ""

    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(BoardSpecError) as info:
        read_board(binary)
    assert info.value.field == ""

    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(_with(CHARUCO, marker_length_m=0.06)))
    with pytest.raises(BoardSpecError) as info:
        read_board(wrong)
    assert info.value.field == "marker_length_m" and "wrong.json" in str(info.value)


def test_dictionary_names_match_opencv() -> None:
    cv2 = pytest.importorskip("cv2")
    opencv_names = {name for name in dir(cv2.aruco) if name.startswith("DICT_")}
    assert set(ARUCO_DICTIONARIES) == opencv_names
    for name, size in ARUCO_DICTIONARIES.items():
        dictionary = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, name))
        assert dictionary.bytesList.shape[0] == size, name


def test_contract_module_does_not_import_opencv() -> None:
    code = "import sys, capture_schema.board; assert 'cv2' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
