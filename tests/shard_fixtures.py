"""Tiny synthetic ``o2a.shard/1`` shards, written by hand with ``wds.TarWriter`` per the contract.

Images encode their grid position in their colour (so decoding can be checked);
json is complete (camera, optional fit/train block) with sorted keys.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import webdataset as wds

from capture_schema import derived_layout as layout
from training.shards.format import (JSON_MEMBER, MASK_MEMBER, SHARD_FORMAT, TAR_GROUP, TAR_MODE, TAR_MTIME,
                                    TAR_USER, TRAIN_MEMBER, train_size)


@dataclass(frozen=True)
class ShardSet:
    urls: list[str]
    keys: list[str]  # in write order
    cells: dict[str, tuple[str, str, str]]  # key -> (subject_id, camera_id, expression)
    shard_of: dict[str, str]  # key -> url of the shard holding it


def image_colour(s: int, e: int, c: int) -> tuple[int, int, int]:
    """BGR colour of the synthetic image of subject s, expression e, camera c."""
    return (20 + 40 * s) % 256, (30 + 20 * e) % 256, (40 + 25 * c) % 256


def camera_dict(width: int, height: int, c: int) -> dict:
    return {"width": width, "height": height, "fx": 1.2 * width, "fy": 1.25 * width,
            "cx": width / 2 - 0.5 + c, "cy": height / 2 - 0.5 - c, "dist": [0.01 * c, 0.0, 0.0, 0.0, 0.0],
            "R": np.eye(3).tolist(), "t": [0.0, 0.0, 1.0 + 0.1 * c]}


def _encode(image: np.ndarray, fmt: str) -> bytes:
    ok, buf = cv2.imencode("." + fmt, image)
    assert ok
    return buf.tobytes()


def write_shards(
    root: Path,
    n_subjects: int = 2,
    n_views: int = 3,
    n_expressions: int = 2,
    *,
    max_samples: int = 3,
    size: tuple[int, int] = (40, 30),
    image_format: str = "jpg",
    train_resolution: int | None = None,
    with_mask: bool = False,
    with_fit: bool = False,
    corrupt: frozenset[str] = frozenset(),
) -> ShardSet:
    """One session per subject, ``shards/<session>/<session>-NNNNNN.tar`` + ``shards.json``.

    ``corrupt``: keys whose image (and train.png) bytes are replaced by garbage.
    """
    width, height = size
    urls, keys, cells, shard_of = [], [], {}, {}
    for s in range(n_subjects):
        subject, session = f"subj{s:02d}", f"sess{s:02d}"
        folder = root / layout.shards_dir(session)
        folder.mkdir(parents=True, exist_ok=True)
        samples = []
        for e in range(n_expressions):
            for c in range(n_views):
                expression, camera = f"expr{e:02d}", f"cam{c:02d}"
                key = f"{session}/{expression}/{camera}"
                image = np.full((height, width, 3), image_colour(s, e, c), np.uint8)
                data = _encode(image, image_format)
                meta = {
                    "format": SHARD_FORMAT, "subject_id": subject, "session_id": session,
                    "expression": expression, "camera_id": camera,
                    "image": {"format": image_format, "width": width, "height": height,
                              "sha256": hashlib.sha256(data).hexdigest(), "member": image_format},
                    "camera": camera_dict(width, height, c),
                    "fit": None, "landmarks": None, "train": None,
                }
                sample = {"__key__": key}
                if with_fit:
                    meta["fit"] = {"model": "toy", "identity": [0.1 * s] * 4, "expression": [0.1 * e] * 3,
                                   "rotation": np.eye(3).tolist(), "translation": [0.0, 0.0, 0.01 * s],
                                   "frame_status": "ok", "view_status": "ok", "rmse_px": 1.0}
                if train_resolution is not None:
                    tw, th = train_size(width, height, train_resolution)
                    small = cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA)
                    sample[TRAIN_MEMBER] = _encode(small, "png")
                    meta["train"] = {"resolution": train_resolution, "member": TRAIN_MEMBER,
                                     "mask_member": MASK_MEMBER if with_mask else None}
                    if with_mask:
                        mask = np.zeros((th, tw), np.uint8)
                        mask[th // 4: 3 * th // 4, tw // 4: 3 * tw // 4] = 255
                        sample[MASK_MEMBER] = _encode(mask, "png")
                if key in corrupt:
                    data = b"not an image at all"
                    if TRAIN_MEMBER in sample:
                        sample[TRAIN_MEMBER] = data
                sample[image_format] = data
                sample[JSON_MEMBER] = json.dumps(meta, sort_keys=True).encode("utf-8")
                samples.append(sample)
                keys.append(key)
                cells[key] = (subject, camera, expression)
        index = []
        for n, start in enumerate(range(0, len(samples), max_samples)):
            name = layout.shard_name(session, n)
            tmp = folder / f".{name}.tmp"
            with open(tmp, "wb") as fh, wds.TarWriter(fh, mtime=TAR_MTIME, user=TAR_USER, group=TAR_GROUP,
                                                 mode=TAR_MODE) as writer:
                for sample in samples[start:start + max_samples]:
                    writer.write(sample)
            os.replace(tmp, folder / name)
            blob = (folder / name).read_bytes()
            index.append({"name": name, "n_samples": len(samples[start:start + max_samples]),
                          "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()})
            urls.append(str(folder / name))
            shard_of.update({sample["__key__"]: urls[-1] for sample in samples[start:start + max_samples]})
        (folder / layout.SHARDS_INDEX_FILE).write_text(
            json.dumps({"shards": index, "config": {"max_samples": max_samples}}, sort_keys=True))
    return ShardSet(urls, keys, cells, shard_of)
