"""``o2a``: the command line. Each subcommand calls the library function its asset calls.

Exit codes: 0 success, 1 the input is bad or the work is impossible (a clear
message says why), 2 usage errors. Bad input never produces a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from capture_schema import derived_layout as layout
from pipelines.cli_ablation import add_ablation_commands
from pipelines.cli_calibration_import import add_import_calibration_command
from pipelines.cli_errors import EXIT_INVALID, EXIT_OK, EXIT_USAGE, command_name, os_error_message
from pipelines.cli_export import add_export_commands
from pipelines.cli_fewshot import add_fewshot_command
from pipelines.cli_latent import add_latent_commands
from pipelines.cli_pipeline import add_pipeline_commands
from pipelines.cli_prior import add_prior_commands
from pipelines.cli_stages import add_calibrate_session_arguments, add_stage_commands, calibrate_session_command



def _progress_bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not sys.stderr.isatty(), leave=False)


def cmd_validate(args: argparse.Namespace) -> int:
    from capture_schema.validation import validate_session

    session_dir = Path(args.session_dir)
    if not session_dir.is_dir():
        print(f"o2a validate: {session_dir} is not a folder", file=sys.stderr)
        return EXIT_USAGE
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        bar = bar or _progress_bar(total, "validating")
        bar.update(1)

    report = validate_session(session_dir, deep=args.deep, progress=progress)
    if bar is not None:
        bar.close()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    elif report.valid:
        print(f"{session_dir.name}: valid ({len(report.images)} images)")
    else:
        print(f"{session_dir.name}: INVALID, {len(report.problems)} problem(s)")
        for p in sorted(report.problems):
            print(f"  [{p.code.value}] {p.path}: {p.message}")
    return EXIT_OK if report.valid else EXIT_INVALID


def cmd_ingest(args: argparse.Namespace) -> int:
    from capture_schema.ingest import ingest_session
    from capture_schema.storage import Storage

    session_dir = Path(args.session_dir)
    if not session_dir.is_dir():
        print(f"o2a ingest: {session_dir} is not a folder", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = ingest_session(session_dir, Storage(args.storage), deep=args.deep)
    except ValueError as exc:
        print(f"o2a ingest: {exc}", file=sys.stderr)
        return EXIT_INVALID
    print(f"manifest: {result.manifest_uri}")
    if not result.valid:
        print(f"quarantined: {result.quarantine_uri} ({len(result.report.problems)} problem(s))")
        return EXIT_INVALID
    return EXIT_OK


def cmd_calibrate(args: argparse.Namespace) -> int:
    from fitting.calibration import CalibrationError, calibrate_folder, write_calibration_outputs

    if args.session is not None:
        return calibrate_session_command(args)
    if args.calib_dir is None or args.out is None:
        print("o2a calibrate: give CALIB_DIR --out DIR, or --session SESSION_DIR --storage URL", file=sys.stderr)
        return EXIT_USAGE
    if args.storage is not None or args.max_rmse is not None:
        print("o2a calibrate: --storage and --max-rmse go with --session", file=sys.stderr)
        return EXIT_USAGE
    calib_dir = Path(args.calib_dir)
    if not calib_dir.is_dir():
        print(f"o2a calibrate: {calib_dir} is not a folder", file=sys.stderr)
        return EXIT_USAGE
    if Path(args.out).exists() and not Path(args.out).is_dir():
        print(f"o2a calibrate: cannot write {args.out}: it exists and is not a folder", file=sys.stderr)
        return EXIT_INVALID
    bars: dict = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            bars[stage] = _progress_bar(total, stage)
        bars[stage].n = done
        bars[stage].refresh()

    try:
        result = calibrate_folder(calib_dir, cameras=args.cameras.split(",") if args.cameras else None,
                                  progress=progress, subpix_half_window=args.subpix_window,
                                  **({} if args.loss_scale is None else {"loss_scale_px": args.loss_scale}))
        out = write_calibration_outputs(result, Path(args.out))
    except CalibrationError as exc:
        print(f"o2a calibrate: calibration impossible: {exc}", file=sys.stderr)
        return EXIT_INVALID
    finally:
        for bar in bars.values():
            bar.close()
    report = result.report()
    print(f"rmse {result.rmse_px:.3f} px over {len(result.cameras)} cameras -> {out}")
    for cam_id, cam in report["cameras"].items():
        det = cam["detection"]
        print(f"  {cam_id}: rmse {cam['rmse_px']:.3f} px, {cam['n_observations']} corners, "
              f"board found in {det.get('n_detected')}/{det.get('n_images')} images")
    return EXIT_OK


def cmd_simulate(args: argparse.Namespace) -> int:
    from capture_simulator.face_source import load_face_source
    from capture_simulator.simulate import simulate_dataset

    if args.subjects < 1 or args.size < 64:
        print("o2a simulate: --subjects must be >= 1 and --size >= 64", file=sys.stderr)
        return EXIT_USAGE
    if Path(args.out).exists() and not Path(args.out).is_dir():
        print(f"o2a simulate: cannot write {args.out}: it exists and is not a folder", file=sys.stderr)
        return EXIT_INVALID
    try:
        source = load_face_source(args.face_model, args.face_model_path)
    except (OSError, ValueError) as exc:
        print(f"o2a simulate: {exc}", file=sys.stderr)
        return EXIT_INVALID
    out = simulate_dataset(Path(args.out), n_subjects=args.subjects, size=args.size, seed=args.seed,
                           progress=not args.quiet, face_source=source)
    print(f"captures: {out.captures_root}")
    print(f"ground truth: {out.ground_truth_root}")
    return EXIT_OK


def _detect_session_with_bar(session_dir: Path, workers: int | None, mirror: bool):
    from fitting.landmarks.detect import detect_session

    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        bar = bar or _progress_bar(total, "landmarks")
        bar.n = done
        bar.refresh()

    try:
        return detect_session(session_dir, workers=workers, mirror=mirror, progress=progress)
    finally:
        if bar is not None:
            bar.close()


def cmd_landmarks(args: argparse.Namespace) -> int:
    from capture_schema.atomic import atomic_write_json, atomic_write_bytes
    from capture_schema.manifest import parquet_bytes
    from fitting.landmarks.detect import LandmarkInputError, detect_image_file, landmark_summary_table
    from fitting.landmarks.store import write_landmarks_zarr

    source, out = Path(args.source), Path(args.out)
    try:
        if source.is_file():
            found = detect_image_file(source, mirror=not args.no_mirror)
            if not found.detected:
                print(f"o2a landmarks: no face found in {source}", file=sys.stderr)
                return EXIT_INVALID
            atomic_write_json(out, {"image_size": list(found.image_size),
                                    "landmarks": [[round(float(x), 3), round(float(y), 3)] for x, y in found.landmarks],
                                    "confidence": round(float(found.confidence), 4)})
            print(f"478 landmarks (confidence {found.confidence:.2f}) -> {out}")
            return EXIT_OK
        if not source.is_dir():
            print(f"o2a landmarks: {source} is neither an image nor a session folder", file=sys.stderr)
            return EXIT_USAGE
        if out.exists() and not out.is_dir():
            print(f"o2a landmarks: cannot write {out}: it exists and is not a folder", file=sys.stderr)
            return EXIT_INVALID
        found = _detect_session_with_bar(source, args.workers, not args.no_mirror)
    except LandmarkInputError as exc:
        print(f"o2a landmarks: {exc}", file=sys.stderr)
        return EXIT_INVALID
    zarr_path, summary_path = out / layout.LANDMARKS_ZARR, out / layout.LANDMARKS_SUMMARY_FILE
    write_landmarks_zarr(found, zarr_path)
    atomic_write_bytes(summary_path, parquet_bytes(landmark_summary_table(found)))
    n, total = int(found.detected.sum()), found.detected.size
    print(f"{found.session_id}: face found in {n}/{total} images -> {zarr_path}, {summary_path}")
    for e, c in zip(*(~found.detected).nonzero()):
        print(f"  no face: {found.expressions[e]}/{found.cameras[c]}")
    return EXIT_OK if n else EXIT_INVALID


def cmd_fit(args: argparse.Namespace) -> int:
    import cv2
    import numpy as np

    from capture_schema.atomic import atomic_write_bytes
    from capture_schema.calibration_file import read_calibration
    from capture_schema.manifest import parquet_bytes
    from fitting.face_fit.overlay import session_overlay
    from fitting.face_fit.session import FitInputError, fit_session, fit_views_table, write_session_fit
    from fitting.face_models import load_face_model
    from fitting.landmarks.detect import LandmarkInputError
    from fitting.landmarks.store import read_landmarks_zarr, write_landmarks_zarr

    session_dir, out = Path(args.session_dir), Path(args.out)
    if not session_dir.is_dir():
        print(f"o2a fit: {session_dir} is not a folder", file=sys.stderr)
        return EXIT_USAGE
    if out.exists() and not out.is_dir():
        print(f"o2a fit: cannot write {out}: it exists and is not a folder", file=sys.stderr)
        return EXIT_INVALID
    try:
        calibration = read_calibration(Path(args.calibration))
        model = load_face_model(args.model, args.model_path, args.embedding)
        if args.landmarks:
            landmarks = read_landmarks_zarr(args.landmarks)
        else:
            landmarks = _detect_session_with_bar(session_dir, args.workers, True)
            write_landmarks_zarr(landmarks, out / layout.LANDMARKS_ZARR)
        result = fit_session(model, landmarks, calibration)
    except (OSError, ValueError, LandmarkInputError, FitInputError) as exc:
        print(f"o2a fit: {exc}", file=sys.stderr)
        return EXIT_INVALID
    fit = result.fit
    write_session_fit(result, out / layout.FIT_ZARR)
    atomic_write_bytes(out / layout.FIT_VIEWS_FILE, parquet_bytes(fit_views_table(result)))
    overlay, _, _ = session_overlay(result, session_dir, calibration.cameras, landmarks, model.faces)
    if overlay is not None:
        ok, png = cv2.imencode(".png", cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
        atomic_write_bytes(out / layout.FIT_OVERLAY_FILE, png.tobytes())
    used = fit.view_status == "used"
    print(f"{result.session_id}: {model.name} fitted to {int(used.sum())} views of "
          f"{int((fit.frame_status != 'not_fitted').sum())}/{len(fit.frame_status)} frames; "
          f"median view RMSE {np.median(fit.view_rmse_px[used]) if used.any() else float('nan'):.2f} px -> {out}")
    for status in ("outlier", "not_detected"):
        views = [f"{result.expressions[i]}/{result.cameras[j]}" for i, j in zip(*(fit.view_status == status).nonzero())]
        if views:
            print(f"  {status}: {', '.join(views)}")
    if result.flagged_frames:
        print(f"  frames seen by fewer than 2 views: {', '.join(result.flagged_frames)}")
    return EXIT_OK if used.any() else EXIT_INVALID


def cmd_inspect(args: argparse.Namespace) -> int:
    from training.shards.inspect import inspect_shard

    try:
        report = inspect_shard(args.shard)
    except FileNotFoundError as exc:
        print(f"o2a inspect: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for sample in report.samples:
            members = ", ".join(f"{ext} {size} B" for ext, size in sample.members)
            status = "ok" if sample.ok else "PROBLEM: " + "; ".join(sample.problems)
            print(f"{sample.key}  [{members}]  {status}")
        for problem in report.problems:
            print(f"shard: {problem}")
        total = sum(s.bytes for s in report.samples)
        print(f"{report.path.rsplit('/', 1)[-1]}: {len(report.samples)} samples, {total} member bytes, "
              f"{len(report.bad_samples)} with problems" + (f", {len(report.problems)} shard problem(s)"
                                                            if report.problems else ""))
    return EXIT_OK if report.ok else EXIT_INVALID


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="o2a", description="Multi-view head-capture pipeline toolkit.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a session folder against the capture contract")
    p.add_argument("session_dir")
    p.add_argument("--json", action="store_true", help="print {valid, problems} as JSON")
    p.add_argument("--deep", action="store_true", help="also decode every image (slower)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("ingest", help="validate, hash and write the manifest of one session (no Dagster)")
    p.add_argument("session_dir")
    p.add_argument("--storage", default="file://workspace_data/derived", help="storage root URL")
    p.add_argument("--deep", action="store_true")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("calibrate", help="calibrate a rig from a calibration folder (board.json + <camera>/NNN images)")
    p.add_argument("calib_dir", nargs="?", metavar="CALIB_DIR")
    p.add_argument("--out", help="with CALIB_DIR: output folder (written atomically)")
    p.add_argument("--cameras", help="comma-separated camera ids in rig order (default: every camera folder, sorted)")
    p.add_argument("--subpix-window", type=int, default=None,
                   help="chessboard cornerSubPix half-window in px (default: sized to the squares, at most 11)")
    p.add_argument("--loss-scale", type=float, help="Cauchy loss scale of the bundle adjustment, px (default 1.0)")
    add_calibrate_session_arguments(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("simulate", help="write simulated capture sessions plus ground truth")
    p.add_argument("out")
    p.add_argument("--subjects", type=int, required=True)
    p.add_argument("--size", type=int, default=512, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--face-model", default="offspan", choices=("offspan", "builtin", "ict"),
                   help="model that shapes the subjects and holds the ground truth (default offspan: built-in "
                        "faces plus shape outside its span, so no fit is exact; builtin: the model's own faces)")
    p.add_argument("--face-model-path", help="ICT-FaceKit npz folder (with --face-model ict)")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("landmarks", help="mediapipe face landmarks of one image (JSON) or a whole session (zarr)")
    p.add_argument("source", help="an image file or a session folder")
    p.add_argument("--out", required=True, help="JSON file for an image; output folder for a session")
    p.add_argument("--workers", type=int, default=None, help="detector processes (default: one per core, <= 4)")
    p.add_argument("--no-mirror", action="store_true", help="skip the mirrored second pass (no confidence)")
    p.set_defaults(func=cmd_landmarks)

    p = sub.add_parser("fit", help="fit the morphable model to a session (landmarks detected unless given)")
    p.add_argument("session_dir")
    p.add_argument("--calibration", required=True, help=f"{layout.CALIBRATION_FILE} of the session's rig")
    p.add_argument("--out", required=True, help=f"output folder: {layout.FIT_ZARR}, {layout.FIT_VIEWS_FILE}, "
                                                f"{layout.FIT_OVERLAY_FILE}")
    p.add_argument("--landmarks", help=f"{layout.LANDMARKS_ZARR} from `o2a landmarks` (default: detect now)")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--model", default="builtin", choices=("builtin", "ict", "flame"))
    p.add_argument("--model-path", help="ICT-FaceKit npz folder or FLAME .pkl")
    p.add_argument("--embedding", help="FLAME mediapipe landmark embedding .npz")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("inspect", help="list and check the samples of one shard (o2a.shard/1 tar)")
    p.add_argument("shard", help="a .tar shard: a path or a URL (s3://bucket/..., credentials from the environment)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_inspect)

    add_pipeline_commands(sub)
    add_stage_commands(sub)
    add_prior_commands(sub)
    add_fewshot_command(sub)
    add_latent_commands(sub)
    add_ablation_commands(sub)
    add_export_commands(sub)
    add_import_calibration_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. An ``OSError`` that escapes it (full disk, file too large, read-only or
    unwritable output) becomes ``o2a <command>: cannot write <path>: <strerror>`` and exit 1."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"o2a {command_name(args)}: {os_error_message(exc, args)}", file=sys.stderr)
        return EXIT_INVALID


if __name__ == "__main__":
    sys.exit(main())
