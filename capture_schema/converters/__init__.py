"""Converters between the project's OpenCV cameras and other tools' layouts.

``colmap``: COLMAP sparse models (``cameras``/``images``/``points3D``, text or
binary) through pycolmap. ``nerf``: NeRF-style ``transforms.json`` with
per-frame intrinsics (instant-ngp / nerfstudio). Every conversion is an exact
inverse of its partner, so a rig survives any round trip unchanged.
"""

from capture_schema.converters.colmap import (
    camera_id_from_image_name,
    camera_to_colmap,
    intrinsics_from_colmap,
    pose_from_colmap,
    pose_to_colmap,
    read_colmap_model,
    write_colmap_model,
)
from capture_schema.converters.nerf import (
    cameras_to_transforms,
    read_transforms,
    transforms_to_cameras,
    write_transforms,
)

__all__ = [
    "camera_id_from_image_name",
    "camera_to_colmap",
    "cameras_to_transforms",
    "intrinsics_from_colmap",
    "pose_from_colmap",
    "pose_to_colmap",
    "read_colmap_model",
    "read_transforms",
    "transforms_to_cameras",
    "write_colmap_model",
    "write_transforms",
]
