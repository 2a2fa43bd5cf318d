"""Validate a capture session folder in one read-only pass, hashing as it goes.

The same pass that finds defects also yields the manifest records (sha256, size,
format), so ingest reads every image exactly once. Nothing under the session
folder is ever written, moved or deleted; symlinks are never followed out of it.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from capture_schema.board import BoardSpecError, read_board
from capture_schema.calibration_file import Calibration, read_calibration
from capture_schema.calibration_import import is_calibration_file
from capture_schema.image_check import EXTENSION_FORMATS, ImageCorrupt, ImageLimits, check_image_bytes, read_capture_file
from capture_schema.layout import BOARD_FILE, DEFAULT_CALIBRATION_DIR, IMAGE_EXTENSIONS, IMAGES_DIR, SESSION_FILE, is_valid_id
from capture_schema.problems import Problem, ProblemCode
from capture_schema.session import ParsedSession, SessionInfo, read_session_fields


@dataclass(frozen=True)
class ImageRecord:
    """One image of the grid as the manifest records it."""

    expression: str
    camera_id: str
    relative_path: str
    bytes: int
    sha256: str
    width: int
    height: int
    format: str


@dataclass
class ValidationReport:
    """What one validation pass found: the session, its images and every problem."""

    session_dir: Path
    session: SessionInfo | None
    images: list[ImageRecord] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"valid": self.valid, "problems": [p.to_dict() for p in sorted(self.problems)]}


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except (ValueError, OSError, RuntimeError):
        return False


def _walk(session_dir: Path, rel_dir: str, problems: list[Problem]) -> list[str]:
    """``session_dir``-relative paths of files below ``rel_dir``, sorted, never following folder links
    nor any link that leads out of ``session_dir`` (the session, or a calibration folder).

    String paths and ``os.scandir`` keep this cheap: ingest must not cost much more
    per file than reading it.
    """
    found: list[str] = []
    try:
        entries = sorted(os.scandir(session_dir / rel_dir), key=lambda e: e.name)
    except OSError as exc:
        problems.append(Problem(rel_dir, ProblemCode.UNEXPECTED_FILE, f"cannot list folder: {exc.strerror or exc}"))
        return found
    for entry in entries:
        rel = f"{rel_dir}/{entry.name}"
        if entry.is_symlink():
            if not _inside(Path(entry.path), session_dir):
                problems.append(Problem(rel, ProblemCode.PATH_OUTSIDE_SESSION,
                                        f"symlink points outside {session_dir.name}/; copy the data in instead"))
                continue
            if entry.is_dir():  # never descend through folder links: they can loop
                problems.append(Problem(rel, ProblemCode.UNEXPECTED_FILE,
                                        "folder symlinks are not part of the layout; use a real folder"))
                continue
        if entry.is_dir(follow_symlinks=False):
            found.extend(_walk(session_dir, rel, problems))
        else:
            found.append(rel)
    return found


def _read_and_hash(path: str, deep: bool, limits: ImageLimits) -> tuple[str, int, object]:
    """sha256, byte count and header (or the ImageCorrupt met) of one file.

    Special files and oversized files are refused before a byte is read, and the
    header's pixel count before any decode (``ImageLimits``).
    """
    try:
        data = read_capture_file(path, limits)
    except ImageCorrupt as exc:
        return "", 0, exc
    digest = hashlib.sha256(data).hexdigest()
    try:
        return digest, len(data), check_image_bytes(data, deep=deep, limits=limits)
    except ImageCorrupt as exc:
        return digest, len(data), exc


def _image_file_key(rel: str) -> tuple[str, str] | None:
    """``(folder, stem)`` of a ``.../<folder>/<stem>.<jpg|png>`` path whose names are valid ids, else None."""
    parts = rel.split("/")
    stem, dot, ext = parts[-1].rpartition(".")
    if len(parts) < 2 or f"{dot}{ext}" not in IMAGE_EXTENSIONS or not (is_valid_id(stem) and is_valid_id(parts[-2])):
        return None
    return parts[-2], stem


def _grid_cells(session_dir: Path, expressions: tuple[str, ...] | None, cameras: tuple[str, ...] | None,
                problems: list[Problem]) -> dict[tuple[str, str], str]:
    """Map each (expression, camera) cell to its session-relative file; report unknown, ambiguous, missing.

    When session.json does not give the expression or camera list, every well-named
    image is still taken (so it is read and checked), and only the cells that can be
    known to be missing are reported.
    """
    images_root = session_dir / IMAGES_DIR
    cells: dict[tuple[str, str], list[str]] = defaultdict(list)
    escapes = images_root.is_symlink() and not _inside(images_root, session_dir)  # reported at top level
    files = _walk(session_dir, IMAGES_DIR, problems) if images_root.is_dir() and not escapes else []
    for rel in files:
        key = _image_file_key(rel) if rel.count("/") == 2 else None
        known = key is not None and (expressions is None or key[0] in expressions) and (
            cameras is None or key[1] in cameras)
        if known:
            cells[key].append(rel)
        else:
            problems.append(Problem(rel, ProblemCode.UNEXPECTED_FILE,
                                    "not an images/<expression>/<camera_id>.<jpg|png> of this session's grid; "
                                    "move it out of the session folder"))
    chosen: dict[tuple[str, str], str] = {}
    for key in sorted(cells):
        paths = sorted(cells[key])
        if len(paths) > 1:
            names = ", ".join(p.rsplit("/", 1)[-1] for p in paths)
            problems.append(Problem(paths[0], ProblemCode.IMAGE_AMBIGUOUS, f"{len(paths)} files for one cell ({names}); keep one"))
        else:
            chosen[key] = paths[0]
    if expressions is not None and cameras is not None:
        for expression in expressions:
            for camera in cameras:
                if (expression, camera) not in cells:
                    problems.append(Problem(f"{IMAGES_DIR}/{expression}/{camera}", ProblemCode.IMAGE_MISSING,
                                            f"no image for expression '{expression}', camera '{camera}'"))
    return chosen


def _check_board_file(calib: Path, rel: str, problems: list[Problem]) -> None:
    board = calib / BOARD_FILE
    try:
        if board.is_symlink():
            raise BoardSpecError("", f"{BOARD_FILE} is a symlink; copy the file into the calibration folder")
        if not board.is_file():
            raise BoardSpecError("", f"{BOARD_FILE} not found in the calibration folder")
        read_board(board)
    except BoardSpecError as exc:
        problems.append(Problem(f"{rel}/{BOARD_FILE}", ProblemCode.CALIBRATION_BOARD_INVALID, str(exc)))


def _check_calibration(session_dir: Path, rel: str, cameras: tuple[str, ...] | None, limits: ImageLimits,
                       problems: list[Problem]) -> None:
    """The calibration folder: a board.json, one folder of board images per camera, nothing else.

    The folder may be shared (outside the session) but must stay inside the captures
    root. Nothing inside it is followed through a symlink, stray files are reported,
    and every board image gets the same structural check as a capture image.
    """
    calib = session_dir / rel
    if not _inside(calib, session_dir.parent):
        problems.append(Problem(rel, ProblemCode.PATH_OUTSIDE_SESSION,
                                "calibration path leads outside the captures root; keep shared calibrations beside the sessions"))
        return
    if not calib.is_dir():
        problems.append(Problem(rel, ProblemCode.CALIBRATION_MISSING,
                                f"calibration folder '{rel}' not found (set 'calibration' in session.json to a shared folder)"))
        return
    _check_board_file(calib, rel, problems)
    walked: list[Problem] = []
    files = _walk(calib, ".", walked)
    problems.extend(Problem(f"{rel}/{p.path[2:]}", p.code, p.message) for p in walked)
    frames: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in files:
        sub = path[2:]  # strip "./"
        if sub == BOARD_FILE:
            continue
        key = _image_file_key(sub) if sub.count("/") == 1 else None
        if key is None or (cameras is not None and key[0] not in cameras):
            problems.append(Problem(f"{rel}/{sub}", ProblemCode.UNEXPECTED_FILE,
                                    "not a board.json or <camera_id>/<NNN>.<jpg|png> of this session's cameras; "
                                    "move it out of the calibration folder"))
            continue
        frames[key[0]][key[1]].append(sub)
    for camera in cameras if cameras is not None else sorted(frames):
        if not frames.get(camera):
            problems.append(Problem(f"{rel}/{camera}", ProblemCode.CALIBRATION_CAMERA_EMPTY,
                                    f"no board images (NNN.jpg|png) for camera '{camera}'"))
        for stem, subs in sorted(frames.get(camera, {}).items()):
            if len(subs) > 1:
                problems.append(Problem(f"{rel}/{sorted(subs)[0]}", ProblemCode.CALIBRATION_IMAGE_INVALID,
                                        f"{len(subs)} board images for moment '{stem}' of camera '{camera}'; keep one"))
                continue
            _digest, _size, header = _read_and_hash(str(calib / subs[0]), False, limits)
            if isinstance(header, ImageCorrupt):
                problems.append(Problem(f"{rel}/{subs[0]}", ProblemCode.CALIBRATION_IMAGE_INVALID,
                                        f"{header}; re-export or re-capture this board image"))


def _check_calibration_file(session_dir: Path, rel: str, cameras: tuple[str, ...] | None,
                            problems: list[Problem]) -> Calibration | None:
    """A calibration made elsewhere (``o2a import-calibration``): a regular file inside the captures root
    that reads as calibration.json and holds every camera the session lists. Returns it when it reads."""
    path = session_dir / rel
    fix = f"write it with `o2a import-calibration SRC --out {rel}`"
    if not _inside(path, session_dir.parent):
        problems.append(Problem(rel, ProblemCode.PATH_OUTSIDE_SESSION,
                                "calibration path leads outside the captures root; keep shared calibrations beside the sessions"))
        return None
    if path.is_symlink():
        problems.append(Problem(rel, ProblemCode.CALIBRATION_FILE_INVALID, "is a symlink; copy the calibration file in"))
        return None
    if not path.exists():
        problems.append(Problem(rel, ProblemCode.CALIBRATION_MISSING, f"calibration file '{rel}' not found; {fix}"))
        return None
    try:
        calibration = read_calibration(path)
    except ValueError as exc:
        reason = getattr(exc, "reason", str(exc))
        problems.append(Problem(rel, ProblemCode.CALIBRATION_FILE_INVALID, f"not a calibration.json: {reason}; {fix}"))
        return None
    held = ", ".join(calibration.cameras)
    for camera in cameras or ():
        if camera not in calibration.cameras:
            problems.append(Problem(rel, ProblemCode.CALIBRATION_CAMERA_MISSING,
                                    f"no camera '{camera}' in the calibration (it holds {held[:400]}); re-import it "
                                    "with that camera, or fix session.json's cameras"))
    return calibration


def _check_calibration_sizes(report: ValidationReport, rel: str, calibration: Calibration) -> None:
    """Each camera's image size in an imported calibration is the size of that camera's images."""
    for camera, (width, height) in sorted(_camera_sizes(report.images).items()):
        cam = calibration.cameras.get(camera)
        if cam is not None and (cam.width, cam.height) != (width, height):
            report.problems.append(Problem(rel, ProblemCode.CALIBRATION_SIZE_MISMATCH,
                                           f"camera '{camera}' is {cam.width}x{cam.height} in the calibration but its "
                                           f"images are {width}x{height}; import a calibration made at the capture size"))


def _check_top_level(session_dir: Path, calibration: str | None, problems: list[Problem]) -> None:
    allowed = {SESSION_FILE, IMAGES_DIR, Path(calibration or DEFAULT_CALIBRATION_DIR).parts[0]}
    for entry in sorted(session_dir.iterdir()):
        if entry.is_symlink() and not _inside(entry, session_dir):
            problems.append(Problem(entry.name, ProblemCode.PATH_OUTSIDE_SESSION,
                                    "symlink points outside the session folder; copy the data in instead"))
        elif entry.name not in allowed:
            problems.append(Problem(entry.name, ProblemCode.UNEXPECTED_FILE,
                                    "not part of the capture layout (session.json, images/, calibration/); move it out"))


def validate_session(
    session_dir: str | os.PathLike[str],
    *,
    deep: bool = False,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
    limits: ImageLimits | None = None,
) -> ValidationReport:
    """Check one session folder against the capture contract and hash its images.

    One pass reports every problem that can be found: a bad or missing field of
    session.json does not stop the grid, image and calibration checks that the
    remaining fields allow. ``deep`` also decodes every image (about 20x slower than
    hashing); the default structural check already catches truncation, bad headers
    and PNG byte errors. ``limits`` caps file size and pixel count (default: from the
    environment, ``ImageLimits.from_env``).
    """
    session_dir = Path(os.path.abspath(session_dir))  # "S/.." and "." name the folder they lead to
    limits = limits or ImageLimits.from_env()
    if not session_dir.is_dir():
        report = ValidationReport(session_dir, None)
        report.problems.append(Problem(".", ProblemCode.SESSION_FILE_MISSING, f"session folder {session_dir} does not exist"))
        return report
    if (session_dir / SESSION_FILE).is_symlink() and not _inside(session_dir / SESSION_FILE, session_dir):
        parsed = ParsedSession(None, [Problem(SESSION_FILE, ProblemCode.PATH_OUTSIDE_SESSION,
                                              "session.json is a symlink out of the session folder; copy it in")],
                               calibration=None)
    else:
        parsed = read_session_fields(session_dir)
    report = ValidationReport(session_dir, parsed.info, problems=list(parsed.problems))
    _check_top_level(session_dir, parsed.calibration, report.problems)
    cells = _grid_cells(session_dir, parsed.expressions, parsed.cameras, report.problems)
    imported = None
    if parsed.calibration is not None and is_calibration_file(parsed.calibration):
        imported = _check_calibration_file(session_dir, parsed.calibration, parsed.cameras, report.problems)
    elif parsed.calibration is not None:
        _check_calibration(session_dir, parsed.calibration, parsed.cameras, limits, report.problems)
    report.images = _hash_cells(session_dir, cells, deep, workers, progress, limits, report.problems)
    _check_consistency(report)
    if imported is not None:
        _check_calibration_sizes(report, parsed.calibration, imported)
    return report


def _hash_cells(session_dir: Path, cells: dict[tuple[str, str], str], deep: bool, workers: int,
                progress: Callable[[int, int], None] | None, limits: ImageLimits,
                problems: list[Problem]) -> list[ImageRecord]:
    """Read, hash and check every cell's file, in a few threads each owning a contiguous slice.

    hashlib and file reads release the GIL; one slice per thread (not one task per
    file) keeps the per-image overhead far below the cost of hashing it.
    """
    items = sorted(cells.items())
    root = str(session_dir)
    n_threads = max(1, min(workers, len(items) // 16 or 1))
    slices = [items[i::n_threads] for i in range(n_threads)]
    results: dict[tuple[str, str], tuple[str, int, object]] = {}

    def run(chunk: list[tuple[tuple[str, str], str]]) -> None:
        for key, rel in chunk:
            results[key] = _read_and_hash(f"{root}/{rel}", deep, limits)
            if progress is not None:
                progress(len(results), len(items))

    if n_threads == 1:
        run(items)
    else:
        with ThreadPoolExecutor(max_workers=n_threads) as pool:
            list(pool.map(run, slices))
    records: list[ImageRecord] = []
    for (expression, camera), rel in items:
        digest, size, header = results[(expression, camera)]
        ext_format = EXTENSION_FORMATS["." + rel.rpartition(".")[2]]
        if isinstance(header, ImageCorrupt):
            problems.append(Problem(rel, ProblemCode.IMAGE_CORRUPT, f"{header}; re-export or re-capture this image"))
        elif ext_format != header.format:
            problems.append(Problem(rel, ProblemCode.IMAGE_CORRUPT,
                                    f"file extension says {ext_format} but the bytes are {header.format}"))
        else:
            records.append(ImageRecord(expression, camera, rel, size, digest, header.width, header.height, header.format))
    return records


def _camera_sizes(images: Iterable[ImageRecord]) -> dict[str, tuple[int, int]]:
    """Each camera's image size: the most common among its cells (the odd ones out are the mismatches)."""
    by_camera: dict[str, Counter] = defaultdict(Counter)
    for rec in images:
        by_camera[rec.camera_id][(rec.width, rec.height)] += 1
    return {camera: counts.most_common(1)[0][0] for camera, counts in by_camera.items()}


def _check_consistency(report: ValidationReport) -> None:
    """Image sizes agree per camera; no two cells hold the same bytes."""
    common = _camera_sizes(report.images)
    order = {camera: i for i, camera in enumerate(common)}  # cameras in first-seen order, as reported before
    for rec in sorted(report.images, key=lambda r: order[r.camera_id]):
        size = common[rec.camera_id]
        if (rec.width, rec.height) != size:
            report.problems.append(Problem(rec.relative_path, ProblemCode.IMAGE_SIZE_MISMATCH,
                                           f"{rec.width}x{rec.height} but camera '{rec.camera_id}' images are {size[0]}x{size[1]}"))
    by_hash: dict[str, list[ImageRecord]] = defaultdict(list)
    for rec in report.images:
        by_hash[rec.sha256].append(rec)
    for recs in by_hash.values():
        if len(recs) > 1:
            paths = sorted(r.relative_path for r in recs)
            for path in paths[1:]:
                report.problems.append(Problem(path, ProblemCode.DUPLICATE_IMAGE,
                                               f"same bytes as {paths[0]}; one of the two cells holds the wrong image"))


def iter_session_dirs(captures_root: str | os.PathLike[str]) -> Iterable[Path]:
    """Folders directly under the captures root that hold a session.json, sorted."""
    root = Path(captures_root)
    if not root.is_dir():
        return []
    return [p for p in sorted(root.iterdir()) if p.is_dir() and (p / SESSION_FILE).is_file()]
