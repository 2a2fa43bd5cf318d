"""OpenCV side of the calibration boards: object points, board objects, textures.

The board frame is the one ``capture_schema.board`` defines: origin at the top-left
outer corner of the square grid, x to the right along a row, y down, z into the board,
metres. Object points come back in exactly the order (and for ChArUco, with exactly
the ids) that OpenCV's detectors report, so ``object_points[ids]`` pairs with detections.

Texture pixel convention (the one ``cv2.remap`` and every OpenCV pixel coordinate
use): pixel ``(col, row)`` has its *centre* at ``(u, v) = (col, row)`` and covers
``[col - 0.5, col + 0.5)``. ``generateImage`` with an output of exactly
``squares * px_per_square + 2 * margin`` pixels fills square ``k`` with pixel columns
``margin + k*pps ... margin + (k+1)*pps - 1`` (checked), so the grid's outer edge is
at ``u = margin - 0.5`` and a board point ``(x, y)`` in metres is at::

    u = origin[0] + px_per_metre * x,   v = origin[1] + px_per_metre * y,
    origin = (margin - 0.5, margin - 0.5),  px_per_metre = px_per_square / square_length_m

Forgetting the ``-0.5`` shifts every rendered corner by half a texture pixel.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import cv2
import numpy as np

from capture_schema.board import BoardSpec, CharucoBoardSpec, ChessboardSpec


class BoardTexture(NamedTuple):
    """A rendered board pattern and its exact board-metres -> texture-pixel mapping."""

    image: np.ndarray  # uint8 (H, W), 0 = black, 255 = white, white margin included
    px_per_metre: float
    origin_px: np.ndarray  # (2,) texture (u, v) of the board-frame origin

    def to_pixels(self, xy_m: np.ndarray) -> np.ndarray:
        """Board-frame (x, y) metres -> texture pixel (u, v), pixel centres at integers."""
        return np.asarray(xy_m, dtype=np.float64)[..., :2] * self.px_per_metre + self.origin_px


def aruco_dictionary(name: str) -> cv2.aruco.Dictionary:
    """cv2's predefined dictionary for a ``board.json`` dictionary name."""
    return cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, name))


def make_charuco_board(spec: CharucoBoardSpec) -> cv2.aruco.CharucoBoard:
    """The OpenCV board object, in the layout OpenCV >= 4.6 prints.

    Boards printed by older OpenCV differ only when ``squares_y`` is even (see
    ``setLegacyPattern``); an odd ``squares_y`` (the default 7 x 5) reads the same either way.
    """
    if not isinstance(spec, CharucoBoardSpec):
        raise TypeError(f"make_charuco_board needs a CharucoBoardSpec, got {type(spec).__name__}")
    return cv2.aruco.CharucoBoard(
        (spec.squares_x, spec.squares_y),
        spec.square_length_m,
        spec.marker_length_m,
        aruco_dictionary(spec.dictionary),
    )


def board_object_points(spec: BoardSpec) -> np.ndarray:
    """Inner-corner coordinates (N, 3) in the board frame (metres, z = 0), detector order.

    ChArUco: ``board.getChessboardCorners()``, row ``i`` is charuco id ``i``.
    Chessboard: row-major (``cols`` corners per row), first corner next to the white
    top-left square, as ``findChessboardCornersSB`` returns them when cols + rows is odd
    (it orders by square colour; checked for every roll). When ``spec.order_ambiguous``
    the detector's first corner may be either end of the grid.
    """
    if isinstance(spec, CharucoBoardSpec):
        return np.asarray(make_charuco_board(spec).getChessboardCorners(), dtype=np.float64).reshape(-1, 3)
    if isinstance(spec, ChessboardSpec):
        r, c = np.mgrid[1 : spec.rows + 1, 1 : spec.cols + 1]
        s = spec.square_length_m
        return np.stack([c.ravel() * s, r.ravel() * s, np.zeros(c.size)], axis=1)
    raise TypeError(f"not a board spec: {spec!r}")


def _chessboard_image(spec: ChessboardSpec, pps: int, margin: int) -> np.ndarray:
    nx, ny = spec.cols + 1, spec.rows + 1
    r, c = np.indices((ny, nx))
    squares = np.where((r + c) % 2 == 0, 255, 0).astype(np.uint8)  # top-left square white
    grid = np.kron(squares, np.ones((pps, pps), dtype=np.uint8))
    return cv2.copyMakeBorder(grid, margin, margin, margin, margin, cv2.BORDER_CONSTANT, value=255)


@lru_cache(maxsize=16)
def _cached_texture(spec: BoardSpec, pps: int, margin: int) -> BoardTexture:
    if isinstance(spec, CharucoBoardSpec):
        size = (spec.squares_x * pps + 2 * margin, spec.squares_y * pps + 2 * margin)
        try:
            image = make_charuco_board(spec).generateImage(size, marginSize=margin, borderBits=1)
        except cv2.error as exc:  # float32 rounding in OpenCV's marker placement, for a few sizes
            raise ValueError(f"OpenCV cannot draw this board at {pps} px per square; try another size") from exc
    elif isinstance(spec, ChessboardSpec):
        image = _chessboard_image(spec, pps, margin)
    else:
        raise TypeError(f"not a board spec: {spec!r}")
    image = np.ascontiguousarray(image, dtype=np.uint8)
    image.setflags(write=False)
    origin = np.full(2, margin - 0.5)
    origin.setflags(write=False)
    return BoardTexture(image, pps / spec.square_length_m, origin)


def board_texture(spec: BoardSpec, px_per_square: int, margin_px: int | None = None) -> BoardTexture:
    """Render the board pattern with a white margin (default half a square) around the grid.

    Returns ``(image, px_per_metre, origin_px)``; see the module docstring for the exact
    mapping. ``px_per_square`` must be an integer so that square edges fall on pixel
    edges. ChArUco markers are placed by OpenCV with their inset truncated to whole
    pixels (exact when ``(square - marker) / 2 * px_per_metre`` is an integer), which
    moves marker edges by < 1 texel but never the chessboard corners. A few sizes
    trip a rounding assertion in OpenCV and raise ``ValueError``.
    Cached and read-only: copy before drawing on it.
    """
    if isinstance(px_per_square, bool) or not isinstance(px_per_square, (int, np.integer)) or px_per_square < 4:
        raise ValueError(f"px_per_square must be an integer >= 4, got {px_per_square!r}")
    margin = int(px_per_square) // 2 if margin_px is None else int(margin_px)
    if margin < 0:
        raise ValueError(f"margin_px must be >= 0, got {margin_px!r}")
    return _cached_texture(spec, int(px_per_square), margin)


def detect_board(spec: BoardSpec, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Detect a board in a gray image: (corner ids (K,), pixel corners (K, 2)).

    ids index ``board_object_points(spec)``. Empty arrays when nothing is found.
    A plain chessboard is all-or-nothing (``findChessboardCornersSB``) and its
    order may be reversed when ``spec.order_ambiguous``.
    """
    gray = np.asarray(gray)
    if isinstance(spec, CharucoBoardSpec):
        corners, ids, _, _ = cv2.aruco.CharucoDetector(make_charuco_board(spec)).detectBoard(gray)
        if ids is None or len(ids) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 2))
        return ids.reshape(-1).astype(np.int64), corners.reshape(-1, 2).astype(np.float64)
    found, corners = cv2.findChessboardCornersSB(gray, (spec.cols, spec.rows), flags=cv2.CALIB_CB_ACCURACY)
    if not found:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 2))
    return np.arange(spec.n_corners, dtype=np.int64), corners.reshape(-1, 2).astype(np.float64)
