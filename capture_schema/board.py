"""The ``board.json`` contract: which calibration board a session was shot with.

Exactly two forms are accepted (sizes in metres, counts as OpenCV uses them)::

    {"type": "charuco", "squares_x": 7, "squares_y": 5, "square_length_m": 0.04,
     "marker_length_m": 0.03, "dictionary": "DICT_5X5_100"}
    {"type": "chessboard", "cols": 9, "rows": 6, "square_length_m": 0.025}

``cols``/``rows`` count *inner* corners (OpenCV's ``patternSize``). Unknown keys are
rejected so that a typo (``square_length`` without ``_m``) cannot be silently ignored.
This module stays free of OpenCV: the dictionary names are listed here and checked
against ``cv2.aruco`` by the tests.

Board frame (shared by both forms and used by ``fitting.calibration.boards``): origin at the
top-left *outer* corner of the square grid as printed, x along a row (to the right),
y down the columns, z = x cross y pointing into the board (away from a viewer who
sees the pattern). The pattern spans ``[0, width_m] x [0, height_m]``. A chessboard's
top-left square (at the origin) is *white*: that is the end ``findChessboardCornersSB``
numbers first on every board whose cols + rows is odd, so its order is this frame's.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Union

from capture_schema.atomic import atomic_write_json
from capture_schema.json_file import JsonFileError, read_json_file

#: cv2.aruco's predefined dictionaries and how many markers each holds.
#: (OpenCV exposes the AprilTag/MIP names in both upper and lower case.)
ARUCO_DICTIONARIES: dict[str, int] = {
    "DICT_4X4_50": 50,
    "DICT_4X4_100": 100,
    "DICT_4X4_250": 250,
    "DICT_4X4_1000": 1000,
    "DICT_5X5_50": 50,
    "DICT_5X5_100": 100,
    "DICT_5X5_250": 250,
    "DICT_5X5_1000": 1000,
    "DICT_6X6_50": 50,
    "DICT_6X6_100": 100,
    "DICT_6X6_250": 250,
    "DICT_6X6_1000": 1000,
    "DICT_7X7_50": 50,
    "DICT_7X7_100": 100,
    "DICT_7X7_250": 250,
    "DICT_7X7_1000": 1000,
    "DICT_ARUCO_ORIGINAL": 1024,
    "DICT_APRILTAG_16h5": 30,
    "DICT_APRILTAG_16H5": 30,
    "DICT_APRILTAG_25h9": 35,
    "DICT_APRILTAG_25H9": 35,
    "DICT_APRILTAG_36h10": 2320,
    "DICT_APRILTAG_36H10": 2320,
    "DICT_APRILTAG_36h11": 587,
    "DICT_APRILTAG_36H11": 587,
    "DICT_ARUCO_MIP_36h12": 250,
    "DICT_ARUCO_MIP_36H12": 250,
}

#: A square larger than this is almost certainly a size given in millimetres.
MAX_SQUARE_LENGTH_M = 1.0


class BoardSpecError(ValueError):
    """A ``board.json`` that does not follow the contract.

    ``field`` names the offending key (``"type"`` for the board type, ``""`` when the
    document as a whole is wrong: unreadable file, invalid JSON, not an object).
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"board.json field {field!r}: {message}" if field else f"board.json: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class CharucoBoardSpec:
    """A ChArUco board: ``squares_x`` x ``squares_y`` squares, markers in the white ones."""

    squares_x: int
    squares_y: int
    square_length_m: float
    marker_length_m: float
    dictionary: str = "DICT_5X5_100"

    type = "charuco"

    @property
    def corner_grid(self) -> tuple[int, int]:
        """Inner corners per row and per column (OpenCV's ChArUco corner layout)."""
        return self.squares_x - 1, self.squares_y - 1

    @property
    def n_corners(self) -> int:
        return (self.squares_x - 1) * (self.squares_y - 1)

    @property
    def n_markers(self) -> int:
        return (self.squares_x * self.squares_y) // 2

    @property
    def width_m(self) -> float:
        """Physical width of the square grid (without any printed margin)."""
        return self.squares_x * self.square_length_m

    @property
    def height_m(self) -> float:
        return self.squares_y * self.square_length_m


@dataclass(frozen=True)
class ChessboardSpec:
    """A plain chessboard with ``cols`` x ``rows`` inner corners ((cols+1) x (rows+1) squares)."""

    cols: int
    rows: int
    square_length_m: float

    type = "chessboard"

    @property
    def corner_grid(self) -> tuple[int, int]:
        return self.cols, self.rows

    @property
    def n_corners(self) -> int:
        return self.cols * self.rows

    @property
    def width_m(self) -> float:
        """Physical width of the square grid (without any printed margin)."""
        return (self.cols + 1) * self.square_length_m

    @property
    def order_ambiguous(self) -> bool:
        """True when the pattern looks the same turned by 180 degrees (cols + rows even).

        Detectors then cannot tell which end is corner 0, so two cameras may number
        the same corners differently; an odd cols + rows (e.g. 9 x 6) avoids that.
        """
        return (self.cols + self.rows) % 2 == 0

    @property
    def height_m(self) -> float:
        return (self.rows + 1) * self.square_length_m


BoardSpec = Union[CharucoBoardSpec, ChessboardSpec]

_FIELDS: dict[str, tuple[str, ...]] = {
    "charuco": ("type", "squares_x", "squares_y", "square_length_m", "marker_length_m", "dictionary"),
    "chessboard": ("type", "cols", "rows", "square_length_m"),
}


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _require(data: Mapping[str, Any], name: str) -> Any:
    if name not in data:
        label = "ChArUco board" if data["type"] == "charuco" else "chessboard"
        raise BoardSpecError(name, f"missing; a {label} needs {', '.join(_FIELDS[data['type']][1:])}")
    return data[name]


def _int_field(data: Mapping[str, Any], name: str, minimum: int, why: str) -> int:
    value = _require(data, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BoardSpecError(name, f"must be an integer, got {_type_name(value)} {value!r}")
    if value < minimum:
        raise BoardSpecError(name, f"must be at least {minimum} ({why}), got {value}")
    return value


def _length_field(data: Mapping[str, Any], name: str) -> float:
    value = _require(data, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BoardSpecError(name, f"must be a number of metres, got {_type_name(value)} {value!r}")
    try:
        value = float(value)
    except OverflowError:  # an integer too large for a float (JSON allows any number of digits)
        value = math.inf
    if not math.isfinite(value) or value <= 0:
        raise BoardSpecError(name, f"must be a positive, finite length in metres, got {value!r}")
    if value > MAX_SQUARE_LENGTH_M:
        raise BoardSpecError(
            name, f"must be in metres (at most {MAX_SQUARE_LENGTH_M}), got {value!r}; was it given in millimetres?"
        )
    return value


def parse_board(data: object) -> BoardSpec:
    """Validate a decoded ``board.json`` document and return its spec.

    Raises ``BoardSpecError`` naming the first offending field.
    """
    if not isinstance(data, Mapping):
        raise BoardSpecError("", f"must be a JSON object, got {_type_name(data)}")
    kind = data.get("type")
    if "type" not in data:
        raise BoardSpecError("type", f"missing; expected one of {sorted(_FIELDS)}")
    if not isinstance(kind, str) or kind not in _FIELDS:
        raise BoardSpecError("type", f"unknown board type {kind!r}; expected one of {sorted(_FIELDS)}")
    unknown = sorted(str(k) for k in data if k not in _FIELDS[kind])
    if unknown:
        raise BoardSpecError(
            unknown[0], f"unexpected key for a {kind} board; allowed keys are {', '.join(_FIELDS[kind])}"
        )
    if kind == "chessboard":
        why = "OpenCV needs more than 2 inner corners per side"
        cols = _int_field(data, "cols", 3, why)
        rows = _int_field(data, "rows", 3, why)
        return ChessboardSpec(cols=cols, rows=rows, square_length_m=_length_field(data, "square_length_m"))

    why = "a ChArUco board needs at least 2 squares per side"
    squares_x = _int_field(data, "squares_x", 2, why)
    squares_y = _int_field(data, "squares_y", 2, why)
    square = _length_field(data, "square_length_m")
    marker = _length_field(data, "marker_length_m")
    if marker >= square:
        raise BoardSpecError(
            "marker_length_m", f"must be smaller than square_length_m ({square}), got {marker}"
        )
    dictionary = _require(data, "dictionary")
    if not isinstance(dictionary, str) or dictionary not in ARUCO_DICTIONARIES:
        raise BoardSpecError(
            "dictionary",
            f"unknown ArUco dictionary {dictionary!r}; expected a cv2.aruco name such as "
            f"'DICT_5X5_100' (one of {', '.join(ARUCO_DICTIONARIES)})",
        )
    spec = CharucoBoardSpec(squares_x, squares_y, square, marker, dictionary)
    if spec.n_markers > ARUCO_DICTIONARIES[dictionary]:
        raise BoardSpecError(
            "dictionary",
            f"{dictionary} holds {ARUCO_DICTIONARIES[dictionary]} markers but a "
            f"{squares_x}x{squares_y} board needs {spec.n_markers}; pick a larger dictionary",
        )
    return spec


def read_board(path: str | os.PathLike[str]) -> BoardSpec:
    """Read and validate a ``board.json`` file; every failure is a ``BoardSpecError``."""
    path = Path(path)
    try:
        data = read_json_file(path)
    except JsonFileError as exc:
        if exc.kind == "io":  # missing, unreadable, not a regular file, too large, not UTF-8
            raise BoardSpecError("", f"cannot read {path}: {exc.reason}") from None
        raise BoardSpecError("", f"{path} is {exc.reason}" if exc.reason.startswith("not valid JSON")
                             else f"{path} is not valid JSON: {exc.reason}") from None
    try:
        return parse_board(data)
    except BoardSpecError as exc:
        raise BoardSpecError(exc.field, f"{exc.message} (in {path})") from None


def board_to_dict(spec: BoardSpec) -> dict[str, Any]:
    """The ``board.json`` document for ``spec`` (``parse_board`` inverts it)."""
    if isinstance(spec, CharucoBoardSpec):
        return {
            "type": "charuco",
            "squares_x": int(spec.squares_x),
            "squares_y": int(spec.squares_y),
            "square_length_m": float(spec.square_length_m),
            "marker_length_m": float(spec.marker_length_m),
            "dictionary": str(spec.dictionary),
        }
    if isinstance(spec, ChessboardSpec):
        return {
            "type": "chessboard",
            "cols": int(spec.cols),
            "rows": int(spec.rows),
            "square_length_m": float(spec.square_length_m),
        }
    raise TypeError(f"not a board spec: {spec!r}")


def write_board(path: str | os.PathLike[str], spec: BoardSpec) -> Path:
    """Write ``board.json`` atomically (canonical JSON, so reruns are byte-identical)."""
    return atomic_write_json(path, board_to_dict(spec))
