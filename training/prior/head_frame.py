"""The head (model) frame: world points and vectors with a frame's head pose removed.

A frame's head pose is model-to-world: ``world = R m + t``. What must mean the same on
every frame (the neighbour table, the occupancy grid, the encoded offsets, the
tri-plane) lives in the model frame, ``m = R^T (world - t)``; these are the only places
that transform, so every grid and field agrees on the convention.
"""

from __future__ import annotations

import torch


def vectors_to_head_frame(vectors: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """World-frame vectors (B, P, ..., 3) in the head frame of frames with head ``rotation`` (B, 3, 3): R^T v."""
    B = vectors.shape[0]
    flat = vectors.reshape(B, -1, 3)
    return torch.einsum("bji,bpj->bpi", rotation, flat).reshape(vectors.shape)


def points_to_head_frame(points: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """World points (B, P, ..., 3) in the head frame of frames with head pose ``rotation``, ``translation`` (B, 3)."""
    shift = translation.reshape(translation.shape[0], *[1] * (points.dim() - 2), 3)
    return vectors_to_head_frame(points - shift, rotation)


def head_frame_to_world(local: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """Head-frame points (P, 3), the same for every frame, in the world of each frame: (B, P, 3) = R m + t."""
    return torch.einsum("bij,pj->bpi", rotation, local.to(rotation.dtype)) + translation[:, None, :]
