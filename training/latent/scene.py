"""Where latent-space renderings happen: one captured frame's camera and head pose, any code and 3DMM shape.

A code alone does not make an image: the prior renders radiance anchored to a posed
3DMM mesh seen by a camera. Every interpolation and sample is therefore rendered on a
*reference frame* from the dataset index (a subject's frame for one camera and
expression: its calibrated camera, fitted head pose and fitted 3DMM), with the code and
the 3DMM identity / expression coefficients chosen per image. All images of one call
share a single crop window (around every mesh of the call), so image differences
come from the avatars, never from re-cropping.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa
import torch

from capture_schema.cameras import project_points
from fitting.face_models.base import FaceModel
from training.prior.frames import crop_camera_rays, head_window, posed_vertices
from training.prior.model import AvatarPrior, render_frames


class LatentInputError(ValueError):
    """A subject, camera, expression or code the latent tools cannot use; the message lists valid choices."""


@dataclass(frozen=True)
class ReferenceFrame:
    """One captured frame: its camera (the prior's crop camera: ``K`` at the training resolution, lens
    ``dist``, world-to-camera ``R``/``t``), its 3DMM fit and the captured crop (RGB uint8, mask applied)."""

    key: str
    subject_id: str
    camera_id: str
    expression_name: str
    K: np.ndarray
    dist: np.ndarray
    R: np.ndarray
    t: np.ndarray
    identity: np.ndarray
    expression: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    image: np.ndarray


@dataclass(frozen=True)
class Rendered:
    """Images (B, H, W, 3) float32 in [0, 1], and each image's conditioning-mesh landmarks in its pixels."""

    images: np.ndarray
    landmarks: np.ndarray
    """(B, L, 2) OpenCV pixels of the face model's embedded mediapipe landmarks."""
    landmark_ids: np.ndarray
    """(L,) the mediapipe ids of ``landmarks``' rows."""


def _index_table(index: pa.Table | str | os.PathLike[str]) -> pa.Table:
    from training.prior.dataset import read_index

    return read_index(index)


def check_choice(what: str, wanted: Sequence[str], valid: Sequence[str], where: str) -> None:
    """``LatentInputError`` naming every ``wanted`` value not in ``valid`` and listing the valid ones."""
    unknown = [w for w in wanted if w not in set(valid)]
    if unknown:
        raise LatentInputError(f"unknown {what} {', '.join(map(repr, unknown))} in {where}; valid: "
                               f"{', '.join(sorted(valid)) or 'none'}")


def load_reference_frames(index: pa.Table | str | os.PathLike[str], subjects: Sequence[str], camera_id: str,
                          expression: str, face_model: FaceModel, resolution: int, crop_scale: float,
                          head_depth: float) -> dict[str, ReferenceFrame]:
    """Each subject's frame of ``camera_id`` and ``expression`` (first session), read from its shards.

    ``LatentInputError`` lists the valid ids when a subject, camera or expression is not in the
    index, or when that frame has no 3DMM fit of ``face_model``.
    """
    from training.loader import SampleFilter
    from training.prior.config import PriorConfig
    from training.prior.dataset import frame_loader, prior_data_from_index

    table = _index_table(index)
    df = table.to_pandas()
    check_choice("subject", subjects, df["subject_id"].unique(), "the dataset index")
    rows = df[df["subject_id"].isin(list(subjects))]
    check_choice("camera", [camera_id], rows["camera_id"].unique(), f"the sessions of {', '.join(subjects)}")
    check_choice("expression", [expression], rows["expression"].unique(), f"the sessions of {', '.join(subjects)}")
    rows = rows[(rows["camera_id"] == camera_id) & (rows["expression"] == expression)].sort_values("key")
    keys = frozenset(rows.groupby("subject_id")["key"].first())
    config = PriorConfig(resolution=resolution, crop_scale=crop_scale, head_depth=head_depth, num_workers=0,
                         shuffle_buffer=0, images_per_batch=1)
    frames: dict[str, ReferenceFrame] = {}
    for split in sorted(rows["split"].unique()):
        data = prior_data_from_index(table, split, SampleFilter(keys=keys))
        for batch in frame_loader(data, face_model, config, shuffle=False, rank=0, world_size=1):
            frame = _reference(batch)
            frames.setdefault(frame.subject_id, frame)
    missing = [s for s in subjects if s not in frames]
    if missing:
        raise LatentInputError(f"no usable {face_model.name} 3DMM fit for {camera_id}/{expression} of "
                               f"{', '.join(missing)}; choose another camera or expression")
    return frames


def _reference(batch: dict) -> ReferenceFrame:
    from training.prior.frames import masked_target

    def arr(name: str) -> np.ndarray:
        return batch[name][0].double().numpy()

    target = masked_target(batch["rgb"], batch["mask"], batch["has_mask"])[0]
    image = to_uint8(target.permute(1, 2, 0).numpy())
    return ReferenceFrame(batch["key"][0], batch["subject_id"][0], batch["camera_id"][0],
                          batch["expression_name"][0], arr("K"), arr("dist"), arr("R"), arr("t"), arr("identity"),
                          arr("expression"), arr("rotation"), arr("translation"), np.ascontiguousarray(image))


def _posed(face_model: FaceModel, frame: ReferenceFrame, identities: np.ndarray,
           expressions: np.ndarray) -> torch.Tensor:
    B = len(identities)
    return posed_vertices(face_model, torch.as_tensor(identities, dtype=torch.float32),
                          torch.as_tensor(expressions, dtype=torch.float32),
                          torch.as_tensor(frame.rotation, dtype=torch.float32).expand(B, 3, 3),
                          torch.as_tensor(frame.translation, dtype=torch.float32).expand(B, 3))


@torch.no_grad()
def render_avatars(prior: AvatarPrior, face_model: FaceModel, frame: ReferenceFrame, codes: np.ndarray,
                   identities: np.ndarray, expressions: np.ndarray, resolution: int,
                   head_depth: float | None = None, crop_scale: float | None = None) -> Rendered:
    """Render avatar ``i`` = (``codes[i]``, 3DMM ``identities[i]``, ``expressions[i]``) on ``frame``'s camera and
    head pose at ``resolution`` px, all in one crop window; returns the images and the meshes' landmarks."""
    codes, identities, expressions = (np.atleast_2d(np.asarray(a, np.float64)) for a in (codes, identities, expressions))
    if not len(codes) == len(identities) == len(expressions):
        raise ValueError(f"codes, identities and expressions must have one row per avatar "
                         f"({len(codes)}, {len(identities)}, {len(expressions)})")
    if codes.shape[1] != prior.config.latent_dim:
        raise LatentInputError(f"codes have {codes.shape[1]} values; this prior's codes have {prior.config.latent_dim}")
    cfg = prior.config
    depth = cfg.head_depth if head_depth is None else head_depth
    vertices = _posed(face_model, frame, identities, expressions)
    window = head_window(vertices.reshape(-1, 3).double().numpy(), frame.rotation, depth, frame.K, frame.dist,
                         frame.R, frame.t, resolution, cfg.crop_scale if crop_scale is None else crop_scale)
    K = window.intrinsics(frame.K)
    B = len(codes)
    dirs = torch.from_numpy(crop_camera_rays(window, frame.K, frame.dist))[None].expand(B, -1, -1, -1)
    device = next(prior.parameters()).device

    def dev(a, shape=None) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)
        return x if shape is None else x.expand(*shape)

    out = render_frames(prior, dev(codes), dev(expressions), vertices.to(device), dev(frame.rotation, (B, 3, 3)),
                        dev(frame.translation, (B, 3)), dirs.to(device).contiguous(), dev(frame.R, (B, 3, 3)),
                        dev(frame.t, (B, 3)), torch.ones(B, dtype=torch.bool, device=device))
    images = out["rgb"].clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)
    embedding = face_model.landmark_embedding
    points = embedding.points(vertices.double().numpy())
    landmarks = np.stack([project_points(p, K, frame.dist, frame.R, frame.t) for p in points])
    return Rendered(images, landmarks, np.asarray(embedding.landmark_ids))


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] -> uint8 (rounded)."""
    return (np.clip(np.asarray(images), 0, 1) * 255 + 0.5).astype(np.uint8)
