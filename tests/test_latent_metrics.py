"""The latent-space metrics and helpers on hand-made inputs (no trained prior): every expectation by hand.

Smoothness and the distance profile on image sequences blended between two random images with
chosen weights (an RMS step is then |w_i+1 - w_i| x rms(B - A), so the ratios are the weights');
the Gaussian against ``numpy.cov``; coverage on a three-code set whose nearest-neighbour distances
are read off a sketch; the mediapipe check on a simulated face with its true landmarks, moved ones
and a blank image.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.latent.analyse import choose_pairs
from training.latent.config import LatentConfig
from training.latent.metrics import (code_spread, coverage, distance_profile, image_distance, landmark_nme, share,
                                     smoothness, step_distances)
from training.latent.sample import fit_gaussian

RNG = np.random.default_rng(3)
A, B = RNG.random((6, 5, 3)), RNG.random((6, 5, 3))


def blended(weights) -> np.ndarray:
    return np.stack([A + w * (B - A) for w in weights])


def rms(x: np.ndarray) -> float:
    return float(np.sqrt((x ** 2).mean()))


def test_evenly_spaced_steps_are_perfectly_smooth() -> None:
    images = blended(np.linspace(0, 1, 6))
    assert step_distances(images) == pytest.approx([0.2 * rms(B - A)] * 5)
    assert smoothness(images) == pytest.approx(1.0)


def test_one_long_step_raises_smoothness_by_the_hand_computed_ratio() -> None:
    weights = [0.0, 0.1, 0.2, 0.6, 1.0]  # steps 0.1, 0.1, 0.4, 0.4: mean 0.25, max 0.4
    assert smoothness(blended(weights)) == pytest.approx(0.4 / 0.25)
    assert smoothness(blended([0.0, 0.05, 1.0])) == pytest.approx(0.95 / 0.5)
    assert np.isnan(smoothness(blended([0.3, 0.3, 0.3])))  # nothing moves: no smoothness to speak of
    with pytest.raises(ValueError, match="at least 2"):
        smoothness(blended([0.5]))


def test_image_distance_is_the_rms_pixel_difference() -> None:
    assert image_distance(A, B) == pytest.approx(rms(A - B))
    assert image_distance(np.zeros((2, 2, 3)), np.ones((2, 2, 3))) == 1.0


def test_distance_profile_rises_from_the_start_and_falls_to_the_end() -> None:
    profile = distance_profile(blended([0.0, 0.25, 0.5, 1.0]))
    assert profile.to_start == pytest.approx([0.0, 0.25 * rms(B - A), 0.5 * rms(B - A), rms(B - A)])
    assert profile.to_end == pytest.approx([rms(B - A), 0.75 * rms(B - A), 0.5 * rms(B - A), 0.0])
    assert profile.monotonic
    assert not distance_profile(blended([0.0, 0.6, 0.4, 1.0])).monotonic  # a step back towards the start


def test_gaussian_is_the_mean_and_numpy_covariance_and_samples_stay_in_the_codes_span() -> None:
    codes = RNG.normal(size=(5, 8))  # 5 codes in 8 dimensions: rank 4
    g = fit_gaussian(codes)
    assert g.mean == pytest.approx(codes.mean(axis=0))
    assert g.covariance == pytest.approx(np.cov(codes, rowvar=False))
    assert g.rank == 4
    assert g.factor @ g.factor.T == pytest.approx(np.cov(codes, rowvar=False))
    drawn = g.sample(200_000, seed=1)
    assert np.cov(drawn, rowvar=False) == pytest.approx(np.cov(codes, rowvar=False), abs=0.03)
    assert drawn.mean(axis=0) == pytest.approx(codes.mean(axis=0), abs=0.02)
    centred = codes - codes.mean(axis=0)
    basis, _, _ = np.linalg.svd(centred.T, full_matrices=False)
    residual = (drawn[:50] - codes.mean(axis=0)) - (drawn[:50] - codes.mean(axis=0)) @ basis[:, :4] @ basis[:, :4].T
    assert np.abs(residual).max() < 1e-9  # nothing along directions the codes never vary in
    assert np.array_equal(g.sample(3, seed=7), g.sample(3, seed=7))
    assert not np.array_equal(g.sample(3, seed=7), g.sample(3, seed=8))


def test_gaussian_of_one_code_is_that_code() -> None:
    g = fit_gaussian(np.array([[1.0, 2.0, 3.0]]))
    assert g.rank == 0 and np.array_equal(g.covariance, np.zeros((3, 3)))
    assert g.sample(4, seed=0) == pytest.approx(np.tile([1.0, 2.0, 3.0], (4, 1)))
    with pytest.raises(ValueError, match="no codes"):
        fit_gaussian(np.zeros((0, 3)))


def test_coverage_on_a_hand_made_code_set() -> None:
    training = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]])
    # Nearest other code: (0,0) -> 2, (2,0) -> 2, (0,4) -> 4 (the other is sqrt(20) ~ 4.47): median 2.
    assert code_spread(training) == pytest.approx(2.0)
    held_out = np.array([[1.0, 0.0], [0.0, 10.0], [2.0, 0.0]])  # nearest: 1 (two ways), 6 from (0,4), 0 (on a code)
    assert coverage(held_out, training) == pytest.approx([0.5, 3.0, 0.0])
    assert np.isnan(code_spread(training[:1])) and np.isnan(coverage(held_out, training[:1])).all()


def test_landmark_nme_is_median_distance_over_the_eye_corner_distance() -> None:
    projected = np.array([[0.0, 0.0], [10.0, 0.0], [5.0, 5.0], [5.0, 8.0], [5.0, 9.0]])
    detected = projected + np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [3.0, 4.0], [0.0, 2.0]])  # 1 1 0 5 2
    assert landmark_nme(detected, projected, (0, 1)) == pytest.approx(1.0 / 10.0)
    assert np.isnan(landmark_nme(np.full_like(projected, np.nan), projected, (0, 1)))


def test_share_and_pairs() -> None:
    assert share([True, False, True, True]) == 0.75 and np.isnan(share([]))
    assert choose_pairs(1, 3, 0) == [] and choose_pairs(2, 3, 0) == [(0, 1)]
    assert choose_pairs(3, 5, 0) == [(0, 1), (0, 2), (1, 2)]
    drawn = choose_pairs(10, 3, 4)
    assert len(set(drawn)) == 3 and all(a < b < 10 for a, b in drawn) and drawn == choose_pairs(10, 3, 4)


def test_latent_config_refuses_what_cannot_work() -> None:
    with pytest.raises(ValueError, match="detect_px must be >= 192"):
        LatentConfig(detect_px=128)
    with pytest.raises(ValueError, match="steps must be >= 2"):
        LatentConfig(steps=1)
    with pytest.raises(ValueError, match="unknown LatentConfig field"):
        LatentConfig.from_dict({"stepz": 3})


@pytest.fixture(scope="module")
def simulated_face() -> dict:
    """A simulated face (the built-in model's neutral subject, 384 px frontal camera) and its true landmarks."""
    from capture_simulator.render_face import project_landmarks, render_view
    from capture_simulator.rig import default_rig
    from capture_simulator.subjects import neutral_subject
    from fitting.face_models.builtin import builtin_face_model, builtin_texture

    model = builtin_face_model(np.float64)
    subject, expression, camera = neutral_subject(model), model.expression_preset("neutral"), default_rig(384)["mid_C00"]
    return {"image": render_view(model, builtin_texture(), subject, expression, None, None, camera, supersample=1),
            "landmarks": project_landmarks(model, subject, expression, None, None, camera)}


def test_mediapipe_check_passes_true_landmarks_and_fails_moved_ones_and_a_blank_image(simulated_face) -> None:
    from training.latent.plausibility import PLAUSIBLE_NME, check_faces

    image, truth = simulated_face["image"], simulated_face["landmarks"]
    eye = np.linalg.norm(truth[33] - truth[263])
    moved = truth + [0.0, 3 * PLAUSIBLE_NME * eye]  # every landmark 3 thresholds lower
    blank = np.full_like(image, 255)
    ids = np.arange(478)
    good, off, empty = check_faces([image, image, blank], [truth, moved, truth], ids, detect_px=384)
    assert good.detected and good.nme < PLAUSIBLE_NME and good.plausible
    assert off.detected and off.nme == pytest.approx(3 * PLAUSIBLE_NME, rel=0.25) and not off.plausible
    assert not empty.detected and not empty.plausible
    # Upsampled from 96 px, as the prior's 64-128 px renders are, the same face still passes.
    import cv2

    small = cv2.resize(image, (96, 96), interpolation=cv2.INTER_AREA)
    [upsampled] = check_faces([small], [(truth + 0.5) * 96 / 384 - 0.5], ids, detect_px=256)
    assert upsampled.plausible, upsampled


def test_adapted_codes_round_trip_and_refuse_another_prior() -> None:
    import torch

    from training.latent.codes import held_out_codes, read_adapted_codes, resolve_code, training_codes
    from training.latent.codes import adapted_codes_parquet
    from training.latent.scene import LatentInputError
    from training.prior.config import PriorConfig
    from training.prior.model import AvatarPrior

    config = PriorConfig(latent_dim=4, sampler="sphere", neighbour_search="tree")
    prior = AvatarPrior(config, 3, 2, np.arange(5))
    other = AvatarPrior(config, 3, 2, np.arange(5))
    with torch.no_grad():
        other.latents.weight.add_(1.0)
    records = [{"subject_id": s, "condition": "estimated", "method": m, "k": k, "code": np.full(4, v)}
               for s, v in (("s9", 1.0), ("s8", 2.0)) for m in ("latent_only", "prior") for k in (1, 3)]
    records[0]["code"] = np.full(4, 7.0)  # s9 at K=1: not the one coverage uses (the largest K)
    table = read_adapted_codes(adapted_codes_parquet(records, prior))
    assert list(table["subject_id"]) == ["s8"] * 4 + ["s9"] * 4  # sorted
    held = held_out_codes(table, prior)
    assert held.subjects == ("s8", "s9") and held.k == 3
    assert held.codes == pytest.approx(np.array([[2.0] * 4, [1.0] * 4]))
    codes = training_codes(prior)
    assert resolve_code("s9", ["a", "b", "c"], codes, held) == pytest.approx([1.0] * 4)
    assert resolve_code("b", ["a", "b", "c"], codes, held) == pytest.approx(codes[1])
    with pytest.raises(LatentInputError, match="training subjects of this prior are a, b, c; adapted held-out "
                                               "subjects: s8, s9"):
        resolve_code("zz", ["a", "b", "c"], codes, held)
    with pytest.raises(LatentInputError, match="adapted to another prior"):
        held_out_codes(table, other)
    assert held_out_codes(pd.DataFrame(table[table["method"] == "prior"]), prior).subjects == ()
