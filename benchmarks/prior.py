"""The avatar prior's speed and quality on the CPU preset: the fast sampler against the exhaustive one,
and the anchored field against the tri-plane at equal steps and at equal wall-clock.

All runs train on the same training split with the same seed, rays, optimiser and
number of steps; only what the row names differs:

- ``anchored before``: the prior as it was before the faster prior was built, the baseline:
  the exhaustive sampler (a sphere around the mesh, 24 + 24 samples all with gradient, exact
  k-d tree neighbours), k encoded offsets per point, a float32 decoder;
- ``anchored exhaustive``: the same sampler with today's field (one encoded mean offset, the
  decoder in bfloat16 where the CPU has it natively): what the field's arithmetic alone buys;
- ``anchored fast``: the default (rays bounded by the learned occupancy grid, rays that
  cross no occupied cell not sampled, 16 + 8 samples with gradient at the fine ones only,
  the neighbour table);
- ``triplane fast``: the tri-plane backbone with the fast sampler, the same steps;
- ``triplane wall-clock``: as many tri-plane steps as fit in ``anchored fast``'s training time.

Per row: held-in PSNR (whole rendered frames vs the captured crops, the same
``--frames`` training frames for every row), PSNR on the last training rays, seconds
per step, rays per second and seconds per rendered 64 px frame; ``before`` and ``fast`` also with
seeds 1 .. ``--seeds`` - 1 (rows ``s1`` ...). Then the ratios (seed 0, and per seed with their mean), and the
fast-trained anchored prior rendered again with the exhaustive sampler at twice the
samples (same weights): the PSNR between the two renders and the held-in PSNR of each.
Data: ``--index`` (e.g. the demo's ``workspace_data/derived/dataset/index.parquet``), else
the demo's index when it exists, else 12 simulated subjects at 384 px taken through the
pipeline into a temporary folder (about 3 minutes).

    .venv/bin/python -m benchmarks.prior [--index PATH] [--iterations N] [--frames N] [--seeds N]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

from capture_schema import derived_layout as layout

DEMO_INDEX = Path("workspace_data/derived") / layout.INDEX
#: The sampler before the occupancy grid: what "today" meant when the faster prior was built.
EXHAUSTIVE = {"sampler": "sphere", "neighbour_search": "tree", "coarse_samples": 24, "fine_samples": 24}
#: The field's arithmetic before it: k encoded offsets per point, a float32 decoder.
FIELD_BEFORE = {"offset_encoding": "each", "decoder_precision": "float32"}
BEFORE = {**EXHAUSTIVE, **FIELD_BEFORE}


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


def held_in(model, face_model, data, frames: int):
    """(mean PSNR, renders, seconds per frame) of the first ``frames`` training frames."""
    import torch

    from training.prior.dataset import frame_loader
    from training.prior.evaluate import image_psnr, render_batch, target_images

    loader = frame_loader(data, face_model, model.config.with_changes(num_workers=0), shuffle=False, rank=0,
                          world_size=1)
    scores, renders, seconds = [], [], 0.0
    for batch in loader:
        start = time.perf_counter()
        rendered = render_batch(model, face_model, batch)
        seconds += time.perf_counter() - start
        scores += image_psnr(rendered, target_images(batch)).tolist()
        renders.append(rendered)
        if len(scores) >= frames:
            break
    return sum(scores[:frames]) / frames, torch.cat(renders)[:frames], seconds / len(scores)


def train(name: str, changes: dict, iterations: int, frames: int, data, face_model, out: Path) -> dict:
    from training.prior.checkpoint import load_prior
    from training.prior.config import preset
    from training.prior.train import train_prior

    config = preset("cpu", iterations=iterations, log_every=max(1, iterations // 10), **changes)
    print(f"training {name}: {iterations} steps ...", flush=True)
    result = train_prior(config, data, face_model, out / name, resume=False, log=None)
    model, _ = load_prior(result.checkpoint)
    psnr, renders, render_s = held_in(model, face_model, data, frames)
    return {"model": model, "renders": renders, "psnr_heldin": psnr, "psnr_rays": result.final["psnr"],
            "steps": iterations, "train_s": result.train_seconds, "s_per_step": result.train_seconds / iterations,
            "rays_per_s": result.rays_per_second, "render_s_per_frame": render_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", help="dataset/index.parquet to train on")
    parser.add_argument("--iterations", type=int, default=300, help="steps per run")
    parser.add_argument("--frames", type=int, default=24, help="training frames rendered for the held-in PSNR")
    parser.add_argument("--seeds", type=int, default=2,
                        help="seeds of the before and fast anchored runs (their ratio is also given per seed and "
                             "averaged: one seed's held-in PSNR varies by about 0.1 dB)")
    args = parser.parse_args()

    import torch

    from fitting.face_models import load_face_model
    from training.prior.dataset import prior_data_from_index
    from training.prior.model import with_sampler

    face_model = load_face_model("builtin", None, None)
    with tempfile.TemporaryDirectory() as tmp:
        index = Path(args.index) if args.index else DEMO_INDEX if DEMO_INDEX.is_file() else simulated_index(Path(tmp))
        print(f"data: {index}; {args.iterations} steps, CPU preset, {torch.get_num_threads()} threads")
        data = prior_data_from_index(index)
        out, n, f = Path(tmp), args.iterations, args.frames
        rows = {"anchored before": train("anchored before", BEFORE, n, f, data, face_model, out),
                "anchored exhaustive": train("anchored exhaustive", EXHAUSTIVE, n, f, data, face_model, out),
                "anchored fast": train("anchored fast", {}, n, f, data, face_model, out),
                "triplane fast": train("triplane fast", {"backbone": "triplane"}, n, f, data, face_model, out)}
        for seed in range(1, args.seeds):
            for name, changes in (("anchored before", BEFORE), ("anchored fast", {})):
                rows[f"{name} s{seed}"] = train(f"{name} s{seed}", {**changes, "seed": seed}, n, f, data, face_model,
                                                out)
        fast = rows["anchored fast"]
        equal_time = max(1, round(fast["train_s"] / rows["triplane fast"]["s_per_step"]))
        rows["triplane wall-clock"] = train("triplane wall-clock", {"backbone": "triplane"}, equal_time, f, data,
                                            face_model, out)
        reference = with_sampler(fast["model"], **{**EXHAUSTIVE, "coarse_samples": 48, "fine_samples": 48,
                                                   "decoder_precision": "float32"})
        ref_psnr, ref_renders, ref_s = held_in(reference, face_model, data, f)
    print(f"\n{'run':<21} {'steps':>6} {'held-in PSNR':>13} {'ray PSNR':>9} {'s/step':>7} {'rays/s':>8} "
          f"{'render s/frame':>15}")
    for name, r in rows.items():
        print(f"{name:<21} {r['steps']:>6} {r['psnr_heldin']:>13.2f} {r['psnr_rays']:>9.2f} {r['s_per_step']:>7.3f} "
              f"{r['rays_per_s']:>8.0f} {r['render_s_per_frame']:>15.3f}")
    print()
    for new, old in (("anchored fast", "anchored before"), ("anchored exhaustive", "anchored before"),
                     ("anchored fast", "anchored exhaustive")):
        a, b = rows[new], rows[old]
        print(f"{new.split()[1]} / {old.split()[1]} (anchored): training rays/s x{a['rays_per_s'] / b['rays_per_s']:.2f}, "
              f"held-in PSNR {a['psnr_heldin'] - b['psnr_heldin']:+.2f} dB, render time per frame "
              f"x{b['render_s_per_frame'] / a['render_s_per_frame']:.2f} faster")
    if args.seeds > 1:
        suffixes = [""] + [f" s{seed}" for seed in range(1, args.seeds)]
        pairs = [(rows[f"anchored fast{x}"], rows[f"anchored before{x}"]) for x in suffixes]
        speed = [a["rays_per_s"] / b["rays_per_s"] for a, b in pairs]
        gain = [a["psnr_heldin"] - b["psnr_heldin"] for a, b in pairs]
        print(f"fast / before over seeds 0-{args.seeds - 1}: training rays/s x{sum(speed) / len(speed):.2f} "
              f"({', '.join(f'x{v:.2f}' for v in speed)}), held-in PSNR {sum(gain) / len(gain):+.2f} dB "
              f"({', '.join(f'{v:+.2f}' for v in gain)})")
    for name in ("triplane fast", "triplane wall-clock"):
        t = rows[name]
        print(f"{name} - anchored fast: held-in PSNR {t['psnr_heldin'] - fast['psnr_heldin']:+.2f} dB "
              f"({t['steps']} vs {fast['steps']} steps, {t['train_s']:.0f} vs {fast['train_s']:.0f} s)")
    mse = float(((fast["renders"] - ref_renders) ** 2).mean())
    print(f"anchored fast weights, exhaustive render (sphere, tree, 48 + 48 samples, float32): {ref_s:.3f} s/frame, held-in "
          f"PSNR {ref_psnr:.2f} dB; fast render {fast['render_s_per_frame']:.3f} s/frame, {fast['psnr_heldin']:.2f} dB "
          f"({fast['psnr_heldin'] - ref_psnr:+.2f} dB); PSNR between the two renders "
          f"{-10 * math.log10(max(mse, 1e-12)):.1f} dB")


if __name__ == "__main__":
    main()
