"""``o2a ablation list|run``: the balance ablations of a spec file, one configuration at a time if wanted.

``run NAME ...`` materialises ``ablation_subset``, ``ablation_prior``,
``ablation_fewshot`` and ``ablation_latent`` for those configurations (partitions, each looping over the
spec's repeat seeds) in a Dagster instance,
then ``ablation_report`` once every configuration of the spec has scores. Exit
codes as ``o2a``'s: 0 success, 1 failed work, 2 usage errors (a bad spec included).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipelines.cli_errors import EXIT_INVALID, EXIT_OK, EXIT_USAGE


def _spec(args: argparse.Namespace):
    from pipelines.assets.ablation import spec_from_environment
    from training.ablation.spec import SpecError, load_spec

    try:
        return load_spec(args.spec) if args.spec else spec_from_environment()
    except SpecError as exc:
        print(f"o2a ablation: {exc}", file=sys.stderr)
        return None


def cmd_ablation_list(args: argparse.Namespace) -> int:
    spec = _spec(args)
    if spec is None:
        return EXIT_USAGE
    print(f"{spec.source} (sha256 {spec.digest[:12]}): {len(spec.names())} configuration(s), each repeated with "
          f"seed(s) {', '.join(map(str, spec.seeds))}; held-out split(s) {', '.join(spec.test_splits)}")
    for config in spec.configurations:
        print(f"  {config.name}: {config.budget_text()}; prior preset {config.prior_preset} "
              f"{config.prior_changes or ''}".rstrip())
    return EXIT_OK


def cmd_ablation_run(args: argparse.Namespace) -> int:
    import dagster as dg

    from pipelines.resources import StorageResource
    from pipelines.runner import run_ablation

    spec = _spec(args)
    if spec is None:
        return EXIT_USAGE
    unknown = [n for n in args.names if n not in spec.names()]
    if unknown:
        print(f"o2a ablation run: no configuration {', '.join(unknown)} in {spec.source}; "
              f"known: {', '.join(spec.names())}", file=sys.stderr)
        return EXIT_USAGE
    if args.dagster_home:
        home = Path(args.dagster_home).resolve()
        home.mkdir(parents=True, exist_ok=True)
        os.environ["DAGSTER_HOME"] = str(home)
    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    names = args.names or spec.names()
    print(f"ablation {spec.source}: {', '.join(names)}")
    done = run_ablation(instance, StorageResource(url=args.storage), spec, names,
                        report=not args.no_report and set(names) == set(spec.names()))
    return EXIT_OK if done else EXIT_INVALID


def add_ablation_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``o2a ablation list|run`` on the top-level subparsers."""
    p = sub.add_parser("ablation", help="identity / view / expression balance ablations of a spec file")
    asub = p.add_subparsers(dest="ablation_command", required=True)
    spec_help = "ablation spec YAML (default: $O2A_ABLATION_SPEC, else training/ablation/default.yaml)"
    lst = asub.add_parser("list", help="the spec's configurations and their budgets")
    lst.add_argument("--spec", help=spec_help)
    lst.set_defaults(func=cmd_ablation_list)
    run = asub.add_parser("run", help="subset, prior, few-shot scores and latent space of configurations, then the report")
    run.add_argument("names", nargs="*", help="configurations to run (default: all, then the report)")
    run.add_argument("--spec", help=spec_help)
    run.add_argument("--storage", default="file://workspace_data/derived", help="storage root URL (with the index)")
    run.add_argument("--dagster-home", help="record the runs in this DAGSTER_HOME (default: $DAGSTER_HOME, "
                                            "else an ephemeral instance)")
    run.add_argument("--no-report", action="store_true", help="skip ablation_report after all configurations")
    run.set_defaults(func=cmd_ablation_run)
