"""Decode one raw capture image file safely, for code that needs its pixels.

``cv2.imread`` on a raw capture trusts the file: a FIFO blocks it forever, a symlink
is followed, and a 100-byte PNG claiming 20000 x 20000 px allocates gigabytes. So
``read_image`` reads through ``capture_schema.image_check``: ``read_capture_file``
(regular files only, no symlinks, at most ``ImageLimits.max_bytes``), then the
structural check of ``check_image_bytes`` with its pixel limit, and only then
``cv2.imdecode``. Every refusal is an ``ImageReadError`` naming the file.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from capture_schema.image_check import ImageCorrupt, ImageLimits, check_image_bytes, read_capture_file


class ImageReadError(ImageCorrupt):
    """A raw image file that cannot be read or decoded safely.

    A subclass of ``ImageCorrupt`` (so of ``ValueError``): ``path`` is the file and
    ``reason`` the bare reason; ``str()`` is ``"<path>: <reason>"``.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def read_image(path: str | os.PathLike[str], flags: int = cv2.IMREAD_COLOR,
               limits: ImageLimits | None = None) -> np.ndarray:
    """The decoded pixels of a JPEG or PNG file (``cv2.imdecode(..., flags)``), or ``ImageReadError``.

    ``limits=None`` means ``ImageLimits.from_env()``. The structural check runs, the
    full decode of ``check_image_bytes(deep=True)`` does not: OpenCV decodes next.
    """
    limits = ImageLimits.from_env() if limits is None else limits
    try:
        data = read_capture_file(path, limits)
        check_image_bytes(data, deep=False, limits=limits)
    except ImageCorrupt as exc:
        raise ImageReadError(path, str(exc)) from None
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as exc:
        raise ImageReadError(path, f"OpenCV cannot decode it ({str(exc).strip().splitlines()[-1][:120]})") from None
    if image is None or image.size == 0:
        raise ImageReadError(path, "OpenCV cannot decode it")
    return image
