"""The prior's nearest-anchor search at different chunk sizes (``training.prior.anchors``).

Every sample point of the avatar prior looks up its k nearest mesh anchors: a
``cdist`` of a chunk of points against every anchor, then ``topk``. The chunk
bounds the distance matrix (points x anchors per chunk). This benchmark runs
``nearest_anchors`` on the shapes of a CPU-preset render (4 frames of 64 x 64
rays x 24 samples, 1024 anchors, k = 4) with the chunk limit at the old value
(2^25 entries, 128 MB of float32: the baseline), the current one and a few
others, checks that every setting finds the same neighbours as the baseline, and
prints the time ratio baseline / setting (above 1: faster than the baseline).

    .venv/bin/python -m benchmarks.anchor_search [--frames N] [--repeat N]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import best_of
from training.prior import anchors

BASELINE_ENTRIES = 1 << 25


def head_like(frames: int, points: int, n_anchors: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchors on a 9 cm sphere (a head's face) and sample points filling a 19 cm ball around it."""
    g = torch.Generator().manual_seed(seed)
    surface = torch.randn(frames, n_anchors, 3, generator=g)
    surface = 0.09 * surface / surface.norm(dim=-1, keepdim=True)
    samples = torch.randn(frames, points, 3, generator=g)
    radius = 0.19 * torch.rand(frames, points, 1, generator=g) ** (1 / 3)
    return radius * samples / samples.norm(dim=-1, keepdim=True), surface


def timed_search(points: torch.Tensor, surface: torch.Tensor, k: int, entries: int, repeat: int):
    saved = anchors._MAX_DISTANCE_ENTRIES
    anchors._MAX_DISTANCE_ENTRIES = entries
    try:
        return best_of(repeat, lambda: anchors.nearest_anchors(points, surface, k).index)
    finally:
        anchors._MAX_DISTANCE_ENTRIES = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=4, help="frames per search (a render batch)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per setting; the fastest counts")
    args = parser.parse_args()

    points, surface = head_like(args.frames, 64 * 64 * 24, 1024)
    current = anchors._MAX_DISTANCE_ENTRIES
    print(f"{args.frames} frames x {points.shape[1]} points, {surface.shape[1]} anchors, k=4, "
          f"{torch.get_num_threads()} threads; current chunk limit 2^{current.bit_length() - 1} entries")
    base_s, base_index = timed_search(points, surface, 4, BASELINE_ENTRIES, args.repeat)
    print(f"{'entries per chunk':>18} {'seconds':>8} {'baseline/this':>14} {'same neighbours':>16}")
    for power in (25, 22, 20, 18, 16):
        seconds, index = timed_search(points, surface, 4, 1 << power, args.repeat)
        mark = "  <- current" if 1 << power == current else ""
        print(f"{'2^' + str(power):>18} {seconds:>8.3f} {base_s / seconds:>14.2f} "
              f"{str(bool(torch.equal(index, base_index))):>16}{mark}")


if __name__ == "__main__":
    main()
