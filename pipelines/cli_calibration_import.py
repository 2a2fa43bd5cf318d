"""``o2a import-calibration``: a rig calibration made elsewhere, as the project's ``calibration.json``.

Reads a COLMAP model (text or binary; the model folder or a COLMAP project holding
``sparse/0``) or a NeRF-style ``transforms.json`` through
``capture_schema.calibration_import.import_calibration`` and writes ``calibration.json``
atomically. Point a session's ``calibration`` field at the written file and the
``camera_calibration`` step uses it instead of board captures. Exit codes as ``o2a``'s:
0 written, 1 the input cannot be imported (the message names the path or camera and the
fix), 2 usage errors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines.cli_errors import EXIT_INVALID, EXIT_OK, EXIT_USAGE

_FORMAT_NAMES = {"colmap_text": "COLMAP text model", "colmap_binary": "COLMAP binary model",
                 "transforms_json": "transforms.json"}


def _error(message: str) -> None:
    print(f"o2a import-calibration: {message}", file=sys.stderr)


def _camera_list(text: str | None) -> list[str] | None:
    """``--cameras a,b,c`` as a list; None when not given. Raises ``ValueError`` for a bad list."""
    from capture_schema.layout import is_valid_id

    if text is None:
        return None
    cameras = [c.strip() for c in text.split(",")]
    bad = [c for c in cameras if not is_valid_id(c)]
    if bad:
        raise ValueError(f"--cameras must be comma-separated ids ([A-Za-z0-9_-]), got {bad[0]!r}")
    return cameras


def cmd_import_calibration(args: argparse.Namespace) -> int:
    from capture_schema.calibration_file import write_calibration
    from capture_schema.calibration_import import CalibrationImportError, import_calibration, imported_format

    try:
        cameras = _camera_list(args.cameras)
    except ValueError as exc:
        _error(str(exc))
        return EXIT_USAGE
    out = Path(args.out)
    if out.suffix.lower() != ".json":
        _error(f"--out {args.out} must name a .json file (session.json's 'calibration' tells a calibration file "
               "from a board-capture folder by its .json suffix)")
        return EXIT_USAGE
    if out.is_dir():
        _error(f"cannot write {args.out}: it is a folder")
        return EXIT_INVALID
    try:
        calibration = import_calibration(args.src, cameras)
    except CalibrationImportError as exc:
        _error(f"cannot import: {exc}")
        return EXIT_INVALID
    write_calibration(out, calibration)
    fmt = imported_format(calibration) or ""
    print(f"imported {len(calibration.cameras)} camera(s) from a {_FORMAT_NAMES.get(fmt, fmt)} ({args.src}) "
          f"-> {out}")
    for cam_id, cam in calibration.cameras.items():
        print(f"  {cam_id}: {cam.width}x{cam.height} px, fx {cam.fx:.1f} fy {cam.fy:.1f}, "
              f"centre at ({', '.join(f'{v:.3f}' for v in cam.center)}) m")
    print("no residuals travel with an imported calibration (rmse 0); point a session's 'calibration' field "
          "at this file (a path relative to the session folder) to use it")
    return EXIT_OK


def add_import_calibration_command(sub: argparse._SubParsersAction) -> None:
    """Register ``o2a import-calibration`` on the top-level subparsers."""
    p = sub.add_parser("import-calibration",
                       help="write calibration.json from a COLMAP model (text/binary) or a transforms.json")
    p.add_argument("src", metavar="SRC",
                   help="a COLMAP model folder (cameras + images .txt or .bin), a COLMAP project with sparse/0, "
                        "or a transforms.json file")
    p.add_argument("--out", required=True, help="the calibration.json to write (atomically)")
    p.add_argument("--cameras", help="comma-separated camera ids to keep, in rig order (default: every camera, "
                                     "in the source's order); an id the source lacks is an error")
    p.set_defaults(func=cmd_import_calibration)
