"""Hostile input for the contract's JSON documents: session.json, board.json, calibration.json.

Property tests start from a valid document of each kind, mutate it (drop keys, add
unknown keys, replace values with arbitrary JSON -- NaN/inf, huge ints, deep nesting,
control characters, ids with a trailing newline) or write arbitrary bytes, and call
the real loaders. Only clean outcomes are allowed: a result or the loader's own error,
never a traceback, a hang or an unbounded allocation.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from capture_schema.board import BoardSpecError, CharucoBoardSpec, ChessboardSpec, read_board  # noqa: E402
from capture_schema.calibration_file import Calibration, read_calibration  # noqa: E402
from capture_schema.cameras import Camera  # noqa: E402
from capture_schema.json_file import JsonFileError, parse_json_text, read_json_file  # noqa: E402
from capture_schema.layout import DEFAULT_CAMERAS, DEFAULT_EXPRESSIONS  # noqa: E402
from capture_schema.problems import Problem, ProblemCode  # noqa: E402
from capture_schema.session import SessionInfo, read_session  # noqa: E402

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SESSION_ID = "sim0011_s01"
SESSION = {
    "subject_id": "sim0011",
    "session_id": SESSION_ID,
    "rig_id": "rig_a",
    "captured_at": "2024-05-01T10:00:00Z",
    "expressions": list(DEFAULT_EXPRESSIONS),
    "cameras": list(DEFAULT_CAMERAS),
    "calibration": "calibration",
    "operator": "jd",
}
CHARUCO = {"type": "charuco", "squares_x": 7, "squares_y": 5, "square_length_m": 0.04,
           "marker_length_m": 0.03, "dictionary": "DICT_5X5_100"}
CHESSBOARD = {"type": "chessboard", "cols": 9, "rows": 6, "square_length_m": 0.025}


def _camera_block(yaw_deg: float, x: float) -> dict[str, Any]:
    a = math.radians(yaw_deg)
    return {"width": 640, "height": 480, "fx": 800.0, "fy": 801.5, "cx": 319.5, "cy": 241.0,
            "dist": [-0.05, 0.01, 0.0002, -0.0001, 0.0],
            "R": [[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]],
            "t": [x, 0.02, 1.2], "rmse_px": 0.31, "n_observations": 1204}


CALIBRATION = {"rmse_px": 0.33, "cameras": {"cam00": _camera_block(0.0, 0.0), "cam01": _camera_block(30.0, -0.6)}}


# ---- arbitrary JSON values ---------------------------------------------------------------------

class Raw:
    """JSON text spliced in verbatim (what ``json.dumps`` cannot write: deep nesting, 1e400, ...)."""

    def __init__(self, text: str) -> None:
        self.text = text


RAW_FRAGMENTS = st.one_of(
    st.integers(1, 3000).map(lambda n: Raw("[" * n + "]" * n)),
    st.integers(1, 3000).map(lambda n: Raw('{"a":' * n + "1" + "}" * n)),
    st.integers(1, 100_000).map(lambda n: Raw("[" * n)),  # unterminated
    st.sampled_from(["NaN", "-NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e308", "-0.0", "1e-400",
                     "9" * 5000, '{"a": 1, "a": 2}', '"\\ud800"', '"\\u0000"', "true", "nul"]).map(Raw),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**4000), max_value=10**4000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1, 0.5, 1e308, -1e308, 5e-324, 2**63, 2**64 + 1, 100_001, 1e6, 1e4 + 1]),
    st.text(),
    st.text(alphabet=st.characters(codec="utf-8", categories=["Cc", "Zs", "Lu", "Nd"])),
    st.sampled_from(["sim0011\n", "sim0011 ", " sim0011", "a/b", "..", "", "\x00", "640", "1e3", "NaN",
                     "DICT_5X5_100\n", "charuco\n", "/abs/path"]),
    RAW_FRAGMENTS,
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=6), st.dictionaries(st.text(max_size=8), children, max_size=6)),
    max_leaves=20,
)


def dumps(doc: Any) -> str:
    """``json.dumps`` with ``Raw`` fragments spliced in (NaN/inf floats become NaN/Infinity tokens)."""
    raws: list[str] = []

    def swap(value: Any) -> Any:
        if isinstance(value, Raw):
            raws.append(value.text)
            return f"@@RAW{len(raws) - 1}@@"
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v) for v in value]
        return value

    text = json.dumps(swap(doc))
    for i, raw in enumerate(raws):
        text = text.replace(f'"@@RAW{i}@@"', raw, 1)
    return text


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every container path in ``doc`` (the root first)."""
    out = [prefix]
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        if isinstance(value, (dict, list)):
            out.extend(_paths(value, prefix + (key,)))
    return out


def _get(doc: Any, path: tuple) -> Any:
    for key in path:
        doc = doc[key]
    return doc


@st.composite
def mutated(draw, base: dict) -> Any:
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 4))):
        if not isinstance(doc, (dict, list)):
            break
        container = _get(doc, draw(st.sampled_from(_paths(doc))))
        op = draw(st.sampled_from(["drop", "add", "replace", "replace", "replace_root"]))
        if op == "replace_root":
            if draw(st.integers(0, 9)) == 0:
                doc = draw(JSON_VALUES)
            continue
        if isinstance(container, dict):
            keys = sorted(container)
            if op == "add" or not keys:
                container[draw(st.text(max_size=12))] = draw(JSON_VALUES)
            elif op == "drop":
                del container[draw(st.sampled_from(keys))]
            else:
                container[draw(st.sampled_from(keys))] = draw(JSON_VALUES)
        elif isinstance(container, list):
            if op == "add" or not container:
                container.append(draw(JSON_VALUES))
            elif op == "drop":
                del container[draw(st.integers(0, len(container) - 1))]
            else:
                container[draw(st.integers(0, len(container) - 1))] = draw(JSON_VALUES)
    return doc


FILE_BYTES = st.one_of(
    st.binary(max_size=2000),
    st.text(max_size=500).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.integers(1, 200_000).map(lambda n: (b"[" * n) + (b"]" * n)),
    st.integers(1, 200_000).map(lambda n: b'{"a":' * n),
    st.sampled_from([b"", b"\xef\xbb\xbf{}", b"{}", b"[]", b"null", b"NaN", b"\x00", b'{"type": "charuco"'])
)


# ---- outcome checks ------------------------------------------------------------------------------

def _check_session(session_dir: Path) -> None:
    result = read_session(session_dir)
    assert isinstance(result, tuple) and len(result) == 2
    info, problems = result
    assert all(isinstance(p, Problem) for p in problems)
    assert (info is None) == bool(problems), (info, problems)
    if info is not None:
        assert isinstance(info, SessionInfo)


def _check_board(path: Path) -> None:
    try:
        spec = read_board(path)
    except BoardSpecError as exc:
        assert isinstance(exc.field, str)
        return
    assert isinstance(spec, (CharucoBoardSpec, ChessboardSpec))


def _finite_camera(cam: Camera) -> bool:
    numbers = [cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy, *cam.dist, *cam.R.ravel(), *cam.t]
    return all(isinstance(v, (int, float, np.floating)) and math.isfinite(v) for v in numbers)


def _check_calibration(path: Path) -> None:
    try:
        calibration = read_calibration(path)
    except ValueError as exc:
        assert str(path) in str(exc)
        return
    assert isinstance(calibration, Calibration) and calibration.cameras
    assert math.isfinite(calibration.rmse_px) and calibration.rmse_px >= 0
    for cam_id, cam in calibration.cameras.items():
        assert isinstance(cam.width, int) and isinstance(cam.height, int)
        assert _finite_camera(cam), cam_id
        assert math.isfinite(calibration.camera_rmse_px[cam_id])
        assert isinstance(calibration.n_observations[cam_id], int) and calibration.n_observations[cam_id] >= 0


def _session_dir(tmp: str) -> Path:
    path = Path(tmp) / SESSION_ID
    path.mkdir()
    return path


# ---- property tests ------------------------------------------------------------------------------

def test_base_documents_are_valid(tmp_path) -> None:
    session = tmp_path / SESSION_ID
    session.mkdir()
    (session / "session.json").write_text(dumps(SESSION))
    info, problems = read_session(session)
    assert problems == [] and info is not None and info.extra == {"operator": "jd"}
    for i, doc in enumerate((CHARUCO, CHESSBOARD)):
        (tmp_path / f"board{i}.json").write_text(dumps(doc))
        assert read_board(tmp_path / f"board{i}.json").type == doc["type"]
    (tmp_path / "calibration.json").write_text(dumps(CALIBRATION))
    calibration = read_calibration(tmp_path / "calibration.json")
    assert list(calibration.cameras) == ["cam00", "cam01"] and calibration.n_observations["cam01"] == 1204


@FUZZ
@given(doc=mutated(SESSION))
def test_session_json_mutations(doc) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        session = _session_dir(tmp)
        (session / "session.json").write_text(dumps(doc), encoding="utf-8", errors="surrogatepass")
        _check_session(session)


@FUZZ
@given(doc=st.one_of(mutated(CHARUCO), mutated(CHESSBOARD)))
def test_board_json_mutations(doc) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "board.json"
        path.write_text(dumps(doc), encoding="utf-8", errors="surrogatepass")
        _check_board(path)


@FUZZ
@given(doc=mutated(CALIBRATION))
def test_calibration_json_mutations(doc) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "calibration.json"
        path.write_text(dumps(doc), encoding="utf-8", errors="surrogatepass")
        _check_calibration(path)


@FUZZ
@given(data=FILE_BYTES)
def test_arbitrary_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        session = _session_dir(tmp)
        for name in ("session.json", "board.json", "calibration.json"):
            (session / name).write_bytes(data)
        _check_session(session)
        _check_board(session / "board.json")
        _check_calibration(session / "calibration.json")


# ---- plain tests ---------------------------------------------------------------------------------

def _write_session(tmp_path: Path, text: str) -> Path:
    session = tmp_path / SESSION_ID
    session.mkdir(exist_ok=True)
    (session / "session.json").write_text(text)
    return session


def test_deeply_nested_session_json_is_invalid(tmp_path) -> None:
    # 30k levels: far past Python's recursion limit, yet under read_session's 64 KiB cap.
    info, problems = read_session(_write_session(tmp_path, "[" * 30_000 + "]" * 30_000))
    assert info is None and [p.code for p in problems] == [ProblemCode.SESSION_FILE_INVALID]
    assert "nesting" in problems[0].message
    # 100k levels (200 KB) is refused by the size cap before it is even read.
    info, problems = read_session(_write_session(tmp_path, "[" * 100_000 + "]" * 100_000))
    assert info is None and [p.code for p in problems] == [ProblemCode.SESSION_FILE_INVALID]
    assert "too large" in problems[0].message
    # read_json_file (4 MiB default) reaches the parser and reports the nesting.
    with pytest.raises(JsonFileError, match="nesting too deep"):
        read_json_file(tmp_path / SESSION_ID / "session.json")


def test_session_json_with_nan_is_invalid(tmp_path) -> None:
    info, problems = read_session(_write_session(tmp_path, dumps(dict(SESSION, operator=Raw("NaN")))))
    assert info is None and [p.code for p in problems] == [ProblemCode.SESSION_FILE_INVALID]
    assert "NaN" in problems[0].message and "operator" in problems[0].message


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e308", "1e400"])
@pytest.mark.parametrize("field", ["fx", "t"])
def test_non_finite_or_huge_camera_numbers_are_refused(tmp_path, token: str, field: str) -> None:
    doc = copy.deepcopy(CALIBRATION)
    if field == "t":
        doc["cameras"]["cam01"]["t"][1] = Raw(token)
    else:
        doc["cameras"]["cam01"]["fx"] = Raw(token)
    path = tmp_path / "calibration.json"
    path.write_text(dumps(doc))
    with pytest.raises(ValueError) as info:
        read_calibration(path)
    message = str(info.value)
    assert str(path) in message and "cam01" in message
    assert re.search(rf"\b{field}\b", message), message


@pytest.mark.parametrize(
    ("field", "value", "phrase"),
    [
        ("width", "640", "must be an integer"),
        ("width", True, "must be an integer"),
        ("width", 640.5, "whole number"),
        ("width", 0, "positive"),
        ("width", 100_001, "positive"),
        ("fy", -1.0, "positive focal"),
        ("fy", 2e6, "below"),
        ("cx", 5000.0, "within"),
        ("cy", -1000.0, "within"),
        ("dist", [0.0, 0.0, 0.0], "4 or 5"),
        ("dist", [0.0, 0.0, 0.0, 0.0, 5e3], "magnitude"),
        ("dist", "abcd", "list"),
        ("R", [[1, 0, 0], [0, 1, 0], [0, 0, -1]], "proper rotation"),
        ("R", [["1", 0, 0], [0, 1, 0], [0, 0, 1]], "must be a number"),
        ("R", [[1, 0, 0], [0, 1, 0]], "3x3"),
        ("t", [0.0, 0.0, 2e4], "at most"),
        ("t", [0.0, None, 0.0], "must be a number"),
        ("rmse_px", -0.1, "at least 0"),
        ("n_observations", -3, "whole number in"),
        ("n_observations", 2.5, "whole number"),
        ("n_observations", "12", "must be an integer"),
    ],
)
def test_camera_values_are_checked(field: str, value: Any, phrase: str) -> None:
    doc = copy.deepcopy(CALIBRATION)
    doc["cameras"]["cam00"][field] = value
    with pytest.raises(ValueError, match=phrase) as info:
        Calibration.from_dict(doc)
    assert "cam00" in str(info.value) and field in str(info.value)


def test_whole_float_sizes_are_accepted_and_stored_as_int() -> None:
    doc = copy.deepcopy(CALIBRATION)
    doc["cameras"]["cam00"].update(width=640.0, height=480.0, dist=[0.0, 0.0, 0.0, 0.0], n_observations=12.0)
    calibration = Calibration.from_dict(doc)
    cam = calibration.cameras["cam00"]
    assert type(cam.width) is int and cam.width == 640 and cam.dist == (0.0,) * 5
    assert calibration.n_observations["cam00"] == 12


def test_calibration_shape_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        Calibration.from_dict({"cameras": {}})
    with pytest.raises(ValueError, match="cam00.*object"):
        Calibration.from_dict({"cameras": {"cam00": [1, 2, 3]}})
    with pytest.raises(ValueError, match="rmse_px"):
        Calibration.from_dict(dict(CALIBRATION, rmse_px="0.3"))


def test_cameras_built_in_code_accept_numpy_scalars() -> None:
    cam = Camera(np.int64(640), np.int64(480), np.float64(800.0), np.float32(800.0), np.float64(320.0),
                 np.float64(240.0), tuple(np.zeros(5)), np.eye(3), np.zeros((3, 1)))
    assert type(cam.width) is int and cam.t.shape == (3,)


def _refused_without_hanging(call) -> Any:
    """Run ``call`` in a daemon thread; fail (instead of hanging the suite) if it blocks."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = call()
        except BaseException as exc:  # noqa: BLE001 - reported below
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the loader blocked on a FIFO"
    return box


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_fifo_session_json_is_refused(tmp_path) -> None:
    session = tmp_path / SESSION_ID
    session.mkdir()
    os.mkfifo(session / "session.json")
    box = _refused_without_hanging(lambda: read_session(session))
    info, problems = box["result"]
    assert info is None and [p.code for p in problems] == [ProblemCode.SESSION_FILE_INVALID]
    assert "regular file" in problems[0].message


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_fifo_board_and_calibration_json_are_refused(tmp_path) -> None:
    os.mkfifo(tmp_path / "board.json")
    os.mkfifo(tmp_path / "calibration.json")
    box = _refused_without_hanging(lambda: read_board(tmp_path / "board.json"))
    assert isinstance(box.get("error"), BoardSpecError) and "regular file" in str(box["error"])
    box = _refused_without_hanging(lambda: read_calibration(tmp_path / "calibration.json"))
    assert isinstance(box.get("error"), JsonFileError) and "regular file" in str(box["error"])


def test_folder_named_session_json_is_invalid_and_absent_is_missing(tmp_path) -> None:
    session = tmp_path / SESSION_ID
    session.mkdir()
    assert read_session(session)[1][0].code == ProblemCode.SESSION_FILE_MISSING
    (session / "session.json").mkdir()
    info, problems = read_session(session)
    assert info is None and problems[0].code == ProblemCode.SESSION_FILE_INVALID


def test_oversized_file_is_refused_before_reading(tmp_path) -> None:
    path = tmp_path / "big.json"
    with open(path, "wb") as fh:
        fh.truncate(64 * 1024 * 1024)  # sparse: costs no disk
    with pytest.raises(JsonFileError, match="too large") as info:
        read_json_file(path)
    assert info.value.kind == "io" and str(path) in str(info.value)
    with pytest.raises(JsonFileError, match="too large"):
        read_json_file(tmp_path / "big.json", max_bytes=10)


def test_id_with_trailing_newline_is_refused(tmp_path) -> None:
    # Depends on parse_session matching ids with re.fullmatch (``$`` accepts a trailing "\n").
    info, problems = read_session(_write_session(tmp_path, dumps(dict(SESSION, subject_id="sim0011\n"))))
    assert info is None
    assert [p.code for p in problems] == [ProblemCode.SESSION_FIELD_INVALID]
    assert "subject_id" in problems[0].message


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ('{"a": 1, "a": 2}', "duplicate key"),
        ('{"a": [1, NaN]}', r"NaN at \$\.a\[1\]"),
        ("[1e400]", "out of range"),
        ('"\\ud800"', "surrogate"),
        ("9" * 5000, "too many digits"),
        ('{"a": ', "line 1 column"),
    ],
)
def test_parse_json_text_refusals(text: str, phrase: str) -> None:
    with pytest.raises(JsonFileError, match=phrase):
        parse_json_text(text, "doc.json")
