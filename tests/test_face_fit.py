"""Multi-view 3DMM fitting: a real photo, simulated sessions against the truth, degraded inputs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import FIT_OVER_FLOOR_PX, best_in_span, mean_reprojection_px, sim_ground_truth
from fitting.face_fit.fitter import (FRAME_FEW_VIEWS, FRAME_NOT_FITTED, FRAME_OK, VIEW_NOT_DETECTED, VIEW_OUTLIER,
                                     VIEW_USED, fit_frames)
from fitting.face_fit.session import (fit_session, fit_single_image, fit_views_table, read_session_fit,
                                      write_session_fit)
from fitting.face_models.builtin import builtin_face_model

#: The simulated subjects lie outside the built-in model's span (``offspan``), so no fit can reach
#: the truth; the yardstick is the best the model can do (``conftest.best_in_span``). Measured on
#: the suite's first subject: that floor is 2.16 mm / 1.86 px from the truth, the fit 3.3 mm /
#: 2.8 px. The pixel margin is ``FIT_OVER_FLOOR_PX``; 1 px at 1 m through f ~1100 px is ~0.9 mm and
#: depth is less certain than position, so the mesh must land within 2 mm of the best in-span
#: face (with in-span subjects the bounds were 2.0 px / 3.0 mm from the truth itself).
MEAN_VERTEX_OVER_FLOOR_MM = 2.0


@pytest.fixture(scope="module")
def model():
    return builtin_face_model()


def test_single_view_fit_of_a_real_photo(model) -> None:
    from skimage import data

    from fitting.landmarks.detect import FaceMeshDetector

    image = data.astronaut()
    with FaceMeshDetector() as detector:
        found = detector.detect(image)
    assert found.detected and np.isfinite(found.landmarks).all() and found.landmarks.shape == (478, 2)
    fit = fit_single_image(model, found.landmarks, found.image_size)
    rmse = float(fit.view_rmse_px[0, 0])
    eye_px = np.linalg.norm(found.landmarks[33] - found.landmarks[263])
    print(f"astronaut: single-view RMSE {rmse:.2f} px ({100 * rmse / eye_px:.1f} % of the eye-corner distance)")
    # The built-in template *is* mediapipe's mesh of this photo, so only the nominal lens and the
    # detector's own 2D/3D inconsistency remain: well under 2 px (~3 % of the 61 px eye distance).
    assert rmse < 2.0
    assert fit.frame_status[0] == FRAME_OK or fit.frame_status[0] == FRAME_FEW_VIEWS


def test_session_fit_matches_the_simulators_truth(model, sim_dataset, sim_landmarks) -> None:
    truth = sim_ground_truth(sim_dataset)
    result = fit_session(model, sim_landmarks, truth["calibration"])
    fit = result.fit
    assert truth["face_model"] != model.name  # the subject is not one the model can draw exactly
    assert list(fit.frame_status) == [FRAME_OK] * 13
    best = best_in_span(model, truth)
    floor_px = mean_reprojection_px(truth, best)
    floor_mm = 1000 * np.linalg.norm(best - truth["vertices"], axis=-1).mean()
    reproj = np.linalg.norm(fit.projected - truth["landmarks_2d"], axis=-1)
    vertex_mm = 1000 * np.linalg.norm(fit.vertices - truth["vertices"], axis=-1)
    print(f"mean landmark reprojection vs truth {reproj.mean():.2f} px (in-span floor {floor_px:.2f}); posed "
          f"vertices {vertex_mm.mean():.2f} mm mean (floor {floor_mm:.2f}), {np.percentile(vertex_mm, 95):.2f} mm p95")
    assert floor_mm > 1.0  # the subject really is off the model's span (offspan: ~2.4 mm RMS)
    assert reproj.mean() < floor_px + FIT_OVER_FLOOR_PX
    assert vertex_mm.mean() < floor_mm + MEAN_VERTEX_OVER_FLOOR_MM
    # The identity is recovered as a shape: the fitted neutral face is much nearer the model's best
    # approximation of the true neutral face (least squares on its identity modes) than the
    # model's mean face is.
    basis = model.identity_basis.reshape(len(model.identity_basis), -1).T.astype(np.float64)
    coef, *_ = np.linalg.lstsq(basis, (truth["neutral"] - model.template).reshape(-1), rcond=None)
    best_neutral = model.template + (basis @ coef).reshape(model.template.shape)
    fitted_gap = np.linalg.norm(model.vertices(fit.identity) - best_neutral, axis=1).mean()
    mean_gap = np.linalg.norm(model.vertices() - best_neutral, axis=1).mean()
    print(f"identity shape error {1000 * fitted_gap:.2f} mm (mean face: {1000 * mean_gap:.2f} mm)")
    assert fitted_gap < 0.5 * mean_gap


def test_views_without_a_face_and_frames_with_too_few_views(model, sim_dataset, sim_landmarks) -> None:
    truth = sim_ground_truth(sim_dataset)
    lm = dataclasses.replace(sim_landmarks, landmarks=sim_landmarks.landmarks.copy(),
                             detected=sim_landmarks.detected.copy())
    lm.detected[0, 0] = False  # neutral/mid_C00: no face found
    lm.landmarks[0, 0] = np.nan
    lm.detected[1, 1:] = False  # smile: only one view left
    lm.detected[2, :] = False  # mouth_open: no view at all
    lm.landmarks[3, 2] += 40.0  # surprise/mid_R30: a detection that contradicts the other views
    fit = fit_session(model, lm, truth["calibration"]).fit
    assert fit.view_status[0, 0] == VIEW_NOT_DETECTED and np.isnan(fit.view_rmse_px[0, 0])
    assert (fit.view_status[0, 1:] != VIEW_NOT_DETECTED).all()
    assert fit.frame_status[1] == FRAME_FEW_VIEWS and fit.n_views[1] == 1
    assert np.isfinite(fit.vertices[1]).all()
    assert fit.frame_status[2] == FRAME_NOT_FITTED and np.isnan(fit.vertices[2]).all()
    assert fit.view_status[3, 2] == VIEW_OUTLIER
    assert fit.frame_status[4:].tolist() == [FRAME_OK] * 9
    table = fit_views_table(dataclasses.replace(fit_session(model, lm, truth["calibration"])))
    rows = table.to_pylist()
    assert len(rows) == 169
    assert rows[0]["view_status"] == VIEW_NOT_DETECTED and rows[13 * 2]["frame_status"] == FRAME_NOT_FITTED


def test_fit_rejects_observations_of_the_wrong_shape(model, sim_dataset) -> None:
    cams = list(sim_ground_truth(sim_dataset)["calibration"].cameras.values())
    with pytest.raises(ValueError, match="observations must be"):
        fit_frames(model, cams, np.zeros((13, 12, 478, 2)))


def test_fit_store_round_trip_and_determinism(model, sim_dataset, sim_landmarks, tmp_path) -> None:
    from conftest import tree_hashes

    truth = sim_ground_truth(sim_dataset)
    result = fit_session(model, sim_landmarks, truth["calibration"])
    write_session_fit(result, tmp_path / "a.zarr")
    write_session_fit(result, tmp_path / "b.zarr")
    assert tree_hashes(tmp_path / "a.zarr") == tree_hashes(tmp_path / "b.zarr")
    back = read_session_fit(tmp_path / "a.zarr")
    assert back.expressions == result.expressions and back.cameras == result.cameras
    np.testing.assert_array_equal(back.fit.vertices, result.fit.vertices)
    np.testing.assert_array_equal(back.fit.identity, result.fit.identity)
    np.testing.assert_array_equal(back.fit.view_status, result.fit.view_status)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr", "b.zarr"]  # no temp dirs left
    # Fitting is deterministic too: the same landmarks give the same numbers.
    again = fit_session(model, sim_landmarks, truth["calibration"])
    np.testing.assert_array_equal(again.fit.vertices, result.fit.vertices)
    assert np.all([VIEW_USED in row for row in result.fit.view_status])


def test_fit_is_the_same_at_any_resolution(model, sim_dataset) -> None:
    """Weights, robust scale and priors are in reference pixels: doubling the image size
    (cameras and detections alike) must not change the fitted face."""
    truth = sim_ground_truth(sim_dataset)
    cams = list(truth["calibration"].cameras.values())
    obs = truth["landmarks_2d"][:3] + np.random.default_rng(1).normal(0.0, 1.5, (3, 13, 478, 2))
    big = [dataclasses.replace(c, width=2 * c.width, height=2 * c.height, fx=2 * c.fx, fy=2 * c.fy,
                               cx=2 * c.cx + 0.5, cy=2 * c.cy + 0.5) for c in cams]
    small_fit = fit_frames(model, cams, obs)
    big_fit = fit_frames(model, big, 2 * obs + 0.5)
    assert np.abs(big_fit.vertices - small_fit.vertices).max() < 2e-4  # 0.2 mm
    np.testing.assert_allclose(big_fit.view_rmse_px, 2 * small_fit.view_rmse_px, rtol=0.05)
