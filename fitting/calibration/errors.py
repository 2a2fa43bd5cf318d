"""The one error type calibration raises for bad input.

It lives in its own module so that detection, initialisation and refinement can
raise it without importing ``calibrate`` (which imports them). ``calibrate``
re-exports it; callers catch ``fitting.calibration.CalibrationError``.
"""

from __future__ import annotations


class CalibrationError(ValueError):
    """Calibration input that cannot give a trustworthy rig.

    ``camera`` names the camera at fault and ``field`` the ``board.json`` field,
    when the problem is that specific (``None`` otherwise), so a caller can point
    the user at what to fix without parsing the message.
    """

    def __init__(self, message: str, *, camera: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.camera = camera
        self.field = field


def implausible_camera(cam: str, stage: str, exc: ValueError) -> CalibrationError:
    """The error for a camera whose estimated parameters break the camera contract (non-finite,
    absurd focal length or distortion), which points at the board spec or the captures."""
    return CalibrationError(f"camera {cam!r}: the {stage} gave implausible parameters ({exc}); check that "
                            "board.json matches the printed board and that the board images show it", camera=cam)
