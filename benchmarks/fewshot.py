"""What few-shot adaptation and its evaluation cost, per method, against stage 1 as the baseline.

Adapts the demo's prior (``--prior``, default the demo's checkpoint) to one
held-out subject at K = 3 with the cpu preset and prints, per method, seconds per
optimisation step and total adaptation seconds, then seconds per rendered 64 px
evaluation frame; ratios are against a stage-1 step measured in the same run.
Needs the demo's outputs (``make demo``) or ``--prior``/``--index`` of your own.

    .venv/bin/python -m benchmarks.fewshot [--prior PATH] [--index PATH] [--subject ID] [--k 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from capture_schema import derived_layout as layout

DEMO = Path("workspace_data/derived")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prior", type=Path, default=DEMO / layout.prior_checkpoint("anchored"))
    parser.add_argument("--index", type=Path, default=DEMO / layout.INDEX)
    parser.add_argument("--subject", help="held-out subject (default: the first of the test split)")
    parser.add_argument("--k", type=int, default=3)
    args = parser.parse_args()
    for path in (args.prior, args.index):
        if not path.is_file():
            print(f"no {path}: run `make demo` first or pass --prior/--index", file=sys.stderr)
            return 2

    from fitting.face_models import load_face_model
    from training.fewshot.adapt import adapt_latent, refine, train_scratch
    from training.fewshot.config import fewshot_preset
    from training.fewshot.evaluate import held_out_subjects, load_subject_frames
    from training.fewshot.selection import choose_eval_frames, choose_inputs
    from training.prior.checkpoint import load_prior
    from training.prior.evaluate import render_batch
    from training.prior.frames import collate_frames

    config = fewshot_preset("cpu")
    prior, _ = load_prior(args.prior)
    face_model = load_face_model("builtin", None, None)
    subject = args.subject or held_out_subjects(str(args.index), ["test"])[0]
    frames = load_subject_frames(str(args.index), subject, face_model, prior)
    by_key = {f["key"]: f for f in frames}
    keys = choose_inputs(frames, args.k, config.seed)
    inputs = collate_frames([by_key[k] for k in keys])
    stage1 = adapt_latent(prior, face_model, inputs, config)
    runs = {"stage 1 (code)": (stage1, config.stage1_steps),
            "stage 2 (+ weights, 3DMM, cameras)": (refine(stage1, face_model, inputs, config, True),
                                                   config.stage2_steps),
            "stage 2 (+ weights)": (refine(stage1, face_model, inputs, config, False), config.stage2_steps),
            "from scratch": (train_scratch(prior, face_model, inputs, config), config.baseline_steps)}
    base = stage1.seconds / config.stage1_steps
    print(f"subject {subject}, K={args.k}, cpu preset ({config.rays_per_step} rays per step)")
    print(f"{'method':<36}{'s/step':>8}{'ratio':>8}{'seconds':>9}")
    for name, (run, steps) in runs.items():
        print(f"{name:<36}{run.seconds / steps:>8.3f}{run.seconds / steps / base:>8.2f}{run.seconds:>9.1f}")
    targets = collate_frames([by_key[k] for k in choose_eval_frames(frames, keys, 8, config.seed)])
    start = time.perf_counter()
    render_batch(stage1.model, face_model, targets)
    per_frame = (time.perf_counter() - start) / 8
    print(f"{'render one 64 px evaluation frame':<36}{per_frame:>8.3f}{per_frame / base:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
