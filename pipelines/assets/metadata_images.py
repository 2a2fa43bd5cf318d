"""Pictures in Dagster metadata: a PNG inlined in markdown as a base64 data URL.

Dagster's UI renders ``MetadataValue.md``; an inline ``data:`` URL needs nothing else
to serve the image (the storage root may be a bucket the UI cannot read), so the
picture must stay small: a thumbnail, or a plot of a few hundred pixels.
"""

from __future__ import annotations

import base64

import cv2
import numpy as np

#: Longest side of an image thumbnail (a capture overlay) in metadata.
THUMBNAIL_PX = 320


def png_markdown(png: bytes, alt: str) -> str:
    """Markdown showing ``png`` (encoded PNG bytes) inline; ``alt`` is its alternative text."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def thumbnail_markdown(image_rgb: np.ndarray, alt: str, max_px: int = THUMBNAIL_PX) -> str:
    """Markdown showing an RGB image (H, W, 3) uint8, shrunk so its longest side is at most ``max_px``."""
    scale = max_px / max(image_rgb.shape[:2])
    small = cv2.resize(image_rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else image_rgb
    ok, png = cv2.imencode(".png", cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"could not encode a {small.shape} image as PNG")
    return png_markdown(png.tobytes(), alt)
