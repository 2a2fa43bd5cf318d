"""Is configuration A's few-shot PSNR really above B's, or is the gap noise? Paired bootstrap over frames.

Why paired: every configuration and repeat is scored on the same held-out frames (the
few-shot config does not change with them), and frames differ far more from one another
(a profile view, a wide-open mouth) than configurations do, so the question is answered
on per-frame differences A - B, where the frame's own difficulty cancels.

Why seeds: one trained prior mixes the configuration's effect with the luck of one subset
draw and one initialisation. A frame's value is the mean over the repeat seeds (of A - B,
or of a configuration's PSNR); resampling frames of that mean is resampling the same
frames for every seed. ``distinguishable`` also asks every seed's own mean difference to
point the same way, so a gap carried by one lucky repeat is not called real.

Why the percentile bootstrap: no normality assumption on per-frame differences (a few
failed adaptations make them skewed), and a fixed RNG seed keeps reports byte-identical.
Frames of one subject are not independent draws; with a handful of held-out subjects the
interval describes these subjects' frames, not the population of subjects.

Pure numpy (and pandas for aligning frames): no torch, cheap to call from reports and tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

CONFIDENCE = 0.95
RESAMPLES = 2000
RNG_SEED = 0
#: Index levels of the per-frame scores every function takes: repeat seed, then the frame.
LEVELS = ("seed", "subject_id", "key")
_MAX_DRAWS = 2_000_000  # resampled indices held at once (memory bound for many frames)


@dataclass(frozen=True)
class MeanInterval:
    """A mean over frames (each frame averaged over seeds) with its bootstrap interval and per-seed means."""

    mean: float
    ci_low: float
    ci_high: float
    per_seed: dict[int, float] = field(default_factory=dict)
    n_frames: int = 0

    def excludes_zero(self) -> bool:
        return bool(self.ci_low > 0 or self.ci_high < 0)


@dataclass(frozen=True)
class PairedDifference(MeanInterval):
    """A - B per frame, averaged over seeds, then over frames; ``distinguishable`` is the verdict."""

    seeds_agree: bool = False
    """Every per-seed mean difference has the sign of the overall mean (and none is 0)."""
    distinguishable: bool = False
    """The interval excludes 0 and the seeds agree: a difference the ablation can stand behind."""


def bootstrap_interval(values: np.ndarray, resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                       rng_seed: int = RNG_SEED) -> tuple[float, float]:
    """The percentile interval of the mean of ``values`` over ``resamples`` draws of them with replacement: where
    the mean would land, with probability ``confidence``, for another sample of frames like these."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n < 2:  # one frame says nothing about the spread
        return float("nan"), float("nan")
    rng = np.random.default_rng(rng_seed)
    means = np.empty(resamples)
    chunk = max(1, _MAX_DRAWS // n)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        means[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def frames_by_seed(scores: pd.Series) -> pd.DataFrame:
    """Rows (subject_id, key), one column per seed (sorted): the frames scored under every seed, NaN dropped."""
    if list(scores.index.names) != list(LEVELS):
        raise ValueError(f"per-frame scores must be indexed by {LEVELS}, got {scores.index.names}")
    table = scores.dropna().groupby(level=list(LEVELS)).mean().unstack("seed")
    return table.reindex(columns=sorted(table.columns)).dropna()


def mean_interval(scores: pd.Series, resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                  rng_seed: int = RNG_SEED) -> MeanInterval:
    """A configuration's mean over frames (frame value = mean over seeds) with a ``confidence`` bootstrap interval:
    the range its mean would fall in, that often, if other frames like these had been held out."""
    table = frames_by_seed(scores)
    frame_values = table.to_numpy().mean(axis=1)
    low, high = bootstrap_interval(frame_values, resamples, confidence, rng_seed)
    return MeanInterval(mean=float(frame_values.mean()) if len(frame_values) else float("nan"), ci_low=low,
                        ci_high=high, per_seed={int(s): float(table[s].mean()) for s in table.columns},
                        n_frames=len(table))


def paired_difference(a: pd.Series, b: pd.Series, resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                      rng_seed: int = RNG_SEED) -> PairedDifference:
    """Mean of A - B over the frames both scored under the seeds both have (frame value = mean over seeds) with a
    ``confidence`` bootstrap interval: if it excludes 0, a gap this large is unlikely to come from which frames
    happened to be held out; ``distinguishable`` also needs every seed to agree on the sign."""
    mine, theirs = frames_by_seed(a), frames_by_seed(b)
    seeds = [s for s in mine.columns if s in theirs.columns]
    mine, theirs = mine[seeds].align(theirs[seeds], join="inner", axis=0)
    diff = (mine - theirs).to_numpy()
    frame_values = diff.mean(axis=1) if seeds else np.empty(0)
    mean = float(frame_values.mean()) if len(frame_values) else float("nan")
    low, high = bootstrap_interval(frame_values, resamples, confidence, rng_seed)
    per_seed = {int(s): float(diff[:, j].mean()) if len(diff) else float("nan") for j, s in enumerate(seeds)}
    agree = bool(per_seed) and all(np.sign(v) == np.sign(mean) != 0 for v in per_seed.values())
    excludes = bool(low > 0 or high < 0)
    return PairedDifference(mean=mean, ci_low=low, ci_high=high, per_seed=per_seed, n_frames=len(frame_values),
                            seeds_agree=agree, distinguishable=excludes and agree)
