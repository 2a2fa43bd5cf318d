"""The ``o2a.shard/1`` format, named once: the writer, the reader, the loader, the
inspector and the training-image maker (``training.foreground``) all take these.

A shard is a plain POSIX tar (webdataset layout): one sample per captured image,
its members ``<key>.<extension>`` contiguous and in sorted extension order, the key
``{session_id}/{expression}/{camera_id}`` (no dots: webdataset splits the member
name at the first dot of its last path part). Every tar header field is fixed so
the same input gives the same bytes.
"""

from __future__ import annotations

SHARD_FORMAT = "o2a.shard/1"
"""The json's ``format`` value, and ``shards.json``'s."""

# ---------------------------------------------------------------- members (extensions after the key)

JSON_MEMBER = "json"
"""Subject, session, expression and camera ids, the camera, the 3DMM fit, landmarks, image and train blocks."""
TRAIN_MEMBER = "train.png"
"""The image at the training resolution (``train_size``), INTER_AREA; only with a train block."""
MASK_MEMBER = "mask.png"
"""The head mask (0/255) at the training image's size; only where the frame has a fit."""
IMAGE_EXTENSIONS = {"jpeg": "jpg", "jpg": "jpg", "png": "png"}
"""Member extension of the original image for each capture format (the manifest's ``format``)."""
IMAGE_MEMBERS = ("jpg", "png")
"""Every extension an original image member can have (the values of ``IMAGE_EXTENSIONS``)."""

# ---------------------------------------------------------------- tar headers

TAR_USER = TAR_GROUP = "o2a"
TAR_MODE = 0o444
TAR_MTIME = 0
BLOCK, RECORD = 512, 10240
"""tarfile.BLOCKSIZE (header and data padding) and tarfile.RECORDSIZE (the archive is padded to it)."""

# ---------------------------------------------------------------- json fields a reader checks

FORMAT_FIELD = "format"
"""Must equal ``SHARD_FORMAT``: the loader refuses, the inspector reports, any other value."""
KEY_FIELDS = ("session_id", "expression", "camera_id")
"""The ids the json names its sample by; joined by ``/`` they must equal the member key."""
IMAGE_BLOCK = "image"
"""``{format, width, height, sha256, member}`` of the original image member."""
TRAIN_BLOCK = "train"
"""``{resolution, member, mask_member, width, height, scale}``, or null without a training image."""
CAMERA_BLOCK = "camera"
"""The calibrated camera (``capture_schema.cameras.Camera.to_dict``) at the original image's size."""
FIT_BLOCK = "fit"
"""The frame's 3DMM parameters and this view's status, or null where the frame was not fitted."""


def train_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """(w, h) of the training image: the longer side == resolution, aspect kept (round half up).

    The one resize rule: ``train.png`` is written at this size and the loader resizes
    an original to it when no ``train.png`` of that resolution is stored.
    """
    scale = resolution / max(width, height)
    return max(1, int(width * scale + 0.5)), max(1, int(height * scale + 0.5))


def train_block(width: int, height: int, resolution: int, *, mask: bool) -> dict:
    """The json's ``train`` block for an original of ``width`` x ``height`` px."""
    w, h = train_size(width, height, resolution)
    return {"resolution": int(resolution), "member": TRAIN_MEMBER, "mask_member": MASK_MEMBER if mask else None,
            "width": w, "height": h, "scale": resolution / max(width, height)}
