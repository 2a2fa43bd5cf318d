"""Where the anchored prior's CPU training time goes, and how many of its samples are wasted.

Trains the CPU preset (anchored) for a few steps with the exhaustive sampler (the one
before the faster prior, ``benchmarks.prior.BEFORE``) and with the default fast
one, and prints for each, from the same run: seconds per step and rays per second, the
share of training time spent in the nearest-anchor lookup (the anchored field's inner
loop: k-d tree search or neighbour table, gather, offsets), and the share of coarse and
fine samples that lie farther than ``max_distance`` from every anchor (their density is
exactly zero: field work spent on nothing). Data as ``benchmarks.prior``: ``--index``,
else the demo's index, else 12 simulated subjects taken through the pipeline.

    .venv/bin/python -m benchmarks.prior_profile [--index PATH] [--iterations 40]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.prior import BEFORE, DEMO_INDEX, simulated_index


def profile(index: Path, iterations: int, out: Path, changes: dict) -> dict[str, float]:
    import torch

    import training.prior.model as model
    from fitting.face_models import load_face_model
    from training.prior.anchors import NeighbourGrid
    from training.prior.config import preset
    from training.prior.dataset import prior_data_from_index
    from training.prior.train import train_prior

    config = preset("cpu", backbone="anchored", iterations=iterations, log_every=max(1, iterations // 4),
                    occupancy_every=iterations + 1, **changes)  # one grid refresh, at step 0: not a field call here
    looking = {"seconds": 0.0}
    shares: list[float] = []  # per field call, coarse then fine: share of points without support
    lookup, table = model.nearest_anchors, NeighbourGrid.search

    def measured_lookup(points, anchor_points, k, index=None):
        start = time.perf_counter()
        neighbours = lookup(points, anchor_points, k, index)
        looking["seconds"] += time.perf_counter() - start
        with torch.no_grad():
            shares.append(float((neighbours.nearest > config.max_distance).float().mean()))
        return neighbours

    def measured_table(self, *args):
        start = time.perf_counter()
        index = table(self, *args)
        looking["seconds"] += time.perf_counter() - start
        return index

    data = prior_data_from_index(index)
    model.nearest_anchors, NeighbourGrid.search = measured_lookup, measured_table
    try:
        result = train_prior(config, data, load_face_model("builtin", None, None), out, resume=False, log=None)
    finally:
        model.nearest_anchors, NeighbourGrid.search = lookup, table
    shares = shares[1:] if config.sampler == "occupancy" else shares  # the step-0 refresh
    coarse, fine = shares[0::2], shares[1::2] if config.fine_samples else []
    return {"s_per_step": result.train_seconds / iterations, "rays_per_s": result.rays_per_second,
            "lookup_share": looking["seconds"] / result.train_seconds,
            "coarse_unsupported": sum(coarse) / max(1, len(coarse)),
            "fine_unsupported": sum(fine) / max(1, len(fine))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", help="dataset/index.parquet to train on")
    parser.add_argument("--iterations", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        index = Path(args.index) if args.index else DEMO_INDEX if DEMO_INDEX.is_file() else simulated_index(Path(tmp))
        runs = {name: profile(index, args.iterations, Path(tmp) / name, changes)
                for name, changes in (("before", BEFORE), ("fast", {}))}
    print(f"data: {index}; {args.iterations} steps, CPU preset, anchored field")
    for name, r in runs.items():
        print(f"{name}: {r['s_per_step']:.3f} s/step, {r['rays_per_s']:.0f} rays/s")
        print(f"  nearest-anchor lookup (search, gather, offsets; forward only): {100 * r['lookup_share']:.0f} % of "
              "training time")
        print(f"  samples farther than max_distance from every anchor (density exactly 0): "
              f"{100 * r['coarse_unsupported']:.0f} % of coarse, {100 * r['fine_unsupported']:.0f} % of fine")


if __name__ == "__main__":
    main()
