"""The prior's nearest-anchor search: the k-d tree (CPU) against the distance matrix (``training.prior.anchors``).

Every sample point of the avatar prior looks up its k nearest mesh anchors. On a
CPU the ids come from a k-d tree per frame; on an accelerator from chunks of the
points x anchors distance matrix and ``topk`` (the CPU's method before the tree).
This benchmark runs both on the shapes of a CPU-preset render (4 frames of 64 x 64
rays x 24 samples, 1024 anchors, k = 4), the matrix at the old chunk limits
(2^25 entries, 128 MB: the first baseline; 2^20: the second) and the tree on one
thread and on torch's threads, checks the share of ids equal to the first
baseline's (they differ only in near-ties the matrix's rounding orders
differently), and prints the time ratio baseline / method (above 1: faster).

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


def matrix_search(points: torch.Tensor, surface: torch.Tensor, k: int, entries: int, repeat: int):
    saved = anchors._MAX_DISTANCE_ENTRIES
    anchors._MAX_DISTANCE_ENTRIES = entries
    try:
        return best_of(repeat, lambda: anchors._matrix_search(points, surface, k))
    finally:
        anchors._MAX_DISTANCE_ENTRIES = saved


def tree_search(points: torch.Tensor, surface: torch.Tensor, k: int, threads: int, repeat: int):
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return best_of(repeat, lambda: anchors.nearest_anchors(points, surface, k).index)
    finally:
        torch.set_num_threads(saved)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=4, help="frames per search (a render batch)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per setting; the fastest counts")
    args = parser.parse_args()

    points, surface = head_like(args.frames, 64 * 64 * 24, 1024)
    threads = torch.get_num_threads()
    print(f"{args.frames} frames x {points.shape[1]} points, {surface.shape[1]} anchors, k=4, {threads} threads")
    base_s, base_index = matrix_search(points, surface, 4, BASELINE_ENTRIES, args.repeat)
    runs = [("matrix, 2^25-entry chunks", base_s, base_index),
            ("matrix, 2^20-entry chunks", *matrix_search(points, surface, 4, 1 << 20, args.repeat)),
            ("k-d tree, 1 thread", *tree_search(points, surface, 4, 1, args.repeat))]
    if threads > 1:
        runs.append((f"k-d tree, {threads} threads", *tree_search(points, surface, 4, threads, args.repeat)))
    print(f"{'method':>28} {'seconds':>8} {'baseline/this':>14} {'same ids':>9}")
    for name, seconds, index in runs:
        same = (index == base_index).double().mean().item()
        print(f"{name:>28} {seconds:>8.3f} {base_s / seconds:>14.2f} {same:>9.5f}")


if __name__ == "__main__":
    main()
