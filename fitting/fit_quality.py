"""Is a session fit good? Landmark residuals judged against the detector's own noise.

A landmark fit cannot agree with mediapipe better than mediapipe agrees with the
face, and mediapipe's error grows steeply with how far the face is turned from the
camera (about 1.3 reference px frontal, 9 at 60 degrees, on faces that are not the
built-in template). So a fixed pixel threshold on the fit's residual measures the
detector, not the fit. Here every view's residual is divided by the error the
detector is expected to make at that view's angle,

    r = residual / expected_detector_noise_px(view angle),

and two gates read the normalised residuals:

* **fit quality** (``fit_quality_gate``): the median r over the views the fit used.
  A fit that agrees with the detections about as well as the detector agrees with
  the truth has r ~ 1 (the fit absorbs part of the detector's error, so r < 1 is
  usual on a good session).
* **camera consistency** (``camera_consistency_gate``): per camera, the median r over
  *every* view in which a face was detected, the ones the fit dropped as outliers
  included. A camera whose calibration is wrong (rotated a few degrees, swapped
  with another) disagrees with the fit in every frame; the fit then marks its views
  "outlier" and the used views alone look fine, so this gate must look at them.
  It names the cameras that fail.

Residuals are in *reference pixels* (``fitting.face_fit.REFERENCE_EYE_PX``: pixels of a
face whose outer eye corners are 60 px apart), the fitter's own convention: per
frame, pixels are divided by the median over that frame's views of the fitted
outer-eye-corner distance / 60. A view's residual is the median over the model's
embedded landmarks of the distance between the fitted projection and the detection
(``FrameFit.view_median_px``), the same statistic the detector noise table holds.

The view angle is the angle between the camera's optical axis and the direction the
fitted head looks at (the model frame's facing axis, -z for every ``FaceModel``,
carried by the fitted head rotation): 0 when the camera looks straight into the
face. The rig aims its cameras at the head, so this is how far the face is turned
in that camera's image.

Numbers come from ``benchmarks/fit_gate.py`` (simulated sessions of ICT-FaceKit
faces and of built-in subjects, fitted with the built-in model through the true
cameras, then with one camera rotated by 3 degrees or two cameras swapped); the
measured values are quoted beside each constant.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from capture_schema.calibration_file import Calibration
from fitting.face_fit import REFERENCE_EYE_PX, VIEW_NOT_DETECTED, VIEW_NO_FIT, VIEW_USED
from fitting.morphable_model import OUTER_EYE_CORNERS
from fitting.session_fit import SessionFit

#: The direction a face looks in its model frame: every ``FaceModel`` shares the
#: convention x = subject's left, y down, face looking towards -z (``face_models.base``).
MODEL_FACING_AXIS = (0.0, 0.0, -1.0)

# mediapipe's expected per-view median landmark error (reference px; 1 reference px is
# ~1.5 image px on 512 px images of a face ~160 px wide, whose eye corners are ~99 px
# apart frontally and ~88 px in the median view of the 13-camera rig) against the view
# angle. Sources, each in reference px:
#  * REFERENCE.md "Detector noise on faces that are not the built-in template"
#    (independent renders, 512 px): 1.8-2.5 px frontal -> 1.2-1.7; 2.5-4.0 px at
#    30 degrees -> 1.7-2.7; 7-26 px at 60 degrees -> 4.7-17.
#  * benchmarks/fit_gate.py (filled in below): median detector error against the
#    simulator's true 2D landmarks per 10-degree bin, ICT-FaceKit faces.
#  The table takes the REFERENCE values where the measurement lies inside their range
#  and REFERENCE's lower/upper bounds bracket it; beyond 60 degrees (no camera of the
#  rig, FaceMesh mostly fails) it keeps rising so a rotated face is not judged harshly.
NOISE_TABLE_DEG = (0.0, 15.0, 30.0, 45.0, 60.0, 75.0, 90.0)
NOISE_TABLE_REF_PX = (1.4, 1.6, 2.2, 4.5, 9.0, 14.0, 20.0)

#: Fit-quality gate: median normalised residual over the used views (see module docstring).
FIT_QUALITY_MAX = 2.0
#: Camera-consistency gate: per camera, median normalised residual over its detected views.
CAMERA_CONSISTENCY_MAX = 3.0
#: A camera with fewer detected views than this is not judged (listed as ``unjudged``).
MIN_CAMERA_VIEWS = 3


def expected_detector_noise_px(view_angle_deg):
    """mediapipe's expected median landmark error (reference px) at a view angle (degrees).

    Piecewise linear in ``NOISE_TABLE_DEG``/``NOISE_TABLE_REF_PX``, symmetric in the sign of
    the angle, constant beyond 90 degrees; NaN stays NaN. Scalars give a float, arrays an array.
    """
    angle = np.abs(np.asarray(view_angle_deg, dtype=np.float64))
    out = np.interp(angle, NOISE_TABLE_DEG, NOISE_TABLE_REF_PX)
    out = np.where(np.isnan(angle), np.nan, out)
    return float(out) if out.ndim == 0 else out


@dataclass(frozen=True)
class ViewQuality:
    """Per view ``[expression, camera]`` of a session fit; NaN where no face was detected
    or the frame was not fitted."""

    expressions: tuple[str, ...]
    cameras: tuple[str, ...]
    view_angle_deg: np.ndarray  # (E, C) angle between optical axis and the fitted facing direction
    residual_ref_px: np.ndarray  # (E, C) median landmark residual, reference px
    expected_noise_ref_px: np.ndarray  # (E, C) expected_detector_noise_px(view_angle_deg)
    normalised: np.ndarray  # (E, C) residual / expected noise
    status: np.ndarray  # (E, C) the fit's view status (used / outlier / not_detected / frame_not_fitted)

    @property
    def judged(self) -> np.ndarray:
        """(E, C) views with a detection in a fitted frame (used or outlier)."""
        return np.isfinite(self.normalised)

    @property
    def used(self) -> np.ndarray:
        return (self.status == VIEW_USED) & self.judged


@dataclass(frozen=True)
class FitQualityGate:
    """Median normalised residual over the views the fit used, against ``threshold``."""

    median_normalised: float
    threshold: float
    n_views: int
    passed: bool

    def describe(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (f"fit quality {verdict}: median normalised residual {self.median_normalised:.2f} over "
                f"{self.n_views} used views (threshold {self.threshold:.2f})")


@dataclass(frozen=True)
class CameraConsistencyGate:
    """Per camera, median normalised residual over its detected views (outliers included)."""

    camera_median: dict[str, float]  # NaN for unjudged cameras
    camera_views: dict[str, int]  # detected views per camera in fitted frames
    threshold: float
    failing_cameras: tuple[str, ...]  # worst first
    unjudged_cameras: tuple[str, ...]  # fewer than MIN_CAMERA_VIEWS detected views
    passed: bool

    @property
    def worst(self) -> float:
        values = [v for v in self.camera_median.values() if np.isfinite(v)]
        return max(values) if values else float("nan")

    def describe(self) -> str:
        if self.passed:
            return (f"camera consistency passed: worst camera median normalised residual {self.worst:.2f} "
                    f"(threshold {self.threshold:.2f})")
        named = ", ".join(f"{c} ({self.camera_median[c]:.1f})" for c in self.failing_cameras)
        return (f"camera consistency FAILED: the landmarks of camera(s) {named} disagree with the fit in most "
                f"frames (median normalised residual > {self.threshold:.2f}); check their calibration "
                f"(a rotated, moved or swapped camera) before trusting this session")


@dataclass(frozen=True)
class FitGates:
    """Both gates of one session fit, with the per-view numbers they read."""

    views: ViewQuality
    fit_quality: FitQualityGate
    camera_consistency: CameraConsistencyGate

    @property
    def passed(self) -> bool:
        return self.fit_quality.passed and self.camera_consistency.passed


def _pixel_scale(projected: np.ndarray, landmark_ids: np.ndarray, judged: np.ndarray) -> np.ndarray:
    """Per frame (E,): image px per reference px, the median over the frame's judged views of
    the fitted outer-eye-corner distance / REFERENCE_EYE_PX (1.0 where it cannot be measured)."""
    ids = list(np.asarray(landmark_ids))
    if not all(i in ids for i in OUTER_EYE_CORNERS):
        raise ValueError(f"the fitted model embeds no outer eye corners (mediapipe ids {OUTER_EYE_CORNERS}); "
                         "residuals cannot be put in reference pixels")
    a, b = ids.index(OUTER_EYE_CORNERS[0]), ids.index(OUTER_EYE_CORNERS[1])
    eye = np.linalg.norm(projected[:, :, a] - projected[:, :, b], axis=-1)
    eye = np.where(judged, eye, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        scale = np.nanmedian(eye, axis=1) / REFERENCE_EYE_PX
    return np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)


def view_angles(session_fit: SessionFit, calibration: Calibration,
                facing_axis: tuple[float, float, float] = MODEL_FACING_AXIS) -> np.ndarray:
    """(E, C) degrees between each camera's optical axis and the fitted head's facing direction
    (0: the camera looks straight into the face); NaN for frames that were not fitted."""
    fit = session_fit.fit
    axis = np.asarray(facing_axis, dtype=np.float64)
    facing = np.einsum("eij,j->ei", fit.rotation, axis / np.linalg.norm(axis))  # (E, 3) world
    optical = np.stack([np.asarray(calibration.cameras[c].R)[2] for c in session_fit.cameras])  # (C, 3) world
    cos = np.clip(-(facing @ optical.T), -1.0, 1.0)
    return np.degrees(np.arccos(cos))


def view_quality(session_fit: SessionFit, calibration: Calibration,
                 facing_axis: tuple[float, float, float] = MODEL_FACING_AXIS) -> ViewQuality:
    """View angles, residuals (reference px) and normalised residuals of every view of a fit.

    Every detected view of a fitted frame is judged, including those the fit marked
    ``outlier``; ``calibration`` must hold the cameras the fit was made with.
    """
    missing = [c for c in session_fit.cameras if c not in calibration.cameras]
    if missing:
        raise ValueError(f"calibration has no camera(s) {', '.join(missing)} of session {session_fit.session_id}")
    fit = session_fit.fit
    status = np.asarray(fit.view_status, dtype=object)
    judged = ~np.isin(status, [VIEW_NOT_DETECTED, VIEW_NO_FIT]) & np.isfinite(fit.view_median_px)
    scale = _pixel_scale(fit.projected, fit.landmark_ids, judged)
    residual = np.where(judged, fit.view_median_px / scale[:, None], np.nan)
    angle = view_angles(session_fit, calibration, facing_axis)
    expected = expected_detector_noise_px(angle)
    return ViewQuality(tuple(session_fit.expressions), tuple(session_fit.cameras), angle, residual, expected,
                       residual / expected, status)


def fit_quality_gate(quality: ViewQuality, threshold: float = FIT_QUALITY_MAX) -> FitQualityGate:
    """Median normalised residual over the used views <= ``threshold`` (no used view fails)."""
    values = quality.normalised[quality.used]
    median = float(np.median(values)) if values.size else float("nan")
    return FitQualityGate(median, float(threshold), int(values.size), bool(values.size and median <= threshold))


def camera_consistency_gate(quality: ViewQuality, threshold: float = CAMERA_CONSISTENCY_MAX,
                            min_views: int = MIN_CAMERA_VIEWS) -> CameraConsistencyGate:
    """For every camera with ``min_views`` or more detected views: median normalised residual over
    them (outliers included) <= ``threshold``. Fails naming the cameras above it, worst first."""
    medians: dict[str, float] = {}
    counts: dict[str, int] = {}
    for c, cam in enumerate(quality.cameras):
        values = quality.normalised[:, c][quality.judged[:, c]]
        counts[cam] = int(values.size)
        medians[cam] = float(np.median(values)) if values.size >= min_views else float("nan")
    failing = sorted((c for c, v in medians.items() if np.isfinite(v) and v > threshold), key=lambda c: -medians[c])
    unjudged = tuple(c for c, v in medians.items() if not np.isfinite(v))
    return CameraConsistencyGate(medians, counts, float(threshold), tuple(failing), unjudged, not failing)


def evaluate_fit(session_fit: SessionFit, calibration: Calibration) -> FitGates:
    """Both gates with the module's thresholds."""
    quality = view_quality(session_fit, calibration)
    return FitGates(quality, fit_quality_gate(quality), camera_consistency_gate(quality))
