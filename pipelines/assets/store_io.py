"""What the training-side assets share: loading the face model and turning stage errors into failures.

The stage functions below (``training.*.stage``) raise ``StageError`` naming what to do;
an asset fails with the same text, so every asset fails the same way as the CLI.
"""

from contextlib import contextmanager
from typing import Iterator

import dagster as dg

from pipelines.resources import FaceModelResource
from training.stage_io import StageError


@contextmanager
def stage_failures() -> Iterator[None]:
    """Run a stage function: its ``StageError`` becomes a ``dg.Failure`` with the same message."""
    try:
        yield
    except StageError as exc:
        raise dg.Failure(str(exc)) from None


def load_face_model(face_model: FaceModelResource):
    """The configured face model; a missing or broken model file fails the asset, naming the kind."""
    try:
        return face_model.load()
    except (OSError, ValueError) as exc:
        raise dg.Failure(f"face model {face_model.kind!r} could not be loaded: {exc}") from None
