"""Find the calibration board in every image of a calibration folder.

Layout read: ``CALIB_DIR/board.json`` and ``CALIB_DIR/<camera_id>/<NNN>.<jpg|png>``;
the file stem ``NNN`` names the moment, shared by every camera. Images that cannot
be decoded, have another size than the camera's other images, or show no usable
board are *skipped and counted* per camera (with the reason per file), never fatal:
one bad frame must not sink a rig calibration, but the user must see it.

Corner accuracy decides everything downstream, so the detectors were chosen by
measurement (simulated renders with known corners, and OpenCV's real stereo sample):

* ChArUco: ``cv2.aruco.CharucoDetector`` with its own corner refinement. Adding a
  ``cornerSubPix`` pass made corners *worse* (the markers inside the squares pull
  the window), e.g. 0.08 -> 0.15 px RMS on 512 px renders.
* Chessboard: ``findChessboardCornersSB`` (it numbers corners by square colour, so
  for cols + rows odd its order is the board frame's; the classic
  ``findChessboardCorners`` reversed the order on OpenCV's own sample images), then
  ``cornerSubPix`` with a half-window of ~0.3 x the smallest corner spacing in that
  view (at most 11, OpenCV's reference). A fixed (11, 11) window spans neighbouring
  corners when squares are small: on 27 px squares it erred 1.4 px RMS against the
  truth versus 0.05 px adaptive, and on OpenCV's 640 x 480 sample (21-37 px squares)
  per-camera calibration RMS drops from 0.41/0.46 px to 0.18/0.19 px.

Detection runs in a thread pool: OpenCV releases the GIL inside decode/detect.
"""

from __future__ import annotations

import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from capture_schema.board import BoardSpec, BoardSpecError, CharucoBoardSpec, ChessboardSpec, read_board
from capture_schema.layout import BOARD_FILE
from fitting.calibration.boards import make_charuco_board
from fitting.calibration.errors import CalibrationError
from fitting.image_io import ImageReadError, read_image

#: Image files a calibration folder may hold (case-insensitive suffix).
CALIBRATION_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Fewer corners than this cannot give a board pose: such an image counts as "no board".
MIN_DETECTED_CORNERS = 4
#: cornerSubPix half-window as a fraction of the smallest corner spacing, and its bounds.
SUBPIX_WINDOW_FRACTION = 0.3
SUBPIX_MAX_HALF_WINDOW = 11
SUBPIX_MIN_HALF_WINDOW = 2

#: ``progress(stage, done, total)``; stages are "detect", "initialize", "refine".
ProgressCallback = Callable[[str, int, int], None]

_SUBPIX_CRITERIA = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_COUNT, 100, 1e-5)
_SB_FLAGS = cv2.CALIB_CB_ACCURACY | cv2.CALIB_CB_NORMALIZE_IMAGE


@dataclass(frozen=True)
class ViewDetection:
    """The board corners one camera saw at one moment.

    ``ids`` index ``fitting.calibration.boards.board_object_points(spec)``; for a chessboard
    whose order is ambiguous (``spec.order_ambiguous``) they are in the detector's
    order, which ``initialize`` may reverse to agree with the other cameras.
    """

    ids: np.ndarray  # (K,) int64
    corners: np.ndarray  # (K, 2) float64 pixels, OpenCV convention (pixel centres at integers)


@dataclass
class CameraDetections:
    """Everything found in one camera's folder, plus what was skipped and why."""

    camera_id: str
    image_size: tuple[int, int] | None  # (width, height); None when no image was readable
    views: dict[str, ViewDetection]  # frame key -> detection, frames where the board was found
    n_images: int
    skipped: dict[str, str] = field(default_factory=dict)  # file name -> reason

    @property
    def n_detected(self) -> int:
        return len(self.views)

    @property
    def n_unreadable(self) -> int:
        return sum(1 for r in self.skipped.values() if r.startswith("unreadable"))

    @property
    def n_no_board(self) -> int:
        return sum(1 for r in self.skipped.values() if r.startswith("no board"))

    @property
    def n_wrong_size(self) -> int:
        return sum(1 for r in self.skipped.values() if r.startswith("size"))

    def summary(self) -> dict:
        """JSON-ready counts (and the skipped files) for reports."""
        return {
            "image_size": list(self.image_size) if self.image_size else None,
            "n_images": self.n_images,
            "n_detected": self.n_detected,
            "n_unreadable": self.n_unreadable,
            "n_no_board": self.n_no_board,
            "n_wrong_size": self.n_wrong_size,
            "skipped": dict(sorted(self.skipped.items())),
        }


@dataclass
class FolderDetections:
    """Detections of a whole calibration folder, cameras in calibration order."""

    spec: BoardSpec
    cameras: dict[str, CameraDetections]

    @property
    def frames(self) -> list[str]:
        keys = {k for cam in self.cameras.values() for k in cam.views}
        return sorted(keys, key=frame_sort_key)


def frame_sort_key(key: str) -> tuple:
    """Natural order of moment keys: ``2`` before ``10``, text keys after numbers."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.findall(r"\d+|\D+", key))


def load_board(calib_dir: str | os.PathLike[str]) -> BoardSpec:
    """``board.json`` of a calibration folder; a malformed one becomes a ``CalibrationError``."""
    if not Path(calib_dir).is_dir():
        raise CalibrationError(f"calibration folder {str(calib_dir)!r} does not exist")
    path = Path(calib_dir) / BOARD_FILE
    try:
        if not path.is_file():
            raise CalibrationError(f"calibration folder {str(calib_dir)!r} has no {BOARD_FILE}", field="")
        return read_board(path)
    except BoardSpecError as exc:
        raise CalibrationError(f"malformed {BOARD_FILE}: {exc}", field=exc.field) from None
    except OSError as exc:
        raise CalibrationError(f"cannot read {str(path)!r}: {exc.strerror or exc}", field="") from None


def list_calibration_images(
    calib_dir: str | os.PathLike[str], cameras: Sequence[str] | None = None, *, skip_empty: bool = False
) -> dict[str, dict[str, Path]]:
    """``{camera_id: {frame_key: image path}}`` for a calibration folder.

    ``cameras=None`` takes every sub-folder not starting with ``.``, sorted by name
    (so pass the rig's own order when it matters: the first camera defines the
    world frame); ``cameras`` given, other sub-folders are ignored. A camera folder
    that is missing, not a folder, unreadable or holds no image, a folder with two
    images for one moment (``001.jpg`` and ``001.png``) or no cameras at all raise
    ``CalibrationError`` naming the camera: a camera is never dropped silently.
    ``skip_empty=True`` leaves camera folders without images out instead (for
    hashing what is there, ``calibration_input_hash``).
    """
    root = Path(calib_dir)
    if not root.is_dir():
        raise CalibrationError(f"calibration folder {str(root)!r} does not exist")

    def images_of(folder: Path, camera: str | None) -> list[Path]:
        try:
            return [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in CALIBRATION_IMAGE_SUFFIXES]
        except OSError as exc:
            what = f"camera {camera!r}: cannot read its folder" if camera else "cannot read calibration folder"
            raise CalibrationError(f"{what} {str(folder)!r}: {exc.strerror or exc}", camera=camera) from None

    if cameras is None:
        try:
            names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError as exc:
            raise CalibrationError(f"cannot read calibration folder {str(root)!r}: {exc.strerror or exc}") from None
        if skip_empty:
            names = [name for name in names if images_of(root / name, name)]
    else:
        names = [str(c) for c in cameras]
        duplicates = sorted({c for c in names if names.count(c) > 1})
        if duplicates:
            raise CalibrationError(f"camera(s) listed twice: {', '.join(duplicates)}", camera=duplicates[0])
    if not names:
        raise CalibrationError(
            f"no cameras to calibrate in {str(root)!r}: expected <camera_id>/<NNN>.png|jpg sub-folders"
        )
    out: dict[str, dict[str, Path]] = {}
    for name in names:
        folder = root / name
        if not folder.is_dir():
            if folder.exists() or folder.is_symlink():
                raise CalibrationError(f"camera {name!r}: {str(folder)!r} is not a folder", camera=name)
            raise CalibrationError(f"camera {name!r} has no folder {str(folder)!r}", camera=name)
        images = images_of(folder, name)
        if not images:
            raise CalibrationError(
                f"camera {name!r}: its folder {str(folder)!r} holds no board images (<NNN>.png|jpg); "
                "add them, or leave the camera out (remove the folder, or list the others with --cameras)",
                camera=name,
            )
        frames: dict[str, Path] = {}
        for path in sorted(images):
            if path.stem in frames:
                raise CalibrationError(
                    f"camera {name!r} has two images for moment {path.stem!r}: "
                    f"{frames[path.stem].name} and {path.name}; keep one",
                    camera=name,
                )
            frames[path.stem] = path
        out[name] = dict(sorted(frames.items(), key=lambda kv: frame_sort_key(kv[0])))
    return out


class _Detector:
    """One board detector per thread (OpenCV detector objects are not shared across threads)."""

    def __init__(self, spec: BoardSpec, subpix_half_window: int | None = None) -> None:
        self.spec = spec
        self.subpix_half_window = subpix_half_window
        self._local = threading.local()

    def _charuco(self) -> cv2.aruco.CharucoDetector:
        det = getattr(self._local, "charuco", None)
        if det is None:
            det = cv2.aruco.CharucoDetector(make_charuco_board(self.spec))
            self._local.charuco = det
        return det

    def __call__(self, gray: np.ndarray) -> ViewDetection | None:
        if isinstance(self.spec, CharucoBoardSpec):
            corners, ids, _, _ = self._charuco().detectBoard(gray)
            if ids is None or len(ids) < MIN_DETECTED_CORNERS:
                return None
            return ViewDetection(ids.reshape(-1).astype(np.int64), corners.reshape(-1, 2).astype(np.float64))
        return detect_chessboard(self.spec, gray, self.subpix_half_window)


def detect_image(spec: BoardSpec, gray: np.ndarray, subpix_half_window: int | None = None) -> ViewDetection | None:
    """The board in one gray image (the detector ``detect_folder`` uses), or None."""
    return _Detector(spec, subpix_half_window)(np.asarray(gray))


def _min_grid_spacing(corners: np.ndarray, cols: int, rows: int) -> float:
    grid = corners.reshape(rows, cols, 2)
    dx = np.linalg.norm(np.diff(grid, axis=1), axis=2)
    dy = np.linalg.norm(np.diff(grid, axis=0), axis=2)
    return float(min(dx.min(), dy.min()))


def detect_chessboard(
    spec: ChessboardSpec, gray: np.ndarray, subpix_half_window: int | None = None
) -> ViewDetection | None:
    """``findChessboardCornersSB`` then ``cornerSubPix`` with a window sized to the squares.

    ``subpix_half_window`` fixes the half-window instead (11 reproduces OpenCV's
    calibration sample and ``reference_opencv.json``, and its bias on small squares).
    """
    found, corners = cv2.findChessboardCornersSB(gray, (spec.cols, spec.rows), flags=_SB_FLAGS)
    if not found:
        return None
    corners = corners.reshape(-1, 2).astype(np.float32)
    if subpix_half_window is None:
        half = int(round(SUBPIX_WINDOW_FRACTION * _min_grid_spacing(corners, spec.cols, spec.rows)))
        half = int(np.clip(half, SUBPIX_MIN_HALF_WINDOW, SUBPIX_MAX_HALF_WINDOW))
    else:
        half = int(subpix_half_window)
    refined = cv2.cornerSubPix(gray, corners.reshape(-1, 1, 2), (half, half), (-1, -1), _SUBPIX_CRITERIA)
    return ViewDetection(np.arange(spec.n_corners, dtype=np.int64), refined.reshape(-1, 2).astype(np.float64))


def _read_gray(path: Path) -> tuple[np.ndarray | None, str]:
    """The gray image, or None and why not (FIFOs, symlinks, oversized files and headers are refused unread)."""
    try:
        return read_image(path, cv2.IMREAD_GRAYSCALE), ""
    except ImageReadError as exc:
        return None, exc.reason


def _detect_file(detector: _Detector, path: Path) -> tuple[tuple[int, int] | None, ViewDetection | None, str]:
    try:
        gray, why = _read_gray(path)
    except (OSError, ValueError, cv2.error) as exc:  # whatever the reader did not turn into a reason: a skip
        gray, why = None, getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc).strip()[:200]
    if gray is None or gray.ndim != 2 or gray.size == 0:
        return None, None, f"unreadable ({why or 'not a decodable image'})"
    size = (int(gray.shape[1]), int(gray.shape[0]))
    try:
        view = detector(gray)
    except cv2.error as exc:  # a detector assertion on odd input is a skipped image, not a crash
        return size, None, f"no board (detector error: {str(exc).strip().splitlines()[-1][:120]})"
    if view is None:
        return size, None, "no board"
    return size, view, ""


def detect_folder(
    calib_dir: str | os.PathLike[str],
    cameras: Sequence[str] | None = None,
    *,
    spec: BoardSpec | None = None,
    progress: ProgressCallback | None = None,
    workers: int | None = None,
    subpix_half_window: int | None = None,
) -> FolderDetections:
    """Detect the board in every image of ``calib_dir`` (see ``list_calibration_images``).

    A camera's image size is the most common size among its readable images;
    images of another size are skipped (``"size ..."``). Deterministic: results do
    not depend on thread scheduling. ``subpix_half_window``: see ``detect_chessboard``.
    """
    spec = load_board(calib_dir) if spec is None else spec
    if subpix_half_window is not None and (isinstance(subpix_half_window, bool) or int(subpix_half_window) < 1):
        raise ValueError(f"subpix_half_window must be a positive integer, got {subpix_half_window!r}")
    listing = list_calibration_images(calib_dir, cameras)
    jobs = [(cam, key, path) for cam, frames in listing.items() for key, path in frames.items()]
    detector = _Detector(spec, subpix_half_window)
    workers = workers or min(8, os.cpu_count() or 1)
    results: dict[tuple[str, str], tuple] = {}
    total = len(jobs)
    if progress is not None:
        progress("detect", 0, total)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(_detect_file, detector, path): (cam, key) for cam, key, path in jobs}
        for done, future in enumerate(futures, start=1):
            results[futures[future]] = future.result()
            if progress is not None:
                progress("detect", done, total)
    out: dict[str, CameraDetections] = {}
    for cam, frames in listing.items():
        sizes = [results[(cam, key)][0] for key in frames if results[(cam, key)][0] is not None]
        size = max(set(sizes), key=lambda s: (sizes.count(s), s)) if sizes else None
        views: dict[str, ViewDetection] = {}
        skipped: dict[str, str] = {}
        for key, path in frames.items():
            img_size, view, reason = results[(cam, key)]
            if img_size is not None and img_size != size:
                skipped[path.name] = f"size {img_size[0]}x{img_size[1]} differs from the camera's {size[0]}x{size[1]}"
            elif view is None:
                skipped[path.name] = reason
            else:
                views[key] = view
        out[cam] = CameraDetections(cam, size, views, len(frames), skipped)
    return FolderDetections(spec, out)
