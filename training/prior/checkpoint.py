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

from capture_schema import derived_layout as layout
from capture_schema.atomic import atomic_write_bytes

CHECKPOINT_FORMAT = "o2a.avatar_prior/1"
CHECKPOINT_NAME = layout.CHECKPOINT_FILE  # the name in every folder a prior or an avatar is trained into
#: Keys every checkpoint holds (a trained prior, or an adapted avatar of ``training.fewshot``).
MODEL_KEYS = ("architecture", "subjects", "model")
#: Keys of ``AvatarPrior.architecture()``, which ``load_prior`` rebuilds the model from.
ARCHITECTURE_KEYS = ("config", "n_subjects", "n_expression", "anchor_ids")
#: Further keys of a training checkpoint (what resuming needs); an adapted avatar has ``fewshot`` instead.
TRAINING_KEYS = ("optimizer", "step", "positions", "history", "train_seconds")


class CheckpointError(ValueError):
    """A checkpoint file that is not an avatar prior checkpoint (or not one this code reads).

    The message names the file and, for an incomplete checkpoint, the missing key(s).
    """


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
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is not a loadable avatar prior checkpoint: the file is empty")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated file, a pickle with code in it, not a torch file at all
        raise CheckpointError(f"{path} is not a loadable avatar prior checkpoint: {_load_failure(exc)}") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path}: expected format {CHECKPOINT_FORMAT!r}, found {found!r}")
    _require(path, data, MODEL_KEYS + (() if "fewshot" in data else TRAINING_KEYS), "")
    if not isinstance(data["architecture"], dict):
        raise CheckpointError(f"{path}: 'architecture' should be a dict, found {type(data['architecture']).__name__}")
    _require(path, data["architecture"], ARCHITECTURE_KEYS, "architecture.")
    if not isinstance(data["model"], dict):
        raise CheckpointError(f"{path}: 'model' should be a state dict, found {type(data['model']).__name__}")
    return data


def _load_failure(exc: Exception) -> str:
    """The useful part of ``torch.load``'s complaint (its weights-only advice to retry unsafely left out)."""
    text = str(exc).strip()
    if "WeightsUnpickler error:" in text:
        text = "not a torch file of tensors and plain data only (" + \
            text.split("WeightsUnpickler error:", 1)[1].strip().split("\n\n")[0].strip()[:200] + ")"
    return f"{type(exc).__name__}: {' '.join(text.split())[:300]}" if text else type(exc).__name__


def _require(path: Path, data: dict, keys: tuple[str, ...], prefix: str) -> None:
    missing = [k for k in keys if k not in data]
    if missing:
        raise CheckpointError(f"{path}: incomplete avatar prior checkpoint, missing key(s) "
                              f"{', '.join(repr(prefix + k) for k in missing)}")


def load_prior(path: str | os.PathLike[str], map_location: str | torch.device = "cpu"):
    """``(model, checkpoint)``: the trained ``AvatarPrior`` in eval mode, and the checkpoint's other fields.

    ``CheckpointError`` (naming the file) for anything that is not a complete, consistent
    checkpoint: foreign or truncated files, missing keys, weights that do not fit the architecture.
    """
    from training.prior.model import AvatarPrior

    data = load_checkpoint(path, map_location)
    try:
        model = AvatarPrior.from_architecture(data["architecture"])
        model.load_state_dict(data["model"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:  # RuntimeError: state dict mismatch
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise CheckpointError(f"{path}: cannot rebuild the avatar prior it records "
                              f"({type(exc).__name__}: {detail})") from None
    return model.to(map_location).eval(), data
