"""Is a rendering a face? mediapipe must find one whose landmarks agree with the mesh the prior rendered on.

FaceMesh returns a face in almost any head-like blob (``fitting.landmarks.detect``), so "a face was
returned" proves little; the check also projects the conditioning 3DMM's embedded landmarks into
the rendered camera and requires mediapipe's corresponding landmarks to lie near them
(``metrics.landmark_nme``: median distance over the outer-eye-corner distance). Renders at the CPU
preset's 64 px are upsampled (bicubic) to ``DETECT_PX`` first: FaceMesh finds nothing in tiny images.
The detector runs twice (as is and mirrored, averaged), as the landmarks stage does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from fitting.face_models.builtin import OUTER_EYE_CORNERS
from training.latent.metrics import landmark_nme

#: Side (px) renders are upsampled to before detection: the issue asks for >= 192 px.
#: Measured on the dev prior's mean-code render: detected at 192, 256 and 384 px from 64, 128 or 192 px
#: renders alike (NME 0.022-0.024), so upsampling the 64 px render is as good as rendering larger.
DETECT_PX = 256

#: Largest landmark NME (median landmark distance / outer-eye-corner distance) of a plausible face.
#: Set from the same check on the captured images the prior trains on (64 px masked crops of the
#: training frames, upsampled to ``DETECT_PX``, against the projection of their own 3DMM fits),
#: measured with ``captured_noise`` on the 12-subject simulated dev set (384 px captures), frontal
#: camera mid_C00, 13 expressions x 10 training subjects = 130 crops: every crop detected, NME median
#: 0.017, 95th percentile 0.025, max 0.036. Twice the 95th percentile passes every captured crop; a
#: face whose landmarks sit a twentieth of the eye-corner distance further off than that fails.
PLAUSIBLE_NME = 0.05


@dataclass(frozen=True)
class FaceCheck:
    """One image's verdict: whether mediapipe found a face, its landmark NME against the mesh, and both."""

    detected: bool
    nme: float

    @property
    def plausible(self) -> bool:
        return bool(self.detected and np.isfinite(self.nme) and self.nme <= PLAUSIBLE_NME)


def _eye_rows(landmark_ids: np.ndarray) -> tuple[int, int] | None:
    ids = list(np.asarray(landmark_ids).tolist())
    return (ids.index(OUTER_EYE_CORNERS[0]), ids.index(OUTER_EYE_CORNERS[1])) \
        if all(i in ids for i in OUTER_EYE_CORNERS) else None


def upsample(image: np.ndarray, size: int) -> np.ndarray:
    """A square uint8 or float image resized (bicubic) to ``size`` px, as RGB uint8."""
    import cv2

    from training.latent.scene import to_uint8

    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = to_uint8(image)
    return np.ascontiguousarray(cv2.resize(image, (size, size), interpolation=cv2.INTER_CUBIC))


def check_faces(images: Iterable[np.ndarray], landmarks: Sequence[np.ndarray], landmark_ids: np.ndarray,
                detect_px: int = DETECT_PX, detector=None) -> list[FaceCheck]:
    """A ``FaceCheck`` per square image; ``landmarks[i]`` (L, 2) are image ``i``'s mesh landmarks in its pixels."""
    from fitting.landmarks.detect import FaceMeshDetector

    own = detector is None
    detector = FaceMeshDetector(mirror=True) if own else detector
    eye_rows = _eye_rows(landmark_ids)
    out = []
    try:
        for image, points in zip(images, landmarks):
            size = np.asarray(image).shape[0]
            scaled = (np.asarray(points, np.float64) + 0.5) * detect_px / size - 0.5  # OpenCV pixel centres
            found = detector.detect(upsample(image, detect_px))
            if not found.detected:
                out.append(FaceCheck(False, float("nan")))
                continue
            detected = found.landmarks[np.asarray(landmark_ids)].astype(np.float64)
            if eye_rows is None:  # an embedding without the eye corners: the detection's eye distance
                eye = np.linalg.norm(found.landmarks[OUTER_EYE_CORNERS[0]] - found.landmarks[OUTER_EYE_CORNERS[1]])
                nme = float(np.median(np.linalg.norm(detected - scaled, axis=1)) / eye) if eye > 0 else float("nan")
            else:
                nme = landmark_nme(detected, scaled, eye_rows)
            out.append(FaceCheck(True, nme))
    finally:
        if own:
            detector.close()
    return out


def captured_noise(frames: Sequence, face_model, detect_px: int = DETECT_PX) -> list[FaceCheck]:
    """The same check on captured crops (``scene.ReferenceFrame``s) against their own 3DMM fits: the noise
    ``PLAUSIBLE_NME`` is set from."""
    from capture_schema.cameras import project_points

    embedding = face_model.landmark_embedding
    landmarks = []
    for f in frames:
        mesh = face_model.vertices(f.identity, f.expression, f.rotation, f.translation)
        landmarks.append(project_points(embedding.points(mesh), f.K, f.dist, f.R, f.t))
    return check_faces([f.image for f in frames], landmarks, np.asarray(embedding.landmark_ids), detect_px)
