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
from capture_schema.image_check import EXTENSION_FORMATS, ImageCorrupt, check_image_bytes
from capture_schema.layout import BOARD_FILE, IMAGE_EXTENSIONS, IMAGES_DIR, SESSION_FILE
from capture_schema.problems import Problem, ProblemCode
from capture_schema.session import SessionInfo, read_session


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


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _walk(root: Path, session_dir: Path, problems: list[Problem]) -> list[Path]:
    """Files below ``root`` without following links; links that escape the session are problems."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for name in sorted(dirnames):
            sub = base / name
            if sub.is_symlink():  # never descend through folder links: they can loop or escape
                code, why = ((ProblemCode.UNEXPECTED_FILE, "folder symlinks are not part of the layout; use a real folder")
                             if _inside(sub, session_dir) else
                             (ProblemCode.PATH_OUTSIDE_SESSION, "folder symlink points outside the session folder; copy the data in instead"))
                problems.append(Problem(_rel(sub, session_dir), code, why))
        dirnames.sort()
        for name in sorted(filenames):
            path = base / name
            if path.is_symlink() and not _inside(path, session_dir):
                problems.append(Problem(_rel(path, session_dir), ProblemCode.PATH_OUTSIDE_SESSION,
                                        "symlink points outside the session folder; copy the file in instead"))
                continue
            found.append(path)
    return found


def _read_and_hash(path: Path, deep: bool) -> tuple[str, int, object]:
    """sha256, byte count and header (or the ImageCorrupt/OSError met) of one file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return "", 0, ImageCorrupt(f"cannot read the file: {exc.strerror or exc}")
    digest = hashlib.sha256(data).hexdigest()
    try:
        return digest, len(data), check_image_bytes(data, deep=deep)
    except ImageCorrupt as exc:
        return digest, len(data), exc


def _grid_cells(session_dir: Path, info: SessionInfo, problems: list[Problem]) -> dict[tuple[str, str], Path]:
    """Map each (expression, camera) cell to its file; report unknown, ambiguous and missing cells."""
    images_root = session_dir / IMAGES_DIR
    cells: dict[tuple[str, str], list[Path]] = defaultdict(list)
    escapes = images_root.is_symlink() and not _inside(images_root, session_dir)  # reported at top level
    files = _walk(images_root, session_dir, problems) if images_root.is_dir() and not escapes else []
    expressions, cameras = set(info.expressions), set(info.cameras)
    for path in files:
        rel = path.relative_to(images_root)
        known = (
            len(rel.parts) == 2
            and rel.parts[0] in expressions
            and path.suffix in IMAGE_EXTENSIONS
            and path.stem in cameras
        )
        if known:
            cells[(rel.parts[0], path.stem)].append(path)
        else:
            problems.append(Problem(_rel(path, session_dir), ProblemCode.UNEXPECTED_FILE,
                                    "not an images/<expression>/<camera_id>.<jpg|png> of this session's grid; "
                                    "move it out of the session folder"))
    chosen: dict[tuple[str, str], Path] = {}
    for expression in info.expressions:
        for camera in info.cameras:
            paths = sorted(cells.get((expression, camera), []))
            if not paths:
                problems.append(Problem(f"{IMAGES_DIR}/{expression}/{camera}", ProblemCode.IMAGE_MISSING,
                                        f"no image for expression '{expression}', camera '{camera}'"))
            elif len(paths) > 1:
                problems.append(Problem(_rel(paths[0], session_dir), ProblemCode.IMAGE_AMBIGUOUS,
                                        f"{len(paths)} files for one cell ({', '.join(p.name for p in paths)}); keep one"))
            else:
                chosen[(expression, camera)] = paths[0]
    return chosen


def _check_calibration(session_dir: Path, info: SessionInfo, problems: list[Problem]) -> None:
    """The calibration folder may be shared (outside the session) but must stay inside the captures root."""
    calib = session_dir / info.calibration
    rel = info.calibration
    if not _inside(calib, session_dir.parent):
        problems.append(Problem(rel, ProblemCode.PATH_OUTSIDE_SESSION,
                                "calibration path leads outside the captures root; keep shared calibrations beside the sessions"))
        return
    if not calib.is_dir():
        problems.append(Problem(rel, ProblemCode.CALIBRATION_MISSING,
                                f"calibration folder '{rel}' not found (set 'calibration' in session.json to a shared folder)"))
        return
    try:
        if not (calib / BOARD_FILE).is_file():
            raise BoardSpecError("", f"{BOARD_FILE} not found in the calibration folder")
        read_board(calib / BOARD_FILE)
    except BoardSpecError as exc:
        problems.append(Problem(f"{rel}/{BOARD_FILE}", ProblemCode.CALIBRATION_BOARD_INVALID, str(exc)))
    for camera in info.cameras:
        cam_dir = calib / camera
        has_images = cam_dir.is_dir() and any(p.suffix in IMAGE_EXTENSIONS and p.is_file() for p in cam_dir.iterdir())
        if not has_images:
            problems.append(Problem(f"{rel}/{camera}", ProblemCode.CALIBRATION_CAMERA_EMPTY,
                                    f"no board images (NNN.jpg|png) for camera '{camera}'"))


def _check_top_level(session_dir: Path, info: SessionInfo, problems: list[Problem]) -> None:
    allowed = {SESSION_FILE, IMAGES_DIR, Path(info.calibration).parts[0]}
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
    workers: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> ValidationReport:
    """Check one session folder against the capture contract and hash its images.

    ``deep`` also decodes every image (about 20x slower than hashing); the default
    structural check already catches truncation, bad headers and PNG byte errors.
    """
    session_dir = Path(session_dir)
    if not session_dir.is_dir():
        report = ValidationReport(session_dir, None)
        report.problems.append(Problem(".", ProblemCode.SESSION_FILE_MISSING, f"session folder {session_dir} does not exist"))
        return report
    if (session_dir / SESSION_FILE).is_symlink() and not _inside(session_dir / SESSION_FILE, session_dir):
        report = ValidationReport(session_dir, None)
        report.problems.append(Problem(SESSION_FILE, ProblemCode.PATH_OUTSIDE_SESSION,
                                       "session.json is a symlink out of the session folder; copy it in"))
        return report
    info, problems = read_session(session_dir)
    report = ValidationReport(session_dir, info, problems=list(problems))
    if info is None:
        return report
    _check_top_level(session_dir, info, report.problems)
    cells = _grid_cells(session_dir, info, report.problems)
    _check_calibration(session_dir, info, report.problems)
    report.images = _hash_cells(session_dir, cells, deep, workers, progress, report.problems)
    _check_consistency(report)
    return report


def _hash_cells(session_dir: Path, cells: dict[tuple[str, str], Path], deep: bool, workers: int,
                progress: Callable[[int, int], None] | None, problems: list[Problem]) -> list[ImageRecord]:
    items = sorted(cells.items())
    records: list[ImageRecord] = []

    def run(item: tuple[tuple[str, str], Path]) -> tuple[tuple[str, str], Path, tuple[str, int, object]]:
        return item[0], item[1], _read_and_hash(item[1], deep)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # hashlib and file reads release the GIL
        for done, ((expression, camera), path, (digest, size, header)) in enumerate(pool.map(run, items), 1):
            rel = _rel(path, session_dir)
            if isinstance(header, ImageCorrupt):
                problems.append(Problem(rel, ProblemCode.IMAGE_CORRUPT, f"{header}; re-export or re-capture this image"))
            elif EXTENSION_FORMATS[path.suffix] != header.format:
                problems.append(Problem(rel, ProblemCode.IMAGE_CORRUPT,
                                        f"file extension says {EXTENSION_FORMATS[path.suffix]} but the bytes are {header.format}"))
            else:
                records.append(ImageRecord(expression, camera, rel, size, digest, header.width, header.height, header.format))
            if progress is not None:
                progress(done, len(items))
    return records


def _check_consistency(report: ValidationReport) -> None:
    """Image sizes agree per camera; no two cells hold the same bytes."""
    by_camera: dict[str, list[ImageRecord]] = defaultdict(list)
    for rec in report.images:
        by_camera[rec.camera_id].append(rec)
    for camera, recs in by_camera.items():
        common, _ = Counter((r.width, r.height) for r in recs).most_common(1)[0]
        for rec in recs:
            if (rec.width, rec.height) != common:
                report.problems.append(Problem(rec.relative_path, ProblemCode.IMAGE_SIZE_MISMATCH,
                                               f"{rec.width}x{rec.height} but camera '{camera}' images are {common[0]}x{common[1]}"))
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
