"""``o2a interpolate`` / ``o2a sample``: walk and sample a prior's identity latent space without Dagster.

Both render on a captured frame of the dataset index under ``--storage`` (its camera and head pose;
``training.latent.scene``): ``interpolate`` on the ``--from`` subject's frame, ``sample`` on the first
training subject's, with the 3DMM mean shape. An id is a training subject of the checkpoint or a
held-out subject whose code a few-shot run adapted to this prior (``--codes``, default
``fewshot/<backbone>/codes.parquet`` under ``--storage``). Exit codes as ``o2a``'s: 0 success,
1 unusable checkpoint, index or face model, 2 usage errors (unknown ids, camera or expression included).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from capture_schema import derived_layout as layout
from pipelines.cli_errors import EXIT_INVALID, EXIT_OK, EXIT_USAGE

ANIMATION_SUFFIXES = (".gif",)
STRIP_SUFFIXES = (".png",)


def _error(command: str, message: str) -> None:
    print(f"o2a {command}: {message}", file=sys.stderr)


def _load(command: str, args: argparse.Namespace):
    """(prior, subjects, face model, index, held-out codes, why no held-out codes) or an exit code."""
    from capture_schema.storage import Storage
    from fitting.face_models import load_face_model
    from training.latent.codes import held_out_codes, read_adapted_codes
    from training.latent.scene import LatentInputError
    from training.prior.checkpoint import CheckpointError, load_prior
    from training.prior.train import pick_device
    from training.stage_io import StageError, read_index

    if not Path(args.checkpoint).is_file():
        _error(command, f"no checkpoint at {args.checkpoint}")
        return EXIT_USAGE
    try:
        prior, ckpt = load_prior(args.checkpoint, pick_device())
    except CheckpointError as exc:
        _error(command, str(exc))
        return EXIT_INVALID
    if "fewshot" in ckpt:
        _error(command, f"{args.checkpoint} is an adapted avatar (one code); give the prior it was adapted from")
        return EXIT_USAGE
    try:
        model = load_face_model(args.face_model, args.face_model_path, args.face_model_embedding)
    except (OSError, ValueError) as exc:
        _error(command, f"face model: {exc}")
        return EXIT_INVALID
    if ckpt.get("face_model") not in (None, model.name):
        _error(command, f"the prior was trained on {ckpt.get('face_model')!r} fits, not {model.name!r} "
                        "(choose it with --face-model)")
        return EXIT_INVALID
    store = Storage(args.storage)
    try:
        index = read_index(store)
    except StageError as exc:
        _error(command, str(exc))
        return EXIT_INVALID
    where = args.codes or store.uri(layout.fewshot_codes(args.backbone))
    held, why = None, f"no adapted codes at {where}"
    try:
        data = Path(args.codes).read_bytes() if args.codes else \
            store.read_bytes(layout.fewshot_codes(args.backbone)) if store.exists(layout.fewshot_codes(args.backbone)) \
            else None
        if data is not None:
            held, why = held_out_codes(read_adapted_codes(data), prior), ""
    except (LatentInputError, ValueError, OSError) as exc:
        if args.codes:
            _error(command, f"{where}: {exc}")
            return EXIT_USAGE
        why = f"{where}: {exc}"
    return prior, list(ckpt["subjects"]), model, index, held, why


def _resolution(args: argparse.Namespace, prior) -> int:
    return args.resolution or prior.config.resolution


def cmd_interpolate(args: argparse.Namespace) -> int:
    from capture_schema.atomic import atomic_write_bytes
    from training.latent.codes import resolve_code, training_codes
    from training.latent.interpolate import animation_gif, endpoint, interpolate, strip_png
    from training.latent.scene import LatentInputError, load_reference_frames

    suffix = Path(args.out).suffix.lower()
    if suffix not in STRIP_SUFFIXES + ANIMATION_SUFFIXES:
        _error("interpolate", f"--out must end in {', '.join(STRIP_SUFFIXES + ANIMATION_SUFFIXES)} (a strip or an "
                              f"animation), got {args.out!r}")
        return EXIT_USAGE
    if args.steps < 2:
        _error("interpolate", f"--steps must be >= 2 (both ends), got {args.steps}")
        return EXIT_USAGE
    loaded = _load("interpolate", args)
    if isinstance(loaded, int):
        return loaded
    prior, subjects, model, index, held, why = loaded
    try:
        codes = training_codes(prior)
        a, b = (resolve_code(i, subjects, codes, held) for i in (args.from_id, args.to_id))
        frames = load_reference_frames(index, sorted({args.from_id, args.to_id}), args.camera, args.expression, model,
                                       _resolution(args, prior), prior.config.crop_scale, prior.config.head_depth)
    except LatentInputError as exc:
        _error("interpolate", f"{exc}" + (f" ({why})" if why and "adapted" in str(exc) else ""))
        return EXIT_USAGE
    start = frames[args.from_id]
    path = interpolate(prior, model, start, endpoint(args.from_id, a, start),
                       endpoint(args.to_id, b, frames[args.to_id]), args.steps, _resolution(args, prior))
    data = strip_png(path.images) if suffix in STRIP_SUFFIXES else animation_gif(path.images, args.frame_ms)
    atomic_write_bytes(args.out, data)
    profile = path.profile
    print(f"{args.from_id} -> {args.to_id}: {args.steps} steps on {start.key}, smoothness {path.smoothness:.3f} "
          f"(1.0 = even steps), {'monotonic' if profile.monotonic else 'NOT monotonic'} -> {args.out}")
    print("distance to start: " + " ".join(f"{d:.4f}" for d in profile.to_start))
    print("distance to end:   " + " ".join(f"{d:.4f}" for d in profile.to_end))
    return EXIT_OK


def cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np

    from capture_schema.atomic import atomic_write_bytes, canonical_json
    from training.latent.codes import training_codes
    from training.latent.interpolate import strip_png
    from training.latent.plausibility import PLAUSIBLE_NME, check_faces
    from training.latent.sample import fit_gaussian
    from training.latent.scene import LatentInputError, load_reference_frames, render_avatars

    if args.n < 1:
        _error("sample", f"-n must be >= 1, got {args.n}")
        return EXIT_USAGE
    if Path(args.out).exists() and not Path(args.out).is_dir():
        _error("sample", f"--out {args.out} exists and is not a folder")
        return EXIT_USAGE
    loaded = _load("sample", args)
    if isinstance(loaded, int):
        return loaded
    prior, subjects, model, index, _, _ = loaded
    try:
        scene = load_reference_frames(index, [subjects[0]], args.camera, args.expression, model,
                                      _resolution(args, prior), prior.config.crop_scale,
                                      prior.config.head_depth)[subjects[0]]
    except LatentInputError as exc:
        _error("sample", str(exc))
        return EXIT_USAGE
    gaussian = fit_gaussian(training_codes(prior))
    drawn = gaussian.sample(args.n, args.seed)
    rendered = render_avatars(prior, model, scene, drawn, np.zeros((args.n, model.n_identity)),
                              np.repeat(scene.expression[None], args.n, 0), _resolution(args, prior))
    checks = [] if args.no_check else check_faces(rendered.images, rendered.landmarks, rendered.landmark_ids)
    out = Path(args.out)
    for i, image in enumerate(rendered.images):
        atomic_write_bytes(out / f"sample_{i:03d}.png", strip_png(image[None], scale=1))
    atomic_write_bytes(out / "samples.png", strip_png(rendered.images))
    record = {"checkpoint": str(args.checkpoint), "seed": args.seed, "n": args.n, "scene": scene.key,
              "gaussian_rank": gaussian.rank, "plausible_nme": PLAUSIBLE_NME,
              "samples": [{"file": f"sample_{i:03d}.png", "code": [round(float(x), 6) for x in code],
                           **({"detected": c.detected, "nme": None if not c.detected else round(c.nme, 5),
                               "plausible": c.plausible} if checks else {})}
                          for i, (code, c) in enumerate(zip(drawn, checks or [None] * args.n))]}
    atomic_write_bytes(out / "samples.json", canonical_json(record).encode())
    text = f"{args.n} identities from the Gaussian of {len(subjects)} training codes (rank {gaussian.rank}), seed " \
           f"{args.seed}, rendered on {scene.key} -> {out}"
    if checks:
        plausible = sum(c.plausible for c in checks)
        text += f"; mediapipe: {sum(c.detected for c in checks)} detected, {plausible} plausible " \
                f"({plausible / len(checks):.0%}, landmark NME <= {PLAUSIBLE_NME})"
    print(text)
    return EXIT_OK


def _common(p: argparse.ArgumentParser) -> None:
    from capture_schema.layout import DEFAULT_CAMERAS
    from pipelines.cli_prior import _face_model_arguments

    p.add_argument("checkpoint", metavar="CHECKPOINT", help=f"a prior's {layout.CHECKPOINT_FILE}")
    p.add_argument("--storage", default="file://workspace_data/derived",
                   help=f"storage root URL holding {layout.INDEX} (the captured frame rendered on)")
    p.add_argument("--camera", default=DEFAULT_CAMERAS[0], help="camera id to render from")
    p.add_argument("--expression", default="neutral", help="expression to render")
    p.add_argument("--resolution", type=int, default=0, help="rendered side in px (default: the prior's)")
    p.add_argument("--backbone", default="anchored", help="few-shot run whose adapted codes name held-out ids")
    p.add_argument("--codes", help=f"an adapted-codes {layout.FEWSHOT_CODES_FILE} (default: "
                                   f"{layout.fewshot_codes('<backbone>')} under --storage)")
    _face_model_arguments(p)


def add_latent_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``o2a interpolate`` and ``o2a sample`` on the top-level subparsers."""
    p = sub.add_parser("interpolate", help="render the steps between two identity codes as a strip or a GIF")
    _common(p)
    p.add_argument("--from", dest="from_id", required=True, metavar="ID", help="start: a subject id")
    p.add_argument("--to", dest="to_id", required=True, metavar="ID", help="end: a subject id")
    p.add_argument("--out", required=True, metavar="PATH", help="a .png strip or a .gif animation")
    p.add_argument("--steps", type=int, default=8, help="images, both ends included")
    p.add_argument("--frame-ms", type=int, default=150, help="GIF frame duration")
    p.set_defaults(func=cmd_interpolate)

    s = sub.add_parser("sample", help="render identities sampled from a Gaussian fitted to the training codes")
    _common(s)
    s.add_argument("-n", type=int, required=True, help="identities to sample")
    s.add_argument("--seed", type=int, default=0, help="seeds the draw (the same seed, the same identities)")
    s.add_argument("--out", required=True, metavar="DIR", help="folder for sample_NNN.png, samples.png, samples.json")
    s.add_argument("--no-check", action="store_true", help="skip the mediapipe plausibility check")
    s.set_defaults(func=cmd_sample)
