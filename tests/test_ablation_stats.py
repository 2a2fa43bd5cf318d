"""``training.ablation.stats`` on score tables whose answer is known by construction, not by the code."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from training.ablation.stats import bootstrap_interval, frames_by_seed, mean_interval, paired_difference


def scores(values: np.ndarray, seeds: tuple[int, ...] = (0, 1), subjects: int = 2) -> pd.Series:
    """Per-(seed, subject_id, key) PSNR from a (seeds x frames) array; frames are split over ``subjects``."""
    values = np.atleast_2d(values)
    n = values.shape[1]
    frames = [(f"s{f % subjects}", f"s{f % subjects}/e{f}/c") for f in range(n)]
    index = pd.MultiIndex.from_tuples([(seed, *frame) for seed in seeds for frame in frames],
                                      names=["seed", "subject_id", "key"])
    return pd.Series(values.reshape(-1), index=index, name="psnr")


def difficulty(n: int, seed: int = 1) -> np.ndarray:
    """Per-frame PSNR of a reference configuration: frames differ by several dB (profile views, open mouths)."""
    return 18.0 + np.random.default_rng(seed).normal(0.0, 3.0, n)


def test_a_constant_two_db_shift_is_distinguishable() -> None:
    rng = np.random.default_rng(7)
    base = difficulty(30)
    b = np.stack([base, base + 0.2])  # seed 1 a little better overall: shared by both configurations
    noise = rng.normal(0.0, 0.3, b.shape)
    a = b + 2.0 + noise - noise.mean(axis=1, keepdims=True)  # centred: the sample's gap is exactly 2 dB per seed
    d = paired_difference(scores(a), scores(b))
    assert d.n_frames == 30 and sorted(d.per_seed) == [0, 1]
    assert d.ci_low < 2.0 < d.ci_high and d.ci_low > 0
    assert d.ci_high - d.ci_low < 0.5  # 0.3 dB of noise over 30 frames and 2 seeds: a tight interval
    assert d.mean == pytest.approx(2.0) and d.per_seed == pytest.approx({0: 2.0, 1: 2.0})
    assert d.seeds_agree and d.distinguishable
    flipped = paired_difference(scores(b), scores(a))  # the other way round: the same verdict, the sign flips
    assert flipped.mean == pytest.approx(-d.mean) and flipped.ci_high < 0 and flipped.distinguishable


def test_identical_scores_differ_by_nothing() -> None:
    table = scores(np.stack([difficulty(20), difficulty(20, seed=2)]))
    d = paired_difference(table, table.copy())
    assert (d.mean, d.ci_low, d.ci_high) == (0.0, 0.0, 0.0)
    assert d.per_seed == {0: 0.0, 1: 0.0} and d.n_frames == 20
    assert not d.seeds_agree and not d.distinguishable


def test_seeds_that_disagree_in_sign_are_not_distinguishable_even_when_the_interval_excludes_zero() -> None:
    rng = np.random.default_rng(3)
    base = difficulty(40)
    b = np.stack([base, base])
    # Seed 0's A is 3 dB better on every frame, seed 1's A 1 dB worse: pooled +1 dB, tight over frames.
    a = b + np.array([[3.0], [-1.0]]) + rng.normal(0.0, 0.2, b.shape)
    d = paired_difference(scores(a), scores(b))
    assert d.mean == pytest.approx(1.0, abs=0.1) and d.ci_low > 0  # the frames alone would call it real
    assert d.per_seed[0] == pytest.approx(3.0, abs=0.15) and d.per_seed[1] == pytest.approx(-1.0, abs=0.15)
    assert not d.seeds_agree and not d.distinguishable


def test_pairing_sees_a_gap_that_overlapping_means_hide() -> None:
    """Frames differ by ~3 dB, configurations by 0.5 dB on every frame: per-configuration intervals overlap,
    the paired difference does not."""
    rng = np.random.default_rng(11)
    b = np.stack([difficulty(30), difficulty(30)])
    a = b + 0.5 + rng.normal(0.0, 0.1, b.shape)
    mine, theirs = mean_interval(scores(a)), mean_interval(scores(b))
    assert mine.ci_low < theirs.ci_high  # unpaired, the two would look alike
    d = paired_difference(scores(a), scores(b))
    assert d.ci_low > 0.3 and d.ci_high < 0.7 and d.distinguishable


@pytest.mark.parametrize("n", [30, 200])
def test_bootstrap_half_width_matches_the_normal_formula(n: int) -> None:
    values = np.random.default_rng(n).normal(20.0, 2.0, n)
    expected = 1.96 * values.std(ddof=1) / math.sqrt(n)  # the textbook 95% interval of a mean of normal draws
    low, high = bootstrap_interval(values)
    assert (high - low) / 2 == pytest.approx(expected, rel=0.25)
    assert low < values.mean() < high
    table = scores(values, seeds=(0,))
    interval = mean_interval(table)  # one seed: the frame value is the score itself (frames in sorted order)
    assert (interval.ci_low, interval.ci_high) == bootstrap_interval(frames_by_seed(table)[0].to_numpy())
    assert interval.mean == pytest.approx(values.mean())
    d = paired_difference(scores(values + 1.0, seeds=(0,)), scores(np.ones(n), seeds=(0,)))
    assert (d.ci_high - d.ci_low) / 2 == pytest.approx(expected, rel=0.25)


def test_intervals_are_reproducible() -> None:
    table = scores(np.stack([difficulty(25), difficulty(25, seed=2)]))
    first, again = mean_interval(table), mean_interval(table.sample(frac=1.0, random_state=0))  # row order too
    assert first == again
    assert bootstrap_interval(np.arange(25.0)) == bootstrap_interval(np.arange(25.0))
    assert bootstrap_interval(np.arange(25.0), rng_seed=1) != bootstrap_interval(np.arange(25.0))


def test_mean_interval_averages_seeds_per_frame() -> None:
    a = np.stack([np.full(10, 14.0), np.full(10, 16.0)]) + np.linspace(-1, 1, 10)
    interval = mean_interval(scores(a))
    assert interval.mean == pytest.approx(15.0) and interval.per_seed == pytest.approx({0: 14.0, 1: 16.0})
    assert interval.n_frames == 10 and interval.ci_low < 15.0 < interval.ci_high


def test_only_frames_both_scored_under_every_seed_count() -> None:
    b = np.stack([difficulty(12), difficulty(12)])
    a_scores = scores(b + 1.0)
    a_scores = a_scores.drop(a_scores.index[:2])  # seed 0 lacks A's first two frames
    b_scores = scores(b).drop(scores(b).index[-1])  # seed 1 lacks B's last frame
    assert len(frames_by_seed(a_scores)) == 10 and len(frames_by_seed(b_scores)) == 11
    d = paired_difference(a_scores, b_scores)
    assert d.n_frames == 9 and d.mean == pytest.approx(1.0)
    only_seed_0 = paired_difference(scores(b[:1] + 1.0, seeds=(0,)), scores(b))  # seeds both have: seed 0
    assert list(only_seed_0.per_seed) == [0] and only_seed_0.mean == pytest.approx(1.0)


def test_too_few_frames_give_no_interval_and_no_verdict() -> None:
    d = paired_difference(scores(np.array([[20.0], [21.0]])), scores(np.array([[10.0], [10.0]])))
    assert d.n_frames == 1 and d.mean == pytest.approx(10.5)
    assert math.isnan(d.ci_low) and math.isnan(d.ci_high) and not d.distinguishable
    none = paired_difference(scores(np.ones((2, 3))), scores(np.ones((2, 3)), seeds=(5, 6)))
    assert none.n_frames == 0 and math.isnan(none.mean) and not none.distinguishable


def test_scores_must_be_indexed_by_seed_and_frame() -> None:
    with pytest.raises(ValueError, match="seed.*subject_id.*key"):
        mean_interval(scores(np.ones((2, 3))).reset_index(level="seed", drop=True))
