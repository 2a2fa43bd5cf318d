"""Walk the latent space between two avatars and render each step: a strip, an animation, its smoothness.

An avatar is an identity code plus the 3DMM shape and expression the prior renders it on, so a
step ``w`` blends both linearly: ``code = (1 - w) code_a + w code_b`` and likewise the 3DMM identity and
expression coefficients (the shape moves with the look). Every step is rendered on one reference
frame's camera and head pose, in one crop window (``scene.render_avatars``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fitting.face_models.base import FaceModel
from training.latent.metrics import Profile, distance_profile, smoothness, step_distances
from training.latent.scene import ReferenceFrame, Rendered, render_avatars, to_uint8


@dataclass(frozen=True)
class Endpoint:
    """One end of an interpolation: a name (subject id), its identity code, its 3DMM identity and expression."""

    name: str
    code: np.ndarray
    identity: np.ndarray
    expression: np.ndarray


def endpoint(name: str, code: np.ndarray, frame: ReferenceFrame) -> Endpoint:
    """The avatar ``name``: ``code`` on the 3DMM shape and expression fitted to its own ``frame``."""
    return Endpoint(name, np.asarray(code, np.float64), frame.identity, frame.expression)


@dataclass(frozen=True)
class Interpolation:
    """The rendered steps from ``start`` to ``end`` (weights 0 .. 1) and what they measure."""

    start: str
    end: str
    weights: np.ndarray
    rendered: Rendered

    @property
    def images(self) -> np.ndarray:
        return self.rendered.images

    @property
    def smoothness(self) -> float:
        return smoothness(self.images)

    @property
    def profile(self) -> Profile:
        return distance_profile(self.images)

    @property
    def step_distances(self) -> np.ndarray:
        return step_distances(self.images)


def blend(a: Endpoint, b: Endpoint, steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(weights, codes, identities, expressions) of ``steps`` evenly spaced blends from ``a`` to ``b``."""
    if steps < 2:
        raise ValueError(f"an interpolation needs at least 2 steps (both ends), got {steps}")
    w = np.linspace(0.0, 1.0, steps)
    mix = lambda x, y: (1 - w)[:, None] * np.asarray(x, np.float64)[None] + w[:, None] * np.asarray(y, np.float64)[None]  # noqa: E731
    return w, mix(a.code, b.code), mix(a.identity, b.identity), mix(a.expression, b.expression)


def interpolate(prior, face_model: FaceModel, frame: ReferenceFrame, a: Endpoint, b: Endpoint, steps: int,
                resolution: int) -> Interpolation:
    """Render ``steps`` blends from ``a`` to ``b`` on ``frame``'s camera and head pose at ``resolution`` px."""
    w, codes, identities, expressions = blend(a, b, steps)
    return Interpolation(a.name, b.name, w, render_avatars(prior, face_model, frame, codes, identities, expressions,
                                                          resolution))


def strip_png(images: np.ndarray, scale: int = 2) -> bytes:
    """The images side by side as one PNG, each enlarged ``scale`` times (nearest pixel: nothing invented)."""
    import cv2

    row = np.concatenate(list(to_uint8(images)), axis=1)
    if scale > 1:
        row = cv2.resize(row, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    ok, png = cv2.imencode(".png", cv2.cvtColor(row, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"could not encode a {row.shape} strip as PNG")
    return png.tobytes()


def animation_gif(images: np.ndarray, frame_ms: int, scale: int = 2, bounce: bool = True) -> bytes:
    """An endlessly looping GIF of the steps (there and back when ``bounce``), written by imageio."""
    import cv2
    import imageio.v3 as iio

    frames = [cv2.resize(x, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST) if scale > 1 else x
              for x in to_uint8(images)]
    if bounce and len(frames) > 2:
        frames = frames + frames[-2:0:-1]
    return iio.imwrite("<bytes>", np.stack(frames), extension=".gif", duration=int(frame_ms), loop=0)
