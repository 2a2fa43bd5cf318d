"""Check a shard against the ``o2a.shard/1`` contract without trusting its writer.

Every problem is recorded against the sample it concerns (or the shard, for a
tar that cannot be read), so one damaged image does not hide the state of the
other samples: the report is the answer, never an exception. Only a missing
file raises (``FileNotFoundError``), since there is nothing to report on. The
tar is read by ``training.shards.read``, the reader the training loader uses.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from capture_schema.storage import local_path_of
from training.shards.format import FORMAT_FIELD, IMAGE_BLOCK, JSON_MEMBER, KEY_FIELDS, SHARD_FORMAT, TRAIN_BLOCK
from training.shards.read import shard_runs


@dataclass
class SampleReport:
    """One sample: its members (extension, bytes) in tar order and what is wrong with it."""

    key: str
    members: list[tuple[str, int]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self.members)


@dataclass
class ShardReport:
    path: str  # a local path or a URL (``s3://...``), as given
    samples: list[SampleReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # about the tar itself

    @property
    def ok(self) -> bool:
        return not self.problems and all(s.ok for s in self.samples)

    @property
    def bad_samples(self) -> list[SampleReport]:
        return [s for s in self.samples if not s.ok]

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "ok": self.ok, "problems": self.problems,
                "samples": [{"key": s.key, "members": dict(s.members), "problems": s.problems} for s in self.samples]}


def _decode(data: bytes, flags: int) -> np.ndarray | None:
    import cv2

    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        return None


def _check_image(members: dict[str, bytes], ext: str | None, what: str, size: tuple[Any, Any] | None,
                 flags: int) -> tuple[list[str], np.ndarray | None]:
    if not isinstance(ext, str) or ext not in members:
        return [f"{what} member .{ext} is missing"], None
    image = _decode(members[ext], flags)
    if image is None:
        return [f"{what} member .{ext} does not decode"], None
    if size is not None and (image.shape[1], image.shape[0]) != tuple(size):
        return [f"{what} member .{ext} is {image.shape[1]}x{image.shape[0]} px, the json says {size[0]}x{size[1]}"], image
    return [], image


def check_sample(key: str, members: dict[str, bytes]) -> list[str]:
    """Problems of one sample given its members by extension (empty when it meets the contract)."""
    import cv2

    if JSON_MEMBER not in members:
        return ["no .json member"]
    try:
        record = json.loads(members[JSON_MEMBER].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [f".json does not parse: {exc}"]
    if not isinstance(record, dict) or record.get(FORMAT_FIELD) != SHARD_FORMAT:
        got = record.get(FORMAT_FIELD) if isinstance(record, dict) else type(record).__name__
        return [f".json format is {got!r}, expected {SHARD_FORMAT!r}"]
    problems: list[str] = []
    named = "/".join(str(record.get(k)) for k in KEY_FIELDS)
    if named != key:
        problems.append(f".json names the sample {named!r}")
    described = {JSON_MEMBER}
    image = record.get(IMAGE_BLOCK) if isinstance(record.get(IMAGE_BLOCK), dict) else {}
    ext = image.get("member")
    described.add(ext)
    found, _ = _check_image(members, ext, "image", (image.get("width"), image.get("height")),
                            cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    problems += found
    if ext in members and hashlib.sha256(members[ext]).hexdigest() != image.get("sha256"):
        problems.append(f"image member .{ext} does not match the sha256 in the json")
    train = record.get(TRAIN_BLOCK)
    if isinstance(train, dict):
        size = (train.get("width"), train.get("height"))
        described.add(train.get("member"))
        problems += _check_image(members, train.get("member"), "train", size, cv2.IMREAD_COLOR)[0]
        if train.get("mask_member") is not None:
            described.add(train["mask_member"])
            found, mask = _check_image(members, train["mask_member"], "mask", size, cv2.IMREAD_UNCHANGED)
            problems += found
            if mask is not None and (mask.ndim != 2 or not np.isin(mask, (0, 255)).all()):
                problems.append("mask is not a single-channel 0/255 image")
    problems += [f"member .{e} is not described by the json" for e in members if e not in described]
    return problems


def _exists(url: str, storage_options: dict[str, Any] | None) -> bool:
    local = local_path_of(url)
    if local is not None:
        return local.is_file()
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs.isfile(path)


def inspect_shard(path: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> ShardReport:
    """List a shard's samples and check each one; see ``check_sample`` for what is checked.

    ``path`` is a local path, a ``file://`` URL or any fsspec URL (``s3://bucket/...``, read
    as a stream, as the loader reads it). A sample is checked once, from its first contiguous
    run of members; a run cut off by an unreadable tar is listed and checked with the members
    read before reading stopped.
    """
    path = str(path)
    if not _exists(path, storage_options):
        raise FileNotFoundError(f"{path}: no such shard")
    report = ShardReport(path)
    by_key: dict[str, SampleReport] = {}

    def skipped(name: str, reason: str) -> None:
        report.problems.append(f"{name}: {reason}")

    try:
        for key, members in shard_runs(path, storage_options, on_skip=skipped, keep_partial=True):
            sample = by_key.get(key)
            first_run = sample is None
            if not first_run:  # seen before with other samples in between
                sample.problems.append(f"members are not contiguous (.{members[0][0]} comes after other samples)")
            else:
                sample = by_key[key] = SampleReport(key)
                report.samples.append(sample)
            data: dict[str, bytes] = {}
            for ext, payload in members:
                if any(e == ext for e, _ in sample.members):
                    sample.problems.append(f"member .{ext} appears twice")
                sample.members.append((ext, len(payload)))
                data[ext] = payload
            if first_run:
                sample.problems.extend(check_sample(key, data))
    except (ValueError, OSError) as exc:
        report.problems.append(f"the tar cannot be read to the end: {exc}")
    return report
