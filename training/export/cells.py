"""Read the selected cells out of the shards, one frame (session, expression) at a time.

An export needs a few cells of a few sessions, never the dataset: the index says
which shard holds each selected key, each of those shards is streamed once
(``training.shards.read``, local or any fsspec URL) and a shard stops being read
once its last wanted sample has passed. Samples are in grid order inside a shard
(expressions, then cameras), so a frame's cells arrive together and are handed
on as soon as the frame is complete: memory holds one frame, not a session.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator

import pandas as pd

from capture_schema.cameras import Camera
from training.shards.format import CAMERA_BLOCK, FIT_BLOCK, IMAGE_BLOCK, JSON_MEMBER, TRAIN_BLOCK
from training.shards.read import shard_runs
from training.stage_io import StageError


@dataclass(frozen=True)
class Cell:
    """One exported image: its ids, the shard json, the original image and the head mask (if any)."""

    key: str
    subject_id: str
    session_id: str
    expression: str
    camera_id: str
    meta: dict
    image: bytes
    image_ext: str  # the original's member extension: jpg or png
    mask: bytes | None  # mask.png at the training image's size, or None where the frame has no fit

    @property
    def camera(self) -> Camera:
        return Camera.from_dict(self.meta[CAMERA_BLOCK])

    @property
    def fit(self) -> dict | None:
        return self.meta.get(FIT_BLOCK)


def _cell(key: str, members: dict[str, bytes], url: str) -> Cell:
    if JSON_MEMBER not in members:
        raise StageError(f"shard {url}: sample {key!r} has no json member; run `o2a inspect {url}`")
    meta = json.loads(members[JSON_MEMBER])
    image_ext = meta[IMAGE_BLOCK]["member"]
    train = meta.get(TRAIN_BLOCK) or {}
    mask_member = train.get("mask_member")
    return Cell(key, meta["subject_id"], meta["session_id"], meta["expression"], meta["camera_id"], meta,
                members[image_ext], image_ext, members.get(mask_member) if mask_member else None)


def _shard_cells(url: str, wanted: set[str], storage_options: dict[str, Any] | None) -> Iterator[Cell]:
    left = set(wanted)
    for key, members in shard_runs(url, storage_options, skip_meta=True):
        if key in left:
            left.discard(key)
            yield _cell(key, dict(members), url)
            if not left:
                return  # the rest of the shard is not needed
    raise StageError(f"shard {url} does not hold {len(left)} sample(s) the index puts there "
                     f"(e.g. {sorted(left)[0]}): the index is stale; materialise dataset_index again")


def frames(rows: pd.DataFrame, storage_options: dict[str, Any] | None = None) -> Iterator[list[Cell]]:
    """The cells of ``rows`` (dataset-index rows) grouped by frame, each frame's cells in camera order of
    its shard; frames in shard order. A frame split over two shards is handed on when both are read."""
    expected = rows.groupby(["session_id", "expression"]).size().to_dict()
    pending: dict[tuple[str, str], list[Cell]] = {}
    for url, group in rows.groupby("shard_url", sort=True):
        for cell in _shard_cells(str(url), set(group.key), storage_options):
            frame = (cell.session_id, cell.expression)
            pending.setdefault(frame, []).append(cell)
            if len(pending[frame]) == expected[frame]:
                yield pending.pop(frame)
    if pending:  # cannot happen when every shard held its rows; kept as a guard against a bad index
        raise StageError(f"frames left incomplete after reading every shard: {sorted(pending)[:3]}")
