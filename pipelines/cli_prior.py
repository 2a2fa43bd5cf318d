"""``o2a prior train`` / ``o2a prior eval``: the avatar prior without Dagster.

``train`` calls ``training.prior.train.train_prior`` directly, so it runs the same
under ``torchrun --nproc_per_node=N -m pipelines.cli prior train ...`` (each process
joins the group itself; only rank 0 prints and writes). Exit codes as ``o2a``'s:
0 success, 1 bad input or impossible work, 2 usage errors (bad ``--set`` included).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from pipelines.cli_errors import EXIT_INVALID, EXIT_OK, EXIT_USAGE
from capture_schema import derived_layout as layout

DEFAULT_EVAL_FRAMES = 24


class UsageError(ValueError):
    """A command-line value that cannot be used (exit 2)."""


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _error(command: str, message: str) -> None:
    """Errors are printed by every process (a rank may fail alone), tagged with the rank under torchrun."""
    where = f" (rank {_rank()})" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    print(f"o2a prior {command}{where}: {message}", file=sys.stderr)


def parse_settings(items: Sequence[str]) -> dict[str, str]:
    """``["rays_per_image=32", ...]`` -> ``{"rays_per_image": "32"}`` (last wins); typed by ``build_config``."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set rays_per_image=128")
        out[name.strip()] = raw.strip()
    return out


def build_config(preset_name: str, backbone: str | None, iterations: int | None, settings: Sequence[str]):
    """The preset, then ``--backbone`` / ``--iterations``, then every ``--set`` (last wins); UsageError if invalid.

    ``--set`` text is typed by ``training.settings`` (the validator of the ablation spec and the Dagster
    configs too): an unknown field, a value that does not parse as the field's type (``iterations=1.5``)
    or one ``PriorConfig`` rejects is a UsageError naming the field.
    """
    from training.prior.config import PRESETS
    from training.settings import SettingsError, apply_overrides, check_changes

    if preset_name not in PRESETS:
        raise UsageError(f"unknown preset {preset_name!r}; choose one of {', '.join(sorted(PRESETS))}")
    flags = {name: value for name, value in (("backbone", backbone), ("iterations", iterations)) if value is not None}
    try:
        typed = check_changes(PRESETS[preset_name], parse_settings(settings), "--set", text=True)
        return apply_overrides(PRESETS[preset_name], {**flags, **typed})
    except SettingsError as exc:
        raise UsageError(str(exc)) from None


def _read_index(spec: str):
    """The dataset index from a local path, ``file://`` or any fsspec URL."""
    import io

    import pyarrow.parquet as pq

    from capture_schema.storage import local_path_of

    path = local_path_of(spec)
    if path is None:
        import fsspec

        with fsspec.open(spec, "rb") as fh:
            return pq.read_table(io.BytesIO(fh.read()))
    if not path.is_file():
        raise UsageError(f"no dataset index at {path} (the dataset_index asset writes {layout.INDEX})")
    return pq.read_table(path)


def _load_data(command: str, args: argparse.Namespace, split: str):
    """(face model, PriorData) or an exit code."""
    import pyarrow as pa

    from fitting.face_models import load_face_model
    from training.prior.dataset import prior_data_from_index

    try:
        data = prior_data_from_index(_read_index(args.index), split=split)
    except UsageError as exc:
        _error(command, str(exc))
        return EXIT_USAGE
    except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
        _error(command, f"{args.index}: {exc}")
        return EXIT_INVALID
    try:
        face_model = load_face_model(args.face_model, args.face_model_path, args.face_model_embedding)
    except (OSError, ValueError) as exc:
        _error(command, f"face model: {exc}")
        return EXIT_INVALID
    return face_model, data


def cmd_prior_train(args: argparse.Namespace) -> int:
    try:
        config = build_config(args.preset, args.backbone, args.iterations, args.set or [])
    except UsageError as exc:
        _error("train", str(exc))
        return EXIT_USAGE
    loaded = _load_data("train", args, "train")
    if isinstance(loaded, int):
        return loaded
    face_model, data = loaded
    from tqdm import tqdm

    from training.prior.train import train_prior

    rank0 = _rank() == 0
    if rank0:
        print(f"training the {config.backbone} prior ({args.preset} preset, {config.iterations} steps) on "
              f"{data.stats['images']} images of {len(data.subjects)} subjects ({data.stats['shards']} shards), "
              f"{face_model.name} face model -> {args.out}")
    bar = tqdm(total=config.iterations, desc="prior", unit="step", disable=not (rank0 and sys.stderr.isatty()),
               leave=False)

    def on_step(step: int, metrics: dict[str, float]) -> None:
        bar.n = step
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
        bar.refresh()

    try:
        result = train_prior(config, data, face_model, Path(args.out), resume=not args.no_resume,
                             log=lambda msg: tqdm.write(msg, file=sys.stdout), on_step=on_step)
    except (ValueError, RuntimeError) as exc:  # CheckpointError: the checkpoint in --out is foreign or incomplete
        from training.prior.checkpoint import CheckpointError

        hint = "resume=False" in str(exc) or isinstance(exc, CheckpointError)
        _error("train", f"{exc}" + (" (here: a new --out, or --no-resume)" if hint else ""))
        return EXIT_INVALID
    finally:
        bar.close()
    if rank0:
        final = result.final
        resumed = f", resumed from step {result.resumed_from}" if result.resumed_from else ""
        print(f"{result.steps} steps{resumed}: PSNR on training rays {final.get('psnr', float('nan')):.2f} dB, "
              f"loss {final.get('loss', float('nan')):.4f}, {result.rays_per_second:.0f} rays/s over "
              f"{result.world_size} process(es) -> {result.checkpoint}")
    return EXIT_OK


def cmd_prior_eval(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from training.prior.checkpoint import CheckpointError, load_prior
    from training.prior.evaluate import score_frames, summarize
    from training.prior.train import pick_device

    if args.frames < 0:
        _error("eval", "--frames must be >= 0 (0 = every frame)")
        return EXIT_USAGE
    if not Path(args.checkpoint).is_file():
        _error("eval", f"no checkpoint at {args.checkpoint}")
        return EXIT_USAGE
    try:
        model, ckpt = load_prior(args.checkpoint, pick_device())
    except CheckpointError as exc:  # names the file (and the missing key of an incomplete checkpoint)
        _error("eval", str(exc))
        return EXIT_INVALID
    except OSError as exc:
        _error("eval", f"cannot read {args.checkpoint}: {exc.strerror or exc}")
        return EXIT_INVALID
    loaded = _load_data("eval", args, args.split)
    if isinstance(loaded, int):
        return loaded
    face_model, data = loaded
    if ckpt.get("face_model") != face_model.name:
        _error("eval", f"the prior was trained on {ckpt.get('face_model')!r} fits, not {face_model.name!r} "
                       "(choose it with --face-model)")
        return EXIT_INVALID
    trained = list(ckpt["subjects"])
    known = sorted(set(data.subjects) & set(trained))
    if not known:
        _error("eval", f"none of the {len(data.subjects)} {args.split!r} subjects has an identity code in this "
                       "prior (held-out subjects need few-shot adaptation first)")
        return EXIT_INVALID
    if len(known) < len(data.subjects):
        print(f"scoring {len(known)} of the {len(data.subjects)} {args.split!r} subjects (the others are not in "
              "the prior)")
    # Frames index the checkpoint's identity codes: subjects in its order, samples of the known ones only.
    data = replace(data, subjects=tuple(trained), sample_filter=replace(data.sample_filter, subjects=frozenset(known)))
    scores = score_frames(model, face_model, data, max_frames=args.frames or None)
    summary = summarize(scores)
    if not summary["frames"]:
        _error("eval", f"no frame of the {args.split!r} split could be rendered (no {face_model.name} fit?)")
        return EXIT_INVALID
    subjects = len({s.subject_id for s in scores})
    print(f"{args.split}: PSNR over {summary['frames']} frames of {subjects} subject{'s' * (subjects != 1)}: "
          f"mean {summary['psnr_mean']:.2f} dB, median {summary['psnr_median']:.2f} dB, "
          f"10th percentile {summary['psnr_p10']:.2f} dB (step {ckpt.get('step', 'n/a')}, {args.checkpoint})")
    return EXIT_OK


def _face_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--face-model", default="builtin", choices=("builtin", "ict", "flame"),
                   help="the morphable model the shards' fits come from")
    p.add_argument("--face-model-path", help="ICT-FaceKit npz folder or FLAME .pkl")
    p.add_argument("--face-model-embedding", help="FLAME mediapipe landmark embedding .npz")


def add_prior_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``o2a prior train|eval`` on the top-level subparsers."""
    p = sub.add_parser("prior", help="train or evaluate the avatar prior (no Dagster; torchrun-ready)")
    psub = p.add_subparsers(dest="prior_command", required=True)

    t = psub.add_parser("train", help="train (or resume) the avatar prior on the index's train split",
                        description="Under torchrun (--nproc_per_node=N -m pipelines.cli prior train ...) every "
                                    "process trains on its share of the shards (NCCL on GPUs, gloo on CPU).")
    t.add_argument("--index", required=True, help=f"{layout.INDEX} (path or URL)")
    t.add_argument("--out", required=True, help=f"output folder: {layout.CHECKPOINT_FILE} (resumed when it matches)")
    t.add_argument("--preset", default="cpu", choices=("cpu", "gpu"), help="starting configuration")
    t.add_argument("--backbone", choices=("anchored", "triplane"), help="default: the preset's (anchored)")
    t.add_argument("--iterations", type=int, help="optimisation steps (default: the preset's)")
    t.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override any PriorConfig field, e.g. --set rays_per_image=512 (repeatable)")
    t.add_argument("--no-resume", action="store_true", help="start afresh, overwriting a checkpoint in --out")
    _face_model_arguments(t)
    t.set_defaults(func=cmd_prior_train)

    e = psub.add_parser("eval", help="render whole frames with a trained prior and print their PSNR")
    e.add_argument("--checkpoint", required=True,
                   help=f"{layout.CHECKPOINT_FILE} of `o2a prior train` or the avatar_prior asset")
    e.add_argument("--index", required=True, help=f"{layout.INDEX} (path or URL)")
    e.add_argument("--split", default="train", help="index split whose frames are scored (subjects with a code)")
    e.add_argument("--frames", type=int, default=DEFAULT_EVAL_FRAMES, help="frames to score, in shard order (0 = all)")
    _face_model_arguments(e)
    e.set_defaults(func=cmd_prior_eval)
