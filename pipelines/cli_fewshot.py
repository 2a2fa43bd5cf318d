"""``o2a fewshot``: the ``fewshot_report`` stage without Dagster.

Calls ``training.fewshot.stage.run_fewshot``, the function the asset calls, on a storage
root that holds the dataset index and a trained prior; writes the same folder
(``fewshot/<backbone>``), replaced whole. Exit codes as ``o2a``'s: 0 success, 1 missing
inputs or impossible work, 2 usage errors (bad settings included).
"""

from __future__ import annotations

import argparse
import sys

from capture_schema import derived_layout as layout
from pipelines.cli_errors import EXIT_INVALID, EXIT_OK, EXIT_USAGE

_OVERRIDES = ("ks", "eval_frames", "methods", "perturbed_ks", "stage1_steps", "stage2_steps")


def _error(message: str) -> None:
    print(f"o2a fewshot: {message}", file=sys.stderr)


def cmd_fewshot(args: argparse.Namespace) -> int:
    from capture_schema.storage import Storage
    from fitting.face_models import load_face_model
    from training.fewshot.config import PRESETS
    from training.fewshot.report import summary_markdown
    from training.fewshot.stage import run_fewshot
    from training.settings import SettingsError, apply_overrides
    from training.stage_io import StageError

    if args.preset not in PRESETS:
        _error(f"unknown few-shot preset {args.preset!r}; choose one of {', '.join(sorted(PRESETS))}")
        return EXIT_USAGE
    changes = {name: value for name in _OVERRIDES if (value := getattr(args, name)) is not None}
    try:
        config = apply_overrides(PRESETS[args.preset], changes, "settings")
    except SettingsError as exc:
        _error(str(exc))
        return EXIT_USAGE
    try:
        model = load_face_model(args.face_model, args.face_model_path, args.face_model_embedding)
    except (OSError, ValueError) as exc:
        _error(f"face model: {exc}")
        return EXIT_INVALID
    store = Storage(args.storage)
    try:
        run = run_fewshot(store, model, config, args.backbone, args.splits, args.subjects or (),
                          log=None if args.quiet else print)
    except StageError as exc:
        _error(str(exc))
        return EXIT_INVALID
    print(summary_markdown(run.summary))
    print(f"report: {store.uri(layout.fewshot_report(args.backbone))}")
    return EXIT_OK


def add_fewshot_command(sub: argparse._SubParsersAction) -> None:
    """Register ``o2a fewshot`` on the top-level subparsers."""
    from pipelines.cli_prior import _face_model_arguments

    p = sub.add_parser("fewshot", help="adapt the trained prior to held-out subjects from K images and report "
                                       "(the fewshot_report asset, no Dagster)")
    p.add_argument("--storage", default="file://workspace_data/derived",
                   help=f"storage root URL holding {layout.INDEX} and {layout.prior_checkpoint('<backbone>')}")
    p.add_argument("--backbone", default="anchored", help="the prior to adapt (prior/<backbone>/)")
    p.add_argument("--preset", default="cpu", help="few-shot preset: cpu (demo, tests) or gpu")
    p.add_argument("--splits", nargs="+", default=["test"], help="index splits whose subjects are adapted to")
    p.add_argument("--subjects", nargs="+", help="only these held-out subjects (default: all of --splits)")
    p.add_argument("--ks", type=int, nargs="+", help="numbers of input images (default: the preset's)")
    p.add_argument("--eval-frames", type=int, help="held-out frames scored per subject (0 = all)")
    p.add_argument("--methods", nargs="+", help="prior, prior_fixed_geometry, latent_only, scratch (default: all)")
    p.add_argument("--perturbed-ks", type=int, nargs="*", help="K with 1-degree perturbed cameras ([] = none)")
    p.add_argument("--stage1-steps", type=int, help="stage 1 steps (default: the preset's)")
    p.add_argument("--stage2-steps", type=int, help="stage 2 steps (default: the preset's)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    _face_model_arguments(p)
    p.set_defaults(func=cmd_fewshot)
