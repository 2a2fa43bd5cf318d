"""Prior checkpoints: one file, replaced atomically, loadable with ``torch.load(weights_only=True)``.

A checkpoint holds only tensors and plain Python data (no pickled classes), so
loading one never runs code from the file. It carries everything a resumed run
needs to continue exactly where it stopped: weights, optimiser state, the step,
each rank's position in the data stream, and the history so far.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from capture_schema.atomic import atomic_write_bytes

CHECKPOINT_FORMAT = "o2a.avatar_prior/1"
CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(ValueError):
    """A checkpoint file that is not an avatar prior checkpoint (or not one this code reads)."""


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus the format tag) to ``path`` via a temporary sibling and a rename."""
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **payload}, buf)
    return atomic_write_bytes(path, buf.getvalue(), durable=True)


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint at ``path``, read with ``weights_only=True``; clear errors for foreign files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated file, a pickle with code in it, not a torch file at all
        raise CheckpointError(f"{path} is not a loadable avatar prior checkpoint: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path}: expected format {CHECKPOINT_FORMAT!r}, found {found!r}")
    return data


def load_prior(path: str | os.PathLike[str], map_location: str | torch.device = "cpu"):
    """``(model, checkpoint)``: the trained ``AvatarPrior`` in eval mode, and the checkpoint's other fields."""
    from training.prior.model import AvatarPrior

    data = load_checkpoint(path, map_location)
    model = AvatarPrior.from_architecture(data["architecture"])
    model.load_state_dict(data["model"])
    return model.to(map_location).eval(), data
