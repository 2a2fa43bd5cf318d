"""Writing session shards (``o2a.shard/1``): one webdataset sample per captured image, reproducibly.

The format (``training.shards.format``) is the contract with the reader: samples in
grid order (expressions, then cameras, in session.json order), the original image
bytes unchanged, a sorted-key JSON with the camera, 3DMM fit and landmarks, and
optionally a training-resolution image and head mask. Tars are written with
webdataset's ``TarWriter`` with every header field fixed (``format.TAR_*``: mtime 0,
uid/gid 0, one user/group name, mode 0444), so the same input gives byte-identical shards; each
tar is hashed while it is written (``_HashingSink``), so its sha256 costs no second read.

Crash safety: every shard of a run is written as ``.<name>.tmp`` and closed; only
when the whole set is complete are they renamed into place, ``shards.json`` is
replaced, and shards of an earlier run that this run did not write are removed.
A run killed part-way therefore leaves the previous set and its ``shards.json``
exactly as they were (plus invisible ``.tmp`` files, removed by the next run).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from capture_schema import derived_layout as layout
from capture_schema.atomic import atomic_write_json
from capture_schema.calibration_file import Calibration
from capture_schema.image_check import ImageCorrupt, ImageLimits, check_image_bytes, read_capture_file
from capture_schema.layout import is_valid_id, sample_key
from capture_schema.session import read_session
from fitting.landmarks.detect import session_image_path
from training.shards.format import (BLOCK, CAMERA_BLOCK, FIT_BLOCK, FORMAT_FIELD, IMAGE_BLOCK, IMAGE_EXTENSIONS,
                                    JSON_MEMBER, KEY_FIELDS, RECORD, SHARD_FORMAT, TAR_GROUP, TAR_MODE, TAR_MTIME,
                                    TAR_USER, TRAIN_BLOCK)

if TYPE_CHECKING:  # fitting.face_fit.session imports torch: not needed to write shards
    from fitting.face_fit.session import SessionFit
    from fitting.landmarks.detect import SessionLandmarks


class ShardInputError(ValueError):
    """The session cannot be sharded as given; the message says why and how to fix it."""


class CaptureChangedError(ShardInputError):
    """An image's bytes differ from what ingest recorded: the whole shard run fails (nothing is
    published), since publishing them under the manifest's hash would mix two versions of the data."""


@dataclass(frozen=True)
class ShardConfig:
    """How shards are cut and what goes into each sample."""

    max_bytes: int = 256 * 2**20
    """A new shard starts before a sample would push the tar past this size."""
    max_samples: int = 1000
    """... or past this many samples."""
    train_resolution: int | None = None
    """Longer side of the ``train.png`` member; None: no training image and no mask."""
    masks: bool = True
    """Add ``mask.png`` (grabCut head mask) where the frame has a fit; only with train_resolution."""

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_samples < 1:
            raise ValueError("max_bytes must be positive and max_samples at least 1")
        if self.train_resolution is not None and self.train_resolution < 8:
            raise ValueError("train_resolution must be None or at least 8 pixels")


@dataclass(frozen=True)
class ShardSample:
    """One sample: its key and its members by extension (``jpg``, ``json``, ``train.png``, ...)."""

    key: str
    members: Mapping[str, bytes]

    def __post_init__(self) -> None:
        if "." in self.key.rsplit("/", 1)[-1] or not self.key:
            raise ValueError(f"sample key {self.key!r} must be non-empty without dots (webdataset splits at the dot)")

    @property
    def tar_bytes(self) -> int:
        """Bytes the sample adds to a tar: a 512-byte header per member plus its data padded to 512."""
        return sum(BLOCK + -(-len(v) // BLOCK) * BLOCK for v in self.members.values())


@dataclass(frozen=True)
class SkippedSample:
    """A grid cell that did not become a sample, and why."""

    key: str
    reason: str


@dataclass(frozen=True)
class ShardInfo:
    """One published shard as ``shards.json`` lists it."""

    name: str
    n_samples: int
    bytes: int
    sha256: str
    keys: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "n_samples": self.n_samples, "bytes": self.bytes, "sha256": self.sha256,
                "keys": list(self.keys)}


@dataclass(frozen=True)
class ShardSet:
    """What ``write_session_shards`` published under ``out_dir``."""

    out_dir: Path
    prefix: str
    config: ShardConfig
    shards: tuple[ShardInfo, ...]
    skipped: tuple[SkippedSample, ...] = ()

    @property
    def n_samples(self) -> int:
        return sum(s.n_samples for s in self.shards)

    @property
    def total_bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    @property
    def index_path(self) -> Path:
        return self.out_dir / layout.SHARDS_INDEX_FILE

    @property
    def paths(self) -> list[Path]:
        return [self.out_dir / s.name for s in self.shards]


def _f32(value: float) -> float:
    """The shortest decimal of a float32: the JSON stays short and reads back to the same float32."""
    return float(str(np.float32(value)))


def _landmarks_block(lm: SessionLandmarks | None, e: str, c: str) -> dict | None:
    if lm is None or e not in lm.expressions or c not in lm.cameras:
        return None
    i, j = lm.expressions.index(e), lm.cameras.index(c)
    detected = bool(lm.detected[i, j])
    points = [[_f32(x), _f32(y)] for x, y in lm.landmarks[i, j]] if detected else None
    return {"detected": detected, "confidence": _f32(lm.confidence[i, j]), "points": points}


def _fit_cell(fit: SessionFit | None, e: str, c: str) -> tuple[int, int] | None:
    """(frame, view) of the cell in the fit, or None where the frame was not fitted (NaN parameters)."""
    if fit is None or e not in fit.expressions or c not in fit.cameras:
        return None
    i, f = fit.expressions.index(e), fit.fit
    if f.frame_status[i] == "not_fitted" or not all(np.isfinite(a[i]).all() for a in
                                                      (f.expression, f.rotation, f.translation, f.vertices)):
        return None
    return i, fit.cameras.index(c)


def _fit_block(fit: SessionFit, i: int, j: int) -> dict:
    f, rmse = fit.fit, float(fit.fit.view_rmse_px[i, j])
    return {"model": f.model_name, "identity": np.asarray(f.identity, np.float64).tolist(),
            **{k: np.asarray(getattr(f, k)[i], np.float64).tolist() for k in ("expression", "rotation", "translation")},
            "frame_status": str(f.frame_status[i]), "view_status": str(f.view_status[i, j]),
            "rmse_px": rmse if np.isfinite(rmse) else None}


def _manifest_rows(manifest: Any) -> dict[tuple[str, str], Mapping] | None:
    if manifest is None:
        return None
    rows = manifest.to_pylist() if hasattr(manifest, "to_pylist") else list(manifest)
    return {(r["expression"], r["camera_id"]): r for r in rows}


class SessionSamples:
    """The samples of one session in grid order; ``skipped`` lists the cells left out, and why."""

    def __init__(self, session_dir: str | os.PathLike[str], calibration: Calibration,
                 landmarks: SessionLandmarks | None = None, fit: SessionFit | None = None, manifest: Any = None,
                 *, config: ShardConfig = ShardConfig(), faces: np.ndarray | None = None) -> None:
        self.session_dir = Path(session_dir)
        info, problems = read_session(self.session_dir)
        if info is None:
            raise ShardInputError(f"{self.session_dir}: not a readable session ({problems[0].message}); "
                                  "run `o2a validate` on it")
        self.info, self.calibration, self.landmarks, self.fit = info, calibration, landmarks, fit
        self.rows, self.config, self.faces = _manifest_rows(manifest), config, faces
        self.limits = ImageLimits.from_env()
        self.skipped: list[SkippedSample] = []
        self._samples = self._generate()

    def __iter__(self) -> Iterator[ShardSample]:
        return self

    def __next__(self) -> ShardSample:
        return next(self._samples)

    def _generate(self) -> Iterator[ShardSample]:
        for e in self.info.expressions:
            for c in self.info.cameras:
                key = sample_key(self.info.session_id, e, c)
                try:
                    yield self._sample(key, e, c)
                except CaptureChangedError:
                    raise
                except ShardInputError as exc:
                    self.skipped.append(SkippedSample(key, str(exc)))

    def _read(self, e: str, c: str) -> tuple[bytes, str, str, str, int, int]:
        """Image bytes, member extension, sha256, format, width and height (from the manifest when given)."""
        row = None if self.rows is None else self.rows.get((e, c))
        if self.rows is not None and row is None:
            raise ShardInputError("not in the ingest manifest (missing or failed its ingest checks)")
        path = self.session_dir / row["relative_path"] if row else session_image_path(self.session_dir, e, c)
        if path is None or not os.path.lexists(path):
            raise ShardInputError("image file missing")
        try:
            data = read_capture_file(path, self.limits)
        except ImageCorrupt as exc:
            if row is not None:
                raise CaptureChangedError(f"{row['relative_path']}: {exc}; it passed ingest, so the capture "
                                          "changed since: re-run ingest (session_manifest)") from None
            raise ShardInputError(f"{path.name}: {exc}") from None
        ext = path.suffix[1:].lower()
        sha = hashlib.sha256(data).hexdigest()  # of the very bytes that go into the shard
        if row is not None:
            if sha != row["sha256"]:
                raise CaptureChangedError(
                    f"{row['relative_path']} changed since ingest (sha256 {sha[:12]}..., {len(data)} bytes; the "
                    f"manifest recorded {row['sha256'][:12]}..., {row['bytes']} bytes): re-run ingest "
                    "(session_manifest) so the manifest, landmarks and fits describe the bytes that are shipped")
            return data, ext, sha, IMAGE_EXTENSIONS[row["format"]], row["width"], row["height"]
        try:
            header = check_image_bytes(data, limits=self.limits)
        except ImageCorrupt as exc:
            raise ShardInputError(f"{path.name}: {exc}") from None
        return data, ext, sha, IMAGE_EXTENSIONS[header.format], header.width, header.height

    def _sample(self, key: str, e: str, c: str) -> ShardSample:
        camera = self.calibration.cameras.get(c)
        if camera is None:
            raise ShardInputError(f"the calibration has no camera {c!r}")
        data, ext, sha, fmt, width, height = self._read(e, c)
        if (width, height) != (camera.width, camera.height):
            raise ShardInputError(f"image is {width}x{height} px but camera {c} is calibrated at "
                                  f"{camera.width}x{camera.height}")
        cell = _fit_cell(self.fit, e, c)
        members = {ext: data}
        train = None
        if self.config.train_resolution:
            from training.foreground import train_members

            vertices, rotation = None, None
            if cell is not None and self.config.masks:
                vertices, rotation = self.fit.fit.vertices[cell[0]], self.fit.fit.rotation[cell[0]]
            extra, train = train_members(data, camera, self.config.train_resolution, vertices, self.faces, rotation)
            if extra is None:
                raise ShardInputError("image does not decode")
            members.update(extra)
        record = {
            FORMAT_FIELD: SHARD_FORMAT, "subject_id": self.info.subject_id,
            **dict(zip(KEY_FIELDS, (self.info.session_id, e, c))),
            IMAGE_BLOCK: {"format": fmt, "width": int(width), "height": int(height), "sha256": sha, "member": ext},
            CAMERA_BLOCK: camera.to_dict(),
            FIT_BLOCK: None if cell is None else _fit_block(self.fit, *cell),
            "landmarks": _landmarks_block(self.landmarks, e, c),
            TRAIN_BLOCK: train,
        }
        members[JSON_MEMBER] = json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
        return ShardSample(key, members)


def session_samples(session_dir: str | os.PathLike[str], calibration: Calibration,
                    landmarks: SessionLandmarks | None = None, fit: SessionFit | None = None, manifest: Any = None,
                    *, config: ShardConfig = ShardConfig(), faces: np.ndarray | None = None) -> SessionSamples:
    """A session's samples in grid order, reading each image once.

    ``manifest`` (the ingest manifest as a pyarrow table or rows) supplies sha256 and
    size; without it they are computed. ``faces`` (the fitted model's triangles) shape
    the mask seed; without them the convex hull of the projected mesh is used. Cells
    that cannot become a sample are listed in ``.skipped`` as iteration reaches them.
    """
    return SessionSamples(session_dir, calibration, landmarks, fit, manifest, config=config, faces=faces)


class _HashingSink:
    """Writes a file and hashes it on a background thread: hashlib and file writes release
    the GIL, so the hash overlaps with building the next samples instead of adding to it
    (measured: 0.59 -> 0.98 of plain tarfile's throughput). ~1 MiB hand-offs, at most 8 in flight."""

    CHUNK, MAX_IN_FLIGHT = 1 << 20, 8

    def __init__(self, path: Path) -> None:
        self.fh, self.sha, self.n = open(path, "wb"), hashlib.sha256(), 0
        self._pending: list[bytes] = []
        self._pending_n = 0
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._futures: deque[Future] = deque()

    def write(self, data: bytes) -> int:
        self._pending.append(bytes(data))
        self._pending_n += len(data)
        self.n += len(data)
        if self._pending_n >= self.CHUNK:
            self._flush()
        return len(data)

    def _consume(self, chunk: bytes) -> None:
        self.sha.update(chunk)
        self.fh.write(chunk)

    def _flush(self) -> None:
        if self._pending:
            self._futures.append(self._pool.submit(self._consume, b"".join(self._pending)))
            self._pending, self._pending_n = [], 0
        while self._futures and (self._futures[0].done() or len(self._futures) > self.MAX_IN_FLIGHT):
            self._futures.popleft().result()  # re-raises a failed write here

    def close(self) -> str:
        """Finish writing; the sha256 of everything written."""
        try:
            self._flush()
            while self._futures:
                self._futures.popleft().result()
        finally:
            self._pool.shutdown(wait=True)
            self.fh.close()
        return self.sha.hexdigest()


class _OpenShard:
    """One shard being written to ``.<name>.tmp``; ``close`` leaves it there, complete."""

    def __init__(self, out_dir: Path, name: str) -> None:
        import webdataset as wds

        self.name, self.tmp, self.keys, self.member_bytes = name, out_dir / f".{name}.tmp", [], 0
        self._sink = _HashingSink(self.tmp)
        self._tar = wds.TarWriter(self._sink, user=TAR_USER, group=TAR_GROUP, mode=TAR_MODE, mtime=TAR_MTIME,
                                  compress=False, encoder=False)

    def fits(self, size: int, config: ShardConfig) -> bool:
        return len(self.keys) < config.max_samples and _tar_size(self.member_bytes + size) <= config.max_bytes

    def write(self, sample: ShardSample, size: int) -> None:
        self._tar.write({"__key__": sample.key, **sample.members})
        self.keys.append(sample.key)
        self.member_bytes += size

    def close(self) -> ShardInfo:
        self._tar.close()
        sha = self._sink.close()
        return ShardInfo(self.name, len(self.keys), self._sink.n, sha, tuple(self.keys))

    def abort(self) -> None:
        """Close everything (else tarfile's finaliser writes to a closed file later) and delete the file."""
        for close in (self._tar.close, self._sink.close):
            try:
                close()
            except Exception:  # the run is failing already; its own error is the one to report
                pass
        self.tmp.unlink(missing_ok=True)


def _tar_size(member_bytes: int) -> int:
    """Final tar size: members, two zero end blocks, padded to a whole record."""
    return -(-(member_bytes + 2 * BLOCK) // RECORD) * RECORD


def write_session_shards(samples: Iterable[ShardSample], out_dir: str | os.PathLike[str], prefix: str,
                         config: ShardConfig = ShardConfig(),
                         progress: Callable[[int], None] | None = None) -> ShardSet:
    """Write ``samples`` as ``<prefix>-NNNNNN.tar`` shards plus ``shards.json`` under ``out_dir``.

    A shard always takes at least one sample, so a sample larger than ``max_bytes``
    gets a shard of its own. ``progress(samples_written)`` is called after each
    sample. shards.json lists each shard (name, n_samples, bytes, sha256, keys) and the
    config; for samples from ``session_samples`` also the session's ids, grid and skipped cells.
    """
    if not is_valid_id(prefix):
        raise ValueError(f"shard prefix {prefix!r} must match [A-Za-z0-9_-]+")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ours = re.compile(rf"^{layout.shard_name_regex(re.escape(prefix))}$")
    for path in out_dir.iterdir():  # temporaries of a killed run
        if path.name.startswith(".") and path.name.endswith(".tmp") and ours.match(path.name[1:-4]):
            path.unlink()
    closed: list[tuple[_OpenShard, ShardInfo]] = []
    current: _OpenShard | None = None
    written = 0
    try:
        for sample in samples:
            size = sample.tar_bytes
            if current is not None and not current.fits(size, config):
                closed.append((current, current.close()))
                current = None
            if current is None:
                current = _OpenShard(out_dir, layout.shard_name(prefix, len(closed)))
            current.write(sample, size)
            written += 1
            if progress is not None:
                progress(written)
        if current is not None:
            closed.append((current, current.close()))
            current = None
        for shard, info in closed:
            os.replace(shard.tmp, out_dir / info.name)
    except BaseException:
        if current is not None:
            current.abort()
        for shard, _ in closed:
            shard.tmp.unlink(missing_ok=True)
        raise
    shards = tuple(info for _, info in closed)
    index: dict[str, Any] = {FORMAT_FIELD: SHARD_FORMAT, "prefix": prefix}
    skipped: tuple[SkippedSample, ...] = ()
    if isinstance(samples, SessionSamples):
        session = samples.info
        index.update(session_id=session.session_id, subject_id=session.subject_id,
                     expressions=list(session.expressions), cameras=list(session.cameras))
        skipped = tuple(samples.skipped)
    index.update(n_samples=sum(s.n_samples for s in shards), shards=[s.to_dict() for s in shards],
                 config=asdict(config), skipped=[{"key": s.key, "reason": s.reason} for s in skipped])
    atomic_write_json(out_dir / layout.SHARDS_INDEX_FILE, index)
    names = {s.name for s in shards}
    for path in out_dir.iterdir():  # shards of an earlier, longer run
        if ours.match(path.name) and path.name not in names:
            path.unlink()
    return ShardSet(out_dir, prefix, config, shards, skipped)
