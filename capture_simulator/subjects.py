"""Synthetic subjects: a face shape (identity coefficients) and a skin/hair appearance.

Every simulated subject re-uses the model's one photo texture, so two subjects must
differ in shape *and* in albedo for an identity-aware model to have something to
learn: the texture is recoloured per subject (hue shift, saturation and brightness
gains, a per-channel tint) and the hair gets its own colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from fitting.face_models.linear import LinearFaceModel

#: Hair colours (RGB in [0, 1]): black, dark brown, brown, auburn, dark blond, grey.
HAIR_PALETTE = np.array([
    [0.06, 0.05, 0.05], [0.17, 0.11, 0.07], [0.32, 0.21, 0.12],
    [0.42, 0.18, 0.09], [0.55, 0.43, 0.26], [0.55, 0.54, 0.52],
])
IDENTITY_CLIP = 2.5
#: The photo's own hair colour (its fringe is part of the face texture).
PHOTO_HAIR = (0.50, 0.40, 0.26)


@dataclass(frozen=True, eq=False)
class SubjectAppearance:
    """What distinguishes one synthetic subject: shape coefficients and colouring."""

    identity: np.ndarray  # (n_identity,) coefficients, ~N(0, 1)
    hue_shift_deg: float = 0.0
    saturation_gain: float = 1.0
    brightness_gain: float = 1.0
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    hair_color: tuple[float, float, float] = PHOTO_HAIR

    def recolor(self, rgb: np.ndarray) -> np.ndarray:
        """Apply this subject's albedo change to an RGB image/colour list; float32 in [0, 1]."""
        arr = np.asarray(rgb)
        img = arr.astype(np.float32) / (255.0 if arr.dtype == np.uint8 else 1.0)
        flat = img.reshape(-1, 1, 3)
        hsv = cv2.cvtColor(np.ascontiguousarray(flat), cv2.COLOR_RGB2HSV)
        hsv[..., 0] = np.mod(hsv[..., 0] + self.hue_shift_deg, 360.0)
        hsv[..., 1] = np.clip(hsv[..., 1] * self.saturation_gain, 0.0, 1.0)
        hsv[..., 2] = hsv[..., 2] * self.brightness_gain
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * np.asarray(self.tint, dtype=np.float32)
        return np.clip(out, 0.0, 1.0).reshape(img.shape)


def neutral_subject(model: LinearFaceModel) -> SubjectAppearance:
    """The template face with the photo's own colours."""
    return SubjectAppearance(identity=np.zeros(model.n_identity))


def sample_subject(rng: np.random.Generator, model: LinearFaceModel) -> SubjectAppearance:
    """Draw a plausible subject; the same generator state gives the same subject."""
    identity = np.clip(rng.standard_normal(model.n_identity), -IDENTITY_CLIP, IDENTITY_CLIP)
    hue = float(rng.normal(0.0, 4.0))
    saturation = float(rng.uniform(0.8, 1.3))
    brightness = float(rng.uniform(0.55, 1.15))
    tint = tuple(float(v) for v in 1.0 + np.clip(rng.normal(0.0, 0.04, 3), -0.1, 0.1))
    hair = HAIR_PALETTE[rng.integers(len(HAIR_PALETTE))] * rng.uniform(0.85, 1.15)
    return SubjectAppearance(
        identity=identity,
        hue_shift_deg=hue,
        saturation_gain=saturation,
        brightness_gain=brightness,
        tint=tint,  # type: ignore[arg-type]
        hair_color=tuple(float(v) for v in np.clip(hair, 0.0, 1.0)),  # type: ignore[arg-type]
    )
