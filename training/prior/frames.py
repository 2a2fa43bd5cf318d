"""Loader samples -> training frames: a square head crop with a camera ray per pixel.

A frame holds the crop (``rgb``, ``mask``), its camera (crop intrinsics ``K``, the
lens ``dist``, world-to-camera ``R``/``t``), the unit ray of every crop pixel
(``dirs``, camera frame) and the frame's 3DMM fit.

The field lives in metres around the fitted mesh, so every image is cropped to
the projected mesh (``crop_scale`` x its larger extent, centred) and resampled to
``resolution`` x ``resolution``; the camera follows exactly (scale + shift of the
pixel grid). Lens distortion is undone per pixel here, once: a frame carries the
unit ray direction of every crop pixel in the *camera* frame, so the trainer (and
few-shot camera refinement) only has to rotate them by the camera pose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import cv2
import numpy as np
import torch

from capture_schema.cameras import project_points
from fitting.camera_model import undistort_normalized
from fitting.face_models.base import FaceModel

#: Colour the head is composited onto where a mask says "background" (and what the field renders there).
MASKED_BACKGROUND = 1.0


@dataclass(frozen=True)
class CropWindow:
    """``crop_pixel = scale * image_pixel + offset`` (OpenCV pixel centres on both sides)."""

    scale: float
    offset: tuple[float, float]
    size: int

    def matrix(self) -> np.ndarray:
        return np.array([[self.scale, 0.0, self.offset[0]], [0.0, self.scale, self.offset[1]]])

    def to_image(self, crop_xy: np.ndarray) -> np.ndarray:
        return (crop_xy - np.asarray(self.offset)) / self.scale

    def intrinsics(self, K: np.ndarray) -> np.ndarray:
        """The crop's camera matrix (the lens distortion, in normalised coordinates, is unchanged)."""
        A = np.vstack([self.matrix(), [0.0, 0.0, 1.0]])
        return A @ np.asarray(K, np.float64)


def head_crop(pixels: np.ndarray, size: int, crop_scale: float) -> CropWindow:
    """The square window around projected mesh ``pixels``, resampled to ``size`` px."""
    lo, hi = pixels.min(axis=0), pixels.max(axis=0)
    centre, extent = (lo + hi) / 2, float((hi - lo).max())
    if not np.isfinite(extent) or extent <= 0:
        raise ValueError("the mesh projects to a degenerate box")
    scale = size / (crop_scale * extent)
    offset = (size - 1) / 2 - scale * centre
    return CropWindow(float(scale), (float(offset[0]), float(offset[1])), int(size))


def head_window(vertices: np.ndarray, rotation: np.ndarray, head_depth: float, K: np.ndarray, dist: np.ndarray,
                R: np.ndarray, t: np.ndarray, size: int, crop_scale: float) -> CropWindow:
    """The head crop of posed ``vertices`` (N, 3) seen by camera ``K``, ``dist``, ``R``, ``t``: the face mesh and its
    copy ``head_depth`` behind it along the head's +z (``rotation``: model-to-world; 3DMMs stop at the ears), so
    training frames and any other rendering of the prior are framed alike."""
    back = np.asarray(rotation) @ np.array([0.0, 0.0, head_depth])  # model +z points to the back of the head
    head = np.concatenate([vertices, vertices + back])
    return head_crop(project_points(head, K, dist, R, t), size, crop_scale)


def crop_camera_rays(window: CropWindow, K: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """(size, size, 3) float32 unit directions, camera frame, through every crop pixel (distortion undone)."""
    n = window.size
    grid = np.stack(np.meshgrid(np.arange(n, dtype=np.float64), np.arange(n, dtype=np.float64)), axis=-1)
    image_xy = window.to_image(grid.reshape(-1, 2))
    normalized = undistort_normalized(image_xy, K, dist)
    dirs = np.concatenate([normalized, np.ones((len(normalized), 1))], axis=1)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    return dirs.reshape(n, n, 3).astype(np.float32)


def warp(image_hwc: np.ndarray, window: CropWindow, border: int, value: float = 0.0) -> np.ndarray:
    return cv2.warpAffine(image_hwc, window.matrix(), (window.size, window.size), flags=cv2.INTER_LINEAR,
                          borderMode=border, borderValue=value)


class FramePreparer:
    """Turns decoded loader samples into head-crop frames; samples without a usable fit are dropped.

    Picklable (DataLoader workers get a copy): holds the face model, the subject
    order (subject id -> latent row) and the crop settings.
    """

    def __init__(self, face_model: FaceModel, subjects: Sequence[str], resolution: int, crop_scale: float,
                 head_depth: float = 0.0) -> None:
        self.face_model = face_model
        self.subject_index = {s: i for i, s in enumerate(subjects)}
        self.resolution, self.crop_scale, self.head_depth = int(resolution), float(crop_scale), float(head_depth)
        self.dropped: list[tuple[str, str]] = []

    def __call__(self, src: Iterable[dict]) -> Iterator[dict]:
        for sample in src:
            frame = self.prepare(sample)
            if frame is not None:
                yield frame

    def prepare(self, sample: dict) -> dict | None:
        """The frame of one sample, or None (no fit, fit from another model, unknown subject)."""
        meta, fit = sample["meta"], sample["fit"]
        key = sample["key"]
        if fit is None or (meta.get("fit") or {}).get("frame_status") == "not_fitted":
            self.dropped.append((key, "no 3DMM fit"))
            return None
        if meta["fit"].get("model") != self.face_model.name:
            self.dropped.append((key, f"fitted with {meta['fit'].get('model')!r}, not {self.face_model.name!r}"))
            return None
        subject = self.subject_index.get(meta["subject_id"])
        if subject is None:
            self.dropped.append((key, "subject not in the prior's subject list"))
            return None
        cam = sample["camera"]
        K, dist, R, t = (cam[k].double().numpy() for k in ("K", "dist", "R", "t"))
        params = {k: fit[k].double().numpy() for k in ("identity", "expression", "rotation", "translation")}
        vertices = self.face_model.vertices(params["identity"], params["expression"], params["rotation"],
                                            params["translation"])
        window = head_window(vertices, params["rotation"], self.head_depth, K, dist, R, t, self.resolution,
                             self.crop_scale)
        rgb = warp(np.ascontiguousarray(sample["image"].permute(1, 2, 0).numpy()), window, cv2.BORDER_REPLICATE)
        mask = sample.get("mask")
        if mask is not None:
            mask = torch.from_numpy(warp(np.ascontiguousarray(mask[0].numpy()), window, cv2.BORDER_CONSTANT))[None]
        return {
            "key": key, "subject": subject, "subject_id": meta["subject_id"],
            "expression_name": meta["expression"], "camera_id": meta["camera_id"],
            "rgb": torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous(),
            "mask": mask,
            "dirs": torch.from_numpy(crop_camera_rays(window, K, dist)),
            "K": torch.from_numpy(window.intrinsics(K)).float(), "dist": torch.from_numpy(dist).float(),
            "R": torch.from_numpy(R).float(), "t": torch.from_numpy(t).float(),
            **{k: torch.from_numpy(v).float() for k, v in params.items()},
        }


def collate_frames(frames: list[dict]) -> dict[str, Any]:
    """Stack frames; a missing mask becomes zeros with ``has_mask`` False."""
    out: dict[str, Any] = {k: [f[k] for f in frames] for k in ("key", "subject_id", "expression_name", "camera_id")}
    out["subject"] = torch.tensor([f["subject"] for f in frames], dtype=torch.long)
    for k in ("rgb", "dirs", "K", "dist", "R", "t", "identity", "expression", "rotation", "translation"):
        out[k] = torch.stack([f[k] for f in frames])
    has_mask = [f["mask"] is not None for f in frames]
    size = frames[0]["rgb"].shape[-2:]
    out["mask"] = torch.stack([f["mask"] if f["mask"] is not None else torch.zeros(1, *size) for f in frames])
    out["has_mask"] = torch.tensor(has_mask)
    return out


def masked_target(rgb: torch.Tensor, mask: torch.Tensor, has_mask: torch.Tensor) -> torch.Tensor:
    """What the prior should render: ``rgb`` composited onto ``MASKED_BACKGROUND`` by ``mask`` (which
    broadcasts against ``rgb``) for frames with a mask, the raw colours for frames (``has_mask`` (B,)) without."""
    composited = rgb * mask + MASKED_BACKGROUND * (1 - mask)
    return torch.where(has_mask.view(-1, *[1] * (rgb.dim() - 1)), composited, rgb)


def posed_vertices(face_model: FaceModel, identity: torch.Tensor, expression: torch.Tensor,
                   rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """(B, V, 3) world vertices, differentiable in every argument (few-shot refines expression and pose)."""
    model_frame = face_model.vertices_torch(identity, expression)
    return torch.einsum("bij,bvj->bvi", rotation, model_frame.to(rotation.dtype)) + translation[:, None, :]
