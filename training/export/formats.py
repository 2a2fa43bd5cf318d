"""The files of one exported frame, in each target tool's own convention.

A frame (one session, one expression, the selected cameras) becomes one folder that
the target tool opens as a scene::

    images/<camera>.<ext>      the images (original bytes, or undistorted: see UNDISTORT_BY_DEFAULT)
    masks/<camera>.png         head masks at the image's size (0 background, 255 head), when the
                               pipeline has one for every camera of the frame
    mesh.ply, fit.json         the fitted 3DMM: posed mesh and parameters, in the cameras' world frame
    cameras.png                the camera picture: frusta and the fitted head
    transforms.json            nerfstudio: camera-to-world in OpenGL axes, per-frame OPENCV intrinsics
    sparse/0/                  colmap: a text model (cameras, images, points3D, rigs, frames)
    calibration.json           images: the project's own cameras (OpenCV, world-to-camera)

``CONVENTIONS.md`` (beside the frames) says how the conventions relate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from capture_schema import derived_layout as layout
from capture_schema.atomic import atomic_write_json
from capture_schema.calibration_file import Calibration, write_calibration
from capture_schema.cameras import Camera
from capture_schema.converters import cameras_to_transforms, write_colmap_model

FORMATS = ("nerfstudio", "colmap", "images")
#: Whether a format gets undistorted (pinhole) images unless told otherwise: nerfstudio models
#: OpenCV distortion itself and the image-only export keeps the originals; COLMAP consumers that
#: build on a sparse model (Gaussian splatting trainers, dense MVS) accept PINHOLE cameras only.
UNDISTORT_BY_DEFAULT = {"nerfstudio": False, "colmap": True, "images": False}



def image_path(camera_id: str, ext: str) -> str:
    return f"{layout.EXPORT_IMAGES_DIR}/{camera_id}.{ext}"


def mask_path(camera_id: str) -> str:
    return f"{layout.EXPORT_MASKS_DIR}/{camera_id}.png"


def ply_bytes(vertices: np.ndarray, faces: np.ndarray) -> bytes:
    """A binary little-endian PLY of a triangle mesh (float32 vertices, uchar-count int32 faces), with a
    uniform grey vertex colour, which point-cloud readers (nerfstudio's ``ply_file_path``) expect."""
    vertices, faces = np.asarray(vertices, np.float32), np.asarray(faces, np.int32)
    header = ("ply\nformat binary_little_endian 1.0\ncomment o2a export: posed 3DMM fit, world frame, metres\n"
              f"element vertex {len(vertices)}\nproperty float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\n"
              f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n").encode()
    vertex = np.zeros(len(vertices), dtype=[("xyz", "<f4", 3), ("rgb", "u1", 3)])
    vertex["xyz"], vertex["rgb"] = vertices, 200
    face = np.zeros(len(faces), dtype=[("n", "u1"), ("ids", "<i4", 3)])
    face["n"], face["ids"] = 3, faces
    return header + vertex.tobytes() + face.tobytes()


def write_cameras(folder: Path, fmt: str, cameras: Mapping[str, Camera], image_exts: Mapping[str, str],
                  masks: bool, mesh: bool) -> None:
    """The format's camera files for the frame in ``folder``."""
    if fmt == "nerfstudio":
        doc = cameras_to_transforms(cameras, {cam: image_path(cam, image_exts[cam]) for cam in cameras})
        for frame in doc["frames"]:
            if masks:
                frame["mask_path"] = mask_path(frame["camera_id"])
        if mesh:
            doc["ply_file_path"] = layout.EXPORT_MESH_FILE
        doc["orientation_override"] = "none"  # nerfstudio's parser would otherwise re-orient the world
        atomic_write_json(folder / layout.TRANSFORMS_FILE, doc)
    elif fmt == "colmap":
        exts = set(image_exts.values())
        if len(exts) != 1:
            raise ValueError(f"a COLMAP model names images by one extension; this frame mixes {sorted(exts)}")
        write_colmap_model(cameras, folder / layout.EXPORT_COLMAP_DIR, image_ext=f".{exts.pop()}")
    elif fmt == "images":
        write_calibration(folder / layout.CALIBRATION_FILE, Calibration(dict(cameras)))
    else:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")


def fit_document(fit: Mapping, views: Mapping[str, Mapping], mesh: bool) -> dict:
    """``fit.json``: the frame's 3DMM parameters, each view's fit status, and where the mesh is."""
    return {"model": fit["model"], "identity": fit["identity"], "expression": fit["expression"],
            "rotation": fit["rotation"], "translation": fit["translation"], "frame_status": fit["frame_status"],
            "pose": "model-frame vertex X is posed as X @ rotation^T + translation (world frame, metres)",
            "mesh": layout.EXPORT_MESH_FILE if mesh else None, "views": dict(views)}
