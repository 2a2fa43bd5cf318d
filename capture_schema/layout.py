"""Where things live in a capture session, and the default ids.

A session on disk::

    <captures_root>/<session_id>/session.json
    <captures_root>/<session_id>/images/<expression>/<camera_id>.<jpg|png>
    <captures_root>/<session_id>/calibration/board.json
    <captures_root>/<session_id>/calibration/<camera_id>/<NNN>.<jpg|png>
"""

from __future__ import annotations

import re

SESSION_FILE = "session.json"
IMAGES_DIR = "images"
DEFAULT_CALIBRATION_DIR = "calibration"
BOARD_FILE = "board.json"
IMAGE_EXTENSIONS = (".jpg", ".png")

#: Neutral plus twelve expressions a simple morphable model can hold and a viewer can tell apart.
DEFAULT_EXPRESSIONS: tuple[str, ...] = (
    "neutral",
    "smile",
    "mouth_open",
    "surprise",
    "brows_raised",
    "brows_lowered",
    "eyes_closed",
    "wink_left",
    "pucker",
    "jaw_left",
    "jaw_right",
    "cheeks_puffed",
    "disgust",
)

#: Thirteen cameras, named by ring and azimuth: ``<ring>_<L|R|C><degrees>``.
#: Rings: ``up`` (above eye level), ``mid`` (eye level), ``low`` (below).
DEFAULT_CAMERAS: tuple[str, ...] = (
    "mid_C00",
    "mid_L30",
    "mid_R30",
    "mid_L60",
    "mid_R60",
    "up_C00",
    "up_L30",
    "up_R30",
    "up_L60",
    "up_R60",
    "low_C00",
    "low_L30",
    "low_R30",
)

#: Ids become Dagster partition keys, file names and webdataset keys: no dots, no separators.
#: Matched with ``fullmatch``: ``$`` would also accept a trailing newline ("sim0011\n"),
#: which would become a second partition, other shard keys and a different subject.
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def sample_key(session_id: str, expression: str, camera_id: str) -> str:
    """The key of one image everywhere downstream: ``{session_id}/{expression}/{camera_id}``."""
    return f"{session_id}/{expression}/{camera_id}"
