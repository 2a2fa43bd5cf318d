"""Anchored vs tri-plane avatar prior on the same data and budget, plus CPU-preset throughput.

Both backbones train the CPU preset (64 px head crops) for the same number of
steps on the same training split, with the same seed, rays, samples, support
and optimiser; only the field differs. Printed per backbone: held-in PSNR
(whole rendered frames vs the captured crops), PSNR on the last training rays,
seconds per step and rays per second; then the ratios tri-plane / anchored.
Data: ``--index`` (e.g. the demo's ``workspace_data/derived/dataset/index.parquet``),
else the demo's index when it exists, else 12 simulated subjects at 384 px taken
through the pipeline into a temporary folder (about 3 minutes).

    .venv/bin/python -m benchmarks.prior [--index PATH] [--iterations N] [--frames N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from capture_schema import derived_layout as layout

DEMO_INDEX = Path("workspace_data/derived") / layout.INDEX


def simulated_index(root: Path) -> Path:
    import dagster as dg

    from capture_simulator.simulate import simulate_dataset
    from pipelines.resources import CapturesResource, StorageResource
    from pipelines.runner import build_dataset_index, run_all_sessions

    print("simulating 12 subjects at 384 px and running the pipeline ...", flush=True)
    sim = simulate_dataset(root / "sim", n_subjects=12, size=384, seed=11)
    storage = StorageResource(url=f"file://{root}/derived")
    instance = dg.DagsterInstance.ephemeral()
    run_all_sessions(instance, CapturesResource(root=str(sim.captures_root)), storage, log=lambda _: None,
                     log_level="WARNING")
    build_dataset_index(instance, storage, log=lambda _: None, log_level="WARNING")
    return root / "derived" / layout.INDEX


def run(backbone: str, iterations: int, frames: int, index: Path, out: Path) -> dict[str, float]:
    from fitting.face_models import load_face_model
    from training.prior.checkpoint import load_prior
    from training.prior.config import preset
    from training.prior.dataset import prior_data_from_index
    from training.prior.evaluate import score_frames, summarize
    from training.prior.train import train_prior

    face_model = load_face_model("builtin", None, None)
    data = prior_data_from_index(index)
    config = preset("cpu", backbone=backbone, iterations=iterations, log_every=max(1, iterations // 10))
    result = train_prior(config, data, face_model, out / backbone, resume=False, log=None)
    model, _ = load_prior(result.checkpoint)
    start = time.perf_counter()
    held_in = summarize(score_frames(model, face_model, data, max_frames=frames))
    return {"psnr_heldin": held_in["psnr_mean"], "psnr_rays": result.final["psnr"],
            "s_per_step": result.train_seconds / iterations, "rays_per_s": result.rays_per_second,
            "render_s_per_frame": (time.perf_counter() - start) / max(1, held_in["frames"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", help="dataset/index.parquet to train on")
    parser.add_argument("--iterations", type=int, default=300, help="steps per backbone")
    parser.add_argument("--frames", type=int, default=24, help="training frames rendered for the held-in PSNR")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        index = Path(args.index) if args.index else DEMO_INDEX if DEMO_INDEX.is_file() else simulated_index(Path(tmp))
        print(f"data: {index}; {args.iterations} steps per backbone, CPU preset, {torch.get_num_threads()} threads")
        rows = {b: run(b, args.iterations, args.frames, index, Path(tmp)) for b in ("anchored", "triplane")}
    print(f"{'backbone':<10} {'held-in PSNR':>13} {'ray PSNR':>9} {'s/step':>7} {'rays/s':>8} {'render s/frame':>15}")
    for name, r in rows.items():
        print(f"{name:<10} {r['psnr_heldin']:>13.2f} {r['psnr_rays']:>9.2f} {r['s_per_step']:>7.3f} "
              f"{r['rays_per_s']:>8.0f} {r['render_s_per_frame']:>15.3f}")
    a, t = rows["anchored"], rows["triplane"]
    print(f"ratio triplane/anchored: held-in PSNR {t['psnr_heldin'] / a['psnr_heldin']:.3f} "
          f"({t['psnr_heldin'] - a['psnr_heldin']:+.2f} dB), time per step {t['s_per_step'] / a['s_per_step']:.3f}")
    print(f"CPU-preset training throughput (anchored): {a['rays_per_s']:.0f} rays/s")


if __name__ == "__main__":
    main()
