"""``o2a shard``, ``o2a index`` and ``o2a calibrate --session``: session steps on a storage root, without Dagster.

Each runs the library function its asset runs (``training.shards.stage.shard_session``,
``training.dataset_index.build_dataset_index``, ``fitting.calibration.session.calibrate_session``)
on the same storage root, so the files are the ones the asset writes, reused the same
way. When an upstream artefact is missing, the message names the step and the command
that makes it. Exit codes as ``o2a``'s: 0 success, 1 bad input or impossible work,
2 usage errors.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Callable

from pipelines.cli_errors import EXIT_INVALID, EXIT_OK, EXIT_USAGE
from capture_schema import derived_layout as layout
from pipelines.cli_prior import _face_model_arguments

#: The ``session_shards`` asset's defaults (``ShardsConfig``; tests/test_cli_stages.py keeps them equal).
SHARD_DEFAULTS = {"max_mb": 256.0, "max_samples": 1000, "train_resolution": 128}
#: The ``camera_calibration`` check's default threshold (``CalibrationConfig.max_rmse_px``).
MAX_RMSE_PX = 1.0
#: ``o2a index`` split fractions: ``training.dataset_index.SplitRule``'s (the asset's ``DatasetIndexConfig``).
SPLIT_DEFAULTS = {"train": 0.8, "validation": 0.1, "test": 0.1}


def _error(command: str, message: str) -> None:
    print(f"o2a {command}: {message}", file=sys.stderr)


def _note(message: str) -> None:
    """Progress and warnings of a step go to stderr, so stdout keeps only the result."""
    print(message, file=sys.stderr)


def _step_commands(session_dir: str, captures: str, storage: str) -> dict[str, str]:
    """How to make, without Dagster, what each step writes (``MissingUpstreamError.steps``)."""
    everything = f"o2a pipeline run --captures {captures} --storage {storage} (every session step; no single " \
                 "command writes it into a storage root)"
    return {
        "session_manifest": f"o2a ingest {session_dir} --storage {storage}",
        "camera_calibration": f"o2a calibrate --session {session_dir} --storage {storage}",
        "face_landmarks": everything,
        "face_fits": everything,
        "session_shards": f"o2a shard SESSION_ID --captures {captures} --storage {storage}",
    }


def _missing(command: str, exc, commands: dict[str, str]) -> int:
    """Report a ``MissingUpstreamError`` with the command for each step it names; exit 1."""
    _error(command, str(exc))
    for step in exc.steps:
        if step in commands:
            print(f"  {step}: {commands[step]}", file=sys.stderr)
    return EXIT_INVALID


def _storage(command: str, url: str):
    """The storage root, or None after saying why it cannot be one."""
    from capture_schema.storage import Storage

    try:
        return Storage(url)
    except (ValueError, ImportError) as exc:
        _error(command, f"--storage {url!r}: {exc}")
        return None


def _stage_bars() -> tuple[Callable[[str, int, int], None], Callable[[], None]]:
    """A tqdm bar per calibration stage (shown on a terminal only) and a function that closes them."""
    from tqdm import tqdm

    bars: dict = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            bars[stage] = tqdm(total=total, desc=stage, unit="img", disable=not sys.stderr.isatty(), leave=False)
        bars[stage].n = done
        bars[stage].refresh()

    def close() -> None:
        for bar in bars.values():
            bar.close()

    return progress, close


def calibrate_session_command(args: argparse.Namespace) -> int:
    """``o2a calibrate --session SESSION_DIR --storage URL``: the ``camera_calibration`` asset's work."""
    from capture_schema.layout import is_valid_id
    from capture_schema.reuse import MissingUpstreamError
    from fitting.calibration.session import SessionCalibrationError, calibrate_session

    given = [flag for flag, value in (("CALIB_DIR", args.calib_dir), ("--out", args.out),
                                      ("--cameras", args.cameras), ("--subpix-window", args.subpix_window),
                                      ("--loss-scale", args.loss_scale)) if value is not None]
    if given:
        _error("calibrate", f"--session takes the session's calibration folder and camera order and the default "
                            f"settings (results are shared between sessions); drop {', '.join(given)}")
        return EXIT_USAGE
    if not args.storage:
        _error("calibrate", "--session needs --storage URL (where the calibration and the session's pointer go)")
        return EXIT_USAGE
    max_rmse = MAX_RMSE_PX if args.max_rmse is None else args.max_rmse
    if not (math.isfinite(max_rmse) and max_rmse > 0):
        _error("calibrate", f"--max-rmse must be a positive number of pixels, got {max_rmse}")
        return EXIT_USAGE
    session_dir = Path(args.session)
    if not session_dir.is_dir():
        _error("calibrate", f"{session_dir} is not a folder")
        return EXIT_USAGE
    session_id = session_dir.resolve().name
    if not is_valid_id(session_id):
        _error("calibrate", f"{session_dir}: its folder name {session_id!r} is not a valid session id")
        return EXIT_INVALID
    store = _storage("calibrate", args.storage)
    if store is None:
        return EXIT_USAGE
    progress, close = _stage_bars()
    try:
        made = calibrate_session(store, session_dir, session_id, progress, _note)
    except MissingUpstreamError as exc:
        return _missing("calibrate", exc, _step_commands(str(session_dir), str(session_dir.parent), args.storage))
    except SessionCalibrationError as exc:
        _error("calibrate", str(exc))
        return EXIT_INVALID
    finally:
        close()
    calibration = made.calibration
    imported = calibration.source is not None
    how = ("reused (same inputs and camera order as an earlier session)" if made.reused
           else f"from an imported calibration ({calibration.source})" if imported else "calibrated")
    print(f"{session_id}: rmse {calibration.rmse_px:.3f} px over {len(calibration.cameras)} cameras, {how} -> "
          f"{store.uri(made.folder)}")
    print(f"  pointer: {store.uri(layout.calibration_pointer(session_id))}")
    for cam_id in calibration.cameras if not imported else ():  # an imported calibration has no residuals
        print(f"  {cam_id}: rmse {calibration.camera_rmse_px.get(cam_id, 0.0):.3f} px, "
              f"{calibration.n_observations.get(cam_id, 0)} corners")
    if calibration.rmse_px > max_rmse:
        _error("calibrate", f"rmse {calibration.rmse_px:.3f} px is above --max-rmse {max_rmse} px: the "
                            "camera_calibration check rmse_within_threshold fails and blocks later steps")
        return EXIT_INVALID
    return EXIT_OK


def cmd_shard(args: argparse.Namespace) -> int:
    """``o2a shard``: the ``session_shards`` asset's work for one session."""
    from capture_schema.layout import is_valid_id
    from capture_schema.reuse import MissingUpstreamError
    from fitting.face_models.choice import FaceModelChoice
    from training.shards.stage import shard_config, shard_session
    from training.shards.write import ShardInputError

    if not is_valid_id(args.session_id):
        _error("shard", f"{args.session_id!r} is not a session id ([A-Za-z0-9_-], 1-128 characters)")
        return EXIT_USAGE
    if not (math.isfinite(args.max_mb) and args.max_mb > 0):
        _error("shard", f"--max-mb must be a positive number of MiB, got {args.max_mb}")
        return EXIT_USAGE
    if args.max_samples < 1:
        _error("shard", f"--max-samples must be at least 1, got {args.max_samples}")
        return EXIT_USAGE
    if args.train_resolution != 0 and args.train_resolution < 8:
        _error("shard", f"--train-resolution must be 0 (no training image) or at least 8 px, got "
                        f"{args.train_resolution}")
        return EXIT_USAGE
    try:
        config = shard_config(args.max_mb, args.max_samples, args.train_resolution, not args.no_masks)
    except ValueError as exc:
        _error("shard", str(exc))
        return EXIT_USAGE
    captures = Path(args.captures)
    if not captures.is_dir():
        _error("shard", f"captures root {captures} does not exist")
        return EXIT_USAGE
    session_dir = captures / args.session_id
    if not session_dir.is_dir():
        _error("shard", f"no session {args.session_id!r} under the captures root {captures}")
        return EXIT_USAGE
    store = _storage("shard", args.storage)
    if store is None:
        return EXIT_USAGE
    face_model = FaceModelChoice(args.face_model, args.face_model_path or "", args.face_model_embedding or "")
    try:
        outcome = shard_session(store, session_dir, args.session_id, config, face_model, _note)
    except MissingUpstreamError as exc:
        return _missing("shard", exc, _step_commands(str(session_dir), str(captures), args.storage))
    except ShardInputError as exc:
        _error("shard", str(exc))
        return EXIT_INVALID
    how = " (reused: inputs and settings unchanged)" if outcome["reused"] else ""
    print(f"{args.session_id}: {outcome['samples']} samples in {outcome['shards']} shard(s), "
          f"{outcome['total_bytes'] / 1e6:.3f} MB{how} -> {store.uri(layout.shards_index(args.session_id))}")
    for key, reason in outcome["skipped"]:
        print(f"  left out: {key}: {reason}")
    return EXIT_OK


def cmd_index(args: argparse.Namespace) -> int:
    """``o2a index``: the ``dataset_index`` asset's work over every session the storage root knows."""
    from capture_schema.reuse import MissingUpstreamError
    from training.dataset_index import SplitRule, build_dataset_index, stored_session_ids

    try:
        rule = SplitRule(args.train, args.validation, args.test)
    except ValueError as exc:
        _error("index", f"--train/--validation/--test: {exc}")
        return EXIT_USAGE
    store = _storage("index", args.storage)
    if store is None:
        return EXIT_USAGE
    sessions = stored_session_ids(store)
    try:
        summary = build_dataset_index(store, sessions, rule, lambda message: _note(f"warning: {message}"))
    except MissingUpstreamError as exc:
        where = f"none of the {len(sessions)} sessions in the storage root" if sessions else \
            "the storage root holds no session"
        return _missing("index", MissingUpstreamError(f"{exc} ({where})", exc.steps),
                        _step_commands("SESSION_DIR", "ROOT", args.storage))
    per_split = ", ".join(f"{split} {row['subjects']} subjects / {row['images']} images"
                          for split, row in summary["per_split"].items())
    print(f"{summary['images']} images of {summary['identities']} identities in {summary['shards']} shards "
          f"({per_split}) -> {store.uri(layout.INDEX)}")
    print(f"  coverage: {store.uri(layout.COVERAGE)} ({len(summary['missing_cells'])} missing cells)")
    if summary["sessions_without_shards"]:
        print(f"  not indexed (no shards): {', '.join(summary['sessions_without_shards'])}")
    return EXIT_OK


def add_calibrate_session_arguments(p: argparse.ArgumentParser) -> None:
    """``--session``/``--storage``/``--max-rmse`` on ``o2a calibrate`` (handled by ``calibrate_session_command``)."""
    p.add_argument("--session", metavar="SESSION_DIR",
                   help="instead of CALIB_DIR: calibrate a session as the camera_calibration asset does (its "
                        "calibration folder, its camera order; a result shared by sessions with the same board "
                        "captures is reused) into --storage")
    p.add_argument("--storage", help="with --session: storage root URL")
    p.add_argument("--max-rmse", type=float,
                   help=f"with --session: exit 1 above this overall RMSE in px (the asset check's threshold; "
                        f"default {MAX_RMSE_PX})")


def add_stage_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``o2a shard`` and ``o2a index`` on the top-level subparsers."""
    p = sub.add_parser("shard", help="write one session's webdataset shards into a storage root (no Dagster)",
                       description="The session_shards asset's work: reads the session's manifest, calibration, "
                                   "landmarks and fit from --storage and its images from --captures; reuses the "
                                   f"shards when nothing changed. Writes {layout.shards_dir('SESSION_ID')}/.")
    p.add_argument("session_id", metavar="SESSION_ID")
    p.add_argument("--captures", required=True, help="captures root folder (holds SESSION_ID/)")
    p.add_argument("--storage", required=True, help="storage root URL with the session's upstream artefacts")
    p.add_argument("--max-mb", type=float, default=SHARD_DEFAULTS["max_mb"],
                   help="start a new shard before a tar would pass this many MiB (default %(default)s)")
    p.add_argument("--max-samples", type=int, default=SHARD_DEFAULTS["max_samples"],
                   help="... or this many samples (default %(default)s)")
    p.add_argument("--train-resolution", type=int, default=SHARD_DEFAULTS["train_resolution"],
                   help="longer side of train.png in px; 0 = no training image and no mask (default %(default)s)")
    p.add_argument("--no-masks", action="store_true", help="no grabCut head mask (mask.png)")
    _face_model_arguments(p)
    p.set_defaults(func=cmd_shard)

    p = sub.add_parser("index", help="write the dataset index over every sharded session of a storage root",
                       description="The dataset_index asset's work, over the sessions the storage root holds "
                                   f"({layout.INGEST}/ and {layout.SHARDS}/ folders). Writes {layout.INDEX} and "
                                   f"{layout.COVERAGE}.")
    p.add_argument("--storage", required=True, help="storage root URL")
    for split, fraction in SPLIT_DEFAULTS.items():
        p.add_argument(f"--{split}", type=float, default=fraction,
                       help=f"fraction of subjects in the {split} split (default %(default)s)")
    p.set_defaults(func=cmd_index)
