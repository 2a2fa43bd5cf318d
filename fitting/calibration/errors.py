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
