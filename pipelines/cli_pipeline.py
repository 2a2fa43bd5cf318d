"""``o2a pipeline run``: every asset for every session under a captures root, on a Dagster instance.

By default the sessions go as a backfill through the instance's run queue and daemon
(``pipelines.deployment``), several at once; ``--in-process`` runs them one after another
in this process. Then the dataset index, the avatar prior, its few-shot report and its latent-space report.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from pipelines.cli_errors import EXIT_INVALID, EXIT_OK, EXIT_USAGE


def cmd_pipeline_run(args: argparse.Namespace) -> int:
    import dagster as dg

    from capture_schema.captures_root import NOT_A_SESSION
    from pipelines.resources import CapturesResource, StorageResource
    from pipelines.runner import backfill_all_sessions, run_all_sessions, scan_captures

    if args.prior_iterations is not None and args.prior_iterations < 1:
        print("o2a pipeline run: --prior-iterations must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    if args.workers is not None and args.workers < 1:
        print("o2a pipeline run: --workers must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    captures = CapturesResource(root=args.captures)
    if not captures.exists():
        print(f"o2a pipeline run: captures root {args.captures} does not exist", file=sys.stderr)
        return EXIT_USAGE
    storage = StorageResource(url=args.storage)
    from pipelines.deployment import instance_at

    with _dagster_home(args) as home:
        if args.in_process:
            instance = dg.DagsterInstance.ephemeral() if home is None else instance_at(home)
        else:
            from pipelines.deployment import prepare_home, set_pool_limits

            written = prepare_home(home, _workers(args))
            instance = instance_at(home)
            if written:
                set_pool_limits(instance, _workers(args))
            else:
                print(f"using the deployment's own {home / 'dagster.yaml'} (run queue and pools as it sets them)")
        print(f"materialising every session asset for sessions under {args.captures}")
        not_sessions = [e for e in scan_captures(instance, captures, storage) if e.kind == NOT_A_SESSION]
        if args.in_process:
            runs = run_all_sessions(instance, captures, storage)
        else:
            print(f"  a backfill of the session runs, at most {_workers(args)} at once (Dagster run queue, {home})")
            runs = backfill_all_sessions(instance, home, captures, storage, _workers(args))
        return _after_sessions(args, instance, storage, runs, not_sessions)


def _workers(args: argparse.Namespace) -> int:
    return args.workers or os.cpu_count() or 1


@contextlib.contextmanager
def _dagster_home(args: argparse.Namespace):
    """``--dagster-home``, else ``$DAGSTER_HOME``; without either, a temporary one for a backfill (removed
    after) or none for ``--in-process`` (an ephemeral instance)."""
    chosen = args.dagster_home or os.environ.get("DAGSTER_HOME")
    if chosen:
        home = Path(chosen).resolve()
        home.mkdir(parents=True, exist_ok=True)
        yield home
    elif args.in_process:
        yield None
    else:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="o2a-dagster-home-") as tmp:
            yield Path(tmp)


def _after_sessions(args: argparse.Namespace, instance, storage, runs: list, not_sessions: list) -> int:
    """The index, the prior and its few-shot report once the sessions are done; the exit status."""
    from pipelines.runner import build_dataset_index, evaluate_fewshot, report_latent_space, train_avatar_prior

    failed = [r for r in runs if not r.success and not r.failed_checks]
    quarantined = [r for r in runs if r.failed_checks]
    ok = len(runs) - len(failed) - len(quarantined)
    print(f"{ok} ok, {len(quarantined)} quarantined, {len(failed)} failed, {len(not_sessions)} not a session")
    if not runs:
        print("no sessions found")
        return EXIT_INVALID
    if ok and not build_dataset_index(instance, storage):
        return EXIT_INVALID
    if not args.no_prior and ok:
        prior = {"iterations": args.prior_iterations} if args.prior_iterations else {}
        steps = f"{args.prior_iterations} steps" if prior else "the preset's steps"
        print(f"training the avatar prior on the index's train split (cpu preset, {steps})")
        if not train_avatar_prior(instance, storage, run_config={"ops": {"avatar_prior": {"config": prior}}}):
            return EXIT_INVALID
        if not args.no_fewshot:
            print("adapting the prior to the held-out test subjects (few-shot report, cpu preset)")
            if evaluate_fewshot(instance, storage) is None:
                return EXIT_INVALID
            if not args.no_latent:
                print("interpolating, sampling and measuring the prior's identity codes (latent-space report)")
                if report_latent_space(instance, storage) is None:
                    return EXIT_INVALID
    print(f"outputs: {storage.storage().uri('')}")
    # Anything not ok (quarantined, failed, not a session) is listed above and makes the exit status 1.
    return EXIT_INVALID if failed or quarantined or not_sessions else EXIT_OK


def add_pipeline_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="run the Dagster pipeline")
    psub = p.add_subparsers(dest="pipeline_command", required=True)
    r = psub.add_parser("run", help="materialise every asset for every session under a captures root")
    r.add_argument("--captures", required=True, help="captures root: a folder, or a bucket URL (s3://bucket/prefix)")
    r.add_argument("--storage", required=True, help="storage root URL for derived artefacts")
    r.add_argument("--dagster-home", help="persist runs in this Dagster instance (default: $DAGSTER_HOME, else a "
                                          "temporary one)")
    r.add_argument("--workers", type=int, help="session runs at once (default: the machine's cores)")
    r.add_argument("--in-process", action="store_true",
                   help="run the sessions one after another in this process (no daemon, no run queue)")
    r.add_argument("--no-prior", action="store_true", help="stop after the dataset index (no avatar prior)")
    r.add_argument("--prior-iterations", type=int, help="avatar prior steps (default: the cpu preset's)")
    r.add_argument("--no-fewshot", action="store_true", help="stop after the prior (no few-shot or latent-space report)")
    r.add_argument("--no-latent", action="store_true", help="skip the latent-space report after the few-shot report")
    r.set_defaults(func=cmd_pipeline_run)
