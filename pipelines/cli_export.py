"""``o2a list`` and ``o2a export``: what the dataset holds, and a selected part of it for another tool.

Both read the dataset index (and its coverage summary) of a storage root, local or
``s3://``; ``export`` then streams only the shards holding selected cells. The
filters are the same for both, so ``o2a list`` with the filters of an export shows
exactly what the export will hold and which requested cells do not exist.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from pipelines.cli_errors import EXIT_INVALID, EXIT_OK
from pipelines.resources import DEFAULT_STORAGE_URL


def _ids(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _filter_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default=os.environ.get("O2A_STORAGE_URL", DEFAULT_STORAGE_URL),
                   help="storage root URL holding dataset/index.parquet (default: $O2A_STORAGE_URL or %(default)s)")
    for name, what in (("subjects", "subject ids"), ("sessions", "session ids"), ("expressions", "expression names"),
                       ("cameras", "camera ids"), ("split", "splits: train, validation, test")):
        p.add_argument(f"--{name}", type=_ids, metavar="A,B,...", help=f"only these {what} (comma-separated)")


def _selection_args(args: argparse.Namespace):
    from training.selection import SampleFilter

    return SampleFilter(subjects=args.subjects, sessions=args.sessions, expressions=args.expressions,
                        cameras=args.cameras), args.split


def _fail(command: str, message: str) -> int:
    print(f"o2a {command}: {message}", file=sys.stderr)
    return EXIT_INVALID


def listing(selection) -> dict:
    """Per session: subject, split, cells present and missing, shard bytes; plus the totals."""
    rows, sessions = selection.rows, []
    missing_by_session: dict[str, list[str]] = {}
    for key in selection.missing_cells:
        missing_by_session.setdefault(key.split("/")[0], []).append(key)
    for session_id in sorted(set(rows.session_id) | set(missing_by_session)):
        mine = rows[rows.session_id == session_id]
        sessions.append({
            "session_id": session_id,
            "subject_id": mine.subject_id.iloc[0] if len(mine) else None,
            "split": mine.split.iloc[0] if len(mine) else None,
            "cells": int(len(mine)),
            "expressions": sorted(mine.expression.unique()),
            "cameras": sorted(mine.camera_id.unique()),
            "missing_cells": missing_by_session.get(session_id, []),
            "shard_bytes": int(mine.drop_duplicates("shard_url").shard_bytes.sum()),
        })
    return {"subjects": sorted(rows.subject_id.unique()), "sessions": sessions, "cells": int(len(rows)),
            "missing_cells": selection.missing_cells, "unknown_filter_values": selection.unknown,
            "shard_bytes": int(rows.drop_duplicates("shard_url").shard_bytes.sum())}


def _print_listing(out: dict) -> None:
    print(f"{len(out['subjects'])} subject(s), {len(out['sessions'])} session(s), {out['cells']} cell(s) present, "
          f"{len(out['missing_cells'])} missing; shards holding them: {out['shard_bytes'] / 1e6:.1f} MB")
    print(f"  {'session':24s} {'subject':16s} {'split':10s} {'cells':>5s} {'missing':>7s} {'shard MB':>8s}  "
          "expressions x cameras")
    for s in out["sessions"]:
        print(f"  {s['session_id']:24s} {str(s['subject_id']):16s} {str(s['split']):10s} {s['cells']:5d} "
              f"{len(s['missing_cells']):7d} {s['shard_bytes'] / 1e6:8.1f}  {len(s['expressions'])} x {len(s['cameras'])}")
    for key in out["missing_cells"]:
        print(f"  missing: {key}")
    for name, values in out["unknown_filter_values"].items():
        print(f"  not in the dataset: {name} {', '.join(values)}")


def cmd_list(args: argparse.Namespace) -> int:
    from capture_schema.storage import Storage
    from training.export.run import read_coverage
    from training.selection import select
    from training.stage_io import StageError, read_index

    sample_filter, splits = _selection_args(args)
    try:
        store = Storage(args.storage)
        selection = select(read_index(store), read_coverage(store), sample_filter, splits)
    except (StageError, ValueError) as exc:
        return _fail("list", str(exc))
    out = listing(selection)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        _print_listing(out)
    return EXIT_OK if not selection.unknown else EXIT_INVALID


def cmd_export(args: argparse.Namespace) -> int:
    from capture_schema.storage import Storage
    from training.export.run import export_dataset
    from training.stage_io import StageError

    sample_filter, splits = _selection_args(args)
    undistort = True if args.undistort else False if args.keep_distortion else None
    face_model = None
    if not args.no_mesh:
        from fitting.face_models import load_face_model

        try:
            face_model = load_face_model(args.face_model, args.face_model_path, args.face_model_embedding)
        except (OSError, ValueError) as exc:
            return _fail("export", f"face model: {exc}")
    try:
        report = export_dataset(Storage(args.storage), args.out, args.format, sample_filter, splits,
                                undistort=undistort, face_model=face_model, picture=not args.no_picture,
                                log=lambda line: print(f"  {line}", file=sys.stderr))
    except (StageError, ValueError) as exc:
        return _fail("export", str(exc))
    unknown = "".join(f"; not in the dataset: {name} {', '.join(values)}" for name, values in report.unknown.items())
    print(f"exported {report.cells} image(s) in {len(report.frames)} frame(s) as {report.format} "
          f"({'undistorted' if report.undistorted else 'original images'}) -> {report.out}; "
          f"{len(report.missing_cells)} requested cell(s) missing (listed in export.json){unknown}")
    return EXIT_OK


def add_export_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``o2a list`` and ``o2a export`` on the top-level subparsers."""
    from pipelines.cli_prior import _face_model_arguments
    from training.export.formats import FORMATS

    p = sub.add_parser("list", help="what the dataset index holds: subjects, sessions, cells present and missing",
                       description="Reads only the dataset index and its coverage summary. Exit 1 when a filter "
                                   "names an id the dataset does not have.")
    _filter_arguments(p)
    p.add_argument("--json", action="store_true", help="print the listing as JSON")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("export", help="export selected cells (images, cameras, masks, 3DMM fits and meshes) for "
                                      "nerfstudio, COLMAP or as plain images",
                       description="One folder per session/expression, CONVENTIONS.md and export.json (what was "
                                   "asked for, exported and missing). Reads only the shards holding selected cells.")
    p.add_argument("out", help="a new (or empty) folder to export into")
    p.add_argument("--format", required=True, choices=FORMATS)
    _filter_arguments(p)
    undistort = p.add_mutually_exclusive_group()
    undistort.add_argument("--undistort", action="store_true",
                           help="undistort images and masks, write pinhole cameras (default for colmap)")
    undistort.add_argument("--keep-distortion", action="store_true",
                           help="original image bytes and the lens distortion (default for nerfstudio and images)")
    p.add_argument("--no-mesh", action="store_true", help="no posed mesh (fit.json is still written)")
    p.add_argument("--no-picture", action="store_true", help="no cameras.png per frame")
    _face_model_arguments(p)
    p.set_defaults(func=cmd_export)
