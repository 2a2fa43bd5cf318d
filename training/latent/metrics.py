"""The latent-space metrics, numpy only (no model, no detector): what the reports and the ablation quote.

Images are float arrays (N, H, W, C) in [0, 1]; an image distance is the root mean
square pixel difference over every pixel and channel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def image_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Root mean square difference of two images (0 = identical, 1 = black vs white everywhere)."""
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


def step_distances(images: np.ndarray) -> np.ndarray:
    """(N - 1,) image distance between each step of an interpolation and the next."""
    images = np.asarray(images)
    if len(images) < 2:
        raise ValueError(f"an interpolation needs at least 2 images, got {len(images)}")
    return np.array([image_distance(images[i], images[i + 1]) for i in range(len(images) - 1)])


def smoothness(images: np.ndarray) -> float:
    """Smoothness: the largest step-to-step image distance over the mean step (1.0 = perfectly even steps,
    larger = the rendering jumps somewhere along the path); NaN when nothing changes along the path."""
    steps = step_distances(images)
    mean = steps.mean()
    return float(steps.max() / mean) if mean > 0 else float("nan")


@dataclass(frozen=True)
class Profile:
    """Each image's distance to the first and to the last image of an interpolation."""

    to_start: np.ndarray
    to_end: np.ndarray

    @property
    def monotonic(self) -> bool:
        """True when the distance to the start never falls and the distance to the end never rises."""
        return bool(np.all(np.diff(self.to_start) >= 0) and np.all(np.diff(self.to_end) <= 0))


def distance_profile(images: np.ndarray) -> Profile:
    """Distances of every step to both ends: a path that moves from one face to the other rises / falls."""
    images = np.asarray(images)
    return Profile(np.array([image_distance(x, images[0]) for x in images]),
                   np.array([image_distance(x, images[-1]) for x in images]))


def nearest_distances(codes: np.ndarray, reference: np.ndarray, exclude_self: bool = False) -> np.ndarray:
    """(N,) Euclidean distance of each code to its nearest row of ``reference`` (itself excluded when
    ``codes`` is ``reference`` and ``exclude_self``)."""
    codes, reference = np.atleast_2d(np.asarray(codes, np.float64)), np.atleast_2d(np.asarray(reference, np.float64))
    d = np.linalg.norm(codes[:, None, :] - reference[None, :, :], axis=-1)
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    return d.min(axis=1)


def code_spread(training: np.ndarray) -> float:
    """Spread of the training codes: the median distance from a training code to its nearest other one
    (NaN with fewer than 2 codes)."""
    training = np.atleast_2d(np.asarray(training, np.float64))
    if len(training) < 2:
        return float("nan")
    return float(np.median(nearest_distances(training, training, exclude_self=True)))


def coverage(held_out: np.ndarray, training: np.ndarray) -> np.ndarray:
    """Coverage: each held-out code's distance to the nearest training code over the training codes' spread
    (``code_spread``): <= 1 means a new face lands as close to the training set as training faces are to
    each other, >> 1 means it lands where the prior has seen nobody (NaN with fewer than 2 training codes)."""
    spread = code_spread(training)
    near = nearest_distances(held_out, training)
    return near / spread if spread > 0 else np.full(len(near), np.nan)


def landmark_nme(detected: np.ndarray, projected: np.ndarray, eye_rows: tuple[int, int]) -> float:
    """Landmark agreement: the median distance between detected and projected landmarks (rows aligned) over
    the projected outer-eye-corner distance (rows ``eye_rows``); the detector's own convention."""
    detected, projected = np.asarray(detected, np.float64), np.asarray(projected, np.float64)
    eye = float(np.linalg.norm(projected[eye_rows[0]] - projected[eye_rows[1]]))
    if not eye > 0 or not np.isfinite(detected).all():
        return float("nan")
    return float(np.median(np.linalg.norm(detected - projected, axis=1)) / eye)


def share(flags: np.ndarray) -> float:
    """Share of True among ``flags`` (NaN when empty)."""
    flags = np.asarray(flags, bool)
    return float(flags.mean()) if flags.size else float("nan")
