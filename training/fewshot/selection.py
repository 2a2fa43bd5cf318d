"""Which K images a held-out subject is adapted on, and which frames score the result.

The input rule, documented and seeded so every method and every K sees the same images:

1. the **frontal neutral** frame first: the expression named ``neutral`` (else the
   frame set with the smallest 3DMM expression coefficients) seen by the camera
   that looks most directly into the fitted face;
2. then, in a seeded random order, frames whose camera *and* expression are both
   new to the inputs so far (falling back to a new camera or a new expression,
   then to anything), so a few images spread over views and expressions.

The inputs of a smaller K are the first images of a larger K (nested), and the
evaluation frames are the same for every K: every frame that is not an input of
the largest K, or a seeded subset of them that still covers every camera and
every expression.
"""

from __future__ import annotations

import random
from typing import Sequence

import numpy as np

NEUTRAL = "neutral"

#: The input rule in one sentence, for reports (the module docstring explains it at length).
INPUT_RULE = ("the frontal neutral frame first (the camera looking most directly into the fitted face), then, "
              "in a seeded random order, frames whose camera and expression are both new to the inputs so far "
              "(falling back to a new camera or a new expression, then to anything); the inputs of a smaller K "
              "are the first images of a larger K, and the scored frames are the same for every K.")


def _forward_alignment(frame: dict) -> float:
    """Cosine between the camera's viewing direction and the face's forward direction (-1 = head-on)."""
    R = np.asarray(frame["R"], np.float64)
    head = np.asarray(frame["rotation"], np.float64)
    view = R.T @ np.array([0.0, 0.0, 1.0])  # the camera looks along its +z, in world coordinates
    forward = head @ np.array([0.0, 0.0, -1.0])  # model +z points to the back of the head
    return float(view @ forward)


def neutral_expression(frames: Sequence[dict]) -> str:
    """``neutral`` when captured, else the expression whose fitted coefficients are smallest."""
    names = {f["expression_name"] for f in frames}
    if NEUTRAL in names:
        return NEUTRAL
    norms: dict[str, list[float]] = {}
    for f in frames:
        norms.setdefault(f["expression_name"], []).append(float(np.linalg.norm(np.asarray(f["expression"]))))
    return min(sorted(norms), key=lambda name: float(np.mean(norms[name])))


def _take_most_novel(pool: list[dict], chosen: Sequence[dict]) -> tuple[dict, int]:
    """Remove and return the first frame of ``pool`` with the most of (new camera, new expression)."""
    cams = {f["camera_id"] for f in chosen}
    exprs = {f["expression_name"] for f in chosen}

    def novelty(f: dict) -> int:
        return (f["camera_id"] not in cams) + (f["expression_name"] not in exprs)

    best = max(novelty(f) for f in pool)
    pick = next(f for f in pool if novelty(f) == best)
    pool.remove(pick)
    return pick, best


def choose_inputs(frames: Sequence[dict], k: int, seed: int) -> list[str]:
    """Keys of the ``k`` input frames, in order (see the module docstring for the rule)."""
    if k < 1:
        raise ValueError(f"K must be >= 1, got {k}")
    if len(frames) <= k:
        raise ValueError(f"K={k} inputs leave no frame to evaluate on ({len(frames)} usable frames)")
    neutral = neutral_expression(frames)
    candidates = [f for f in frames if f["expression_name"] == neutral]
    first = min(candidates, key=lambda f: (_forward_alignment(f), f["key"]))
    chosen = [first]
    rest = sorted((f for f in frames if f is not first), key=lambda f: f["key"])
    random.Random(seed).shuffle(rest)
    while len(chosen) < k:
        chosen.append(_take_most_novel(rest, chosen)[0])
    return [f["key"] for f in chosen]


def choose_eval_frames(frames: Sequence[dict], exclude: Sequence[str], count: int, seed: int) -> list[str]:
    """Keys of the frames to score: all non-inputs (``count`` 0), else ``count`` of them covering every
    camera and expression first (seeded)."""
    excluded = set(exclude)
    pool = sorted((f for f in frames if f["key"] not in excluded), key=lambda f: f["key"])
    if not pool:
        raise ValueError("no frame left to evaluate on")
    if count == 0 or count >= len(pool):
        return [f["key"] for f in pool]
    random.Random(seed + 1).shuffle(pool)
    chosen: list[dict] = []
    round_start = 0  # every camera and expression covered: the next round starts afresh
    while len(chosen) < count:
        pick, novelty = _take_most_novel(pool, chosen[round_start:])
        if novelty == 0 and round_start < len(chosen):
            pool.insert(0, pick)
            round_start = len(chosen)
            continue
        chosen.append(pick)
    return [f["key"] for f in chosen]
