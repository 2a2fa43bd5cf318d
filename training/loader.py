"""Stream ``o2a.shard/1`` webdataset shards into training tensors.

The pipeline (a ``wds.DataPipeline``) is, in order::

    shard list (shuffled by seed+epoch when shuffling) -> split by node -> split by worker
    -> open each URL (local file or any fsspec URL) -> tar members -> samples
    -> parse the json -> SampleFilter -> sample shuffle buffer -> decode image/mask/camera

Filtering runs on the json alone, before any image is decoded, so selecting a
subset (balance ablations, held-out cells) costs tar reading only. Shards are
opened, read and grouped into samples by ``training.shards.read`` (the reader
``o2a inspect`` uses too); the format's names come from ``training.shards.format``.

Exactly-once per epoch: shards are split first by rank, then by DataLoader worker,
so every sample is read by exactly one (rank, worker) as long as every worker gets
at least one shard. That needs ``n_shards >= world_size * num_workers``; a rank or
worker that would get no shard raises ``ValueError`` (an idle worker is a sign of
too few, too large shards; DDP ranks with no data would hang). Ranks can still see
different sample counts when shards differ in size: for DDP, write equal-sized
shards or cap the step count.

Rank/world size: explicit ``rank``/``world_size`` arguments win, then an initialised
``torch.distributed``, then env ``RANK``/``WORLD_SIZE``. (webdataset 1.0.2's own
``split_by_node`` reads the env first; under ``torchrun`` both agree.)
"""

from __future__ import annotations

import functools
import itertools
import json
import multiprocessing
import os
import random
from typing import Any, Callable, Iterable, Iterator

import cv2
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from training.selection import SampleFilter
from training.shards.format import (CAMERA_BLOCK, FIT_BLOCK, FORMAT_FIELD, IMAGE_BLOCK, JSON_MEMBER, SHARD_FORMAT,
                                    TRAIN_BLOCK, train_size)
from training.shards.read import shard_samples

FIT_FIELDS = ("identity", "expression", "rotation", "translation")


# ---------------------------------------------------------------- splitting


def node_info(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size): explicit values, else torch.distributed, else env, else (0, 1)."""
    if (rank is None) != (world_size is None):
        raise ValueError("give both rank and world_size, or neither")
    if rank is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        elif "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        else:
            rank, world_size = 0, 1
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"invalid rank {rank} for world_size {world_size}")
    return rank, world_size


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class _Epoch:
    """Shared by the shard list and the shuffle stage so ``set_epoch`` reaches both."""

    def __init__(self, epoch: int) -> None:
        self.value = epoch


class _ShardList(IterableDataset):
    def __init__(self, urls: list[str], shuffle: bool, seed: int, epoch: _Epoch) -> None:
        super().__init__()
        self.urls, self.shuffle, self.seed, self.epoch = list(urls), shuffle, seed, epoch

    def __iter__(self) -> Iterator[dict]:
        urls = list(self.urls)
        if self.shuffle:  # same order on every rank: the node split must partition one list
            random.Random(self.seed + self.epoch.value).shuffle(urls)
        for url in urls:
            yield {"url": url}


class _SplitByNode:
    def __init__(self, rank: int | None, world_size: int | None) -> None:
        self.rank, self.world_size = rank, world_size

    def __call__(self, src: Iterable[dict]) -> Iterator[dict]:
        rank, world_size = node_info(self.rank, self.world_size)
        shards = list(src)
        if len(shards) < world_size:
            raise ValueError(
                f"{len(shards)} shard(s) for world_size {world_size}: rank {rank} would get no data; "
                "write more, smaller shards (shard writer max_samples) or train on fewer ranks")
        yield from shards[rank::world_size]


def _split_by_worker(src: Iterable[dict]) -> Iterator[dict]:
    worker, num_workers = _worker()
    shards = list(src)
    if len(shards) < num_workers:
        raise ValueError(
            f"this rank has {len(shards)} shard(s) for {num_workers} DataLoader workers: worker {worker} "
            "would get no shard; need n_shards >= world_size x num_workers (use fewer workers or smaller shards)")
    yield from shards[worker::num_workers]


# ---------------------------------------------------------------- samples


class _ShardSamples:
    """Samples of the incoming shards, ``in_flight`` shards read at once and interleaved at random.

    One shard is one session (one subject), so reading shards one after another
    feeds a model hundreds of consecutive samples of the same subject: a shuffle
    buffer would have to hold several whole shards to mix them. Interleaving a few
    open shards mixes subjects at the cost of that many open streams. The choice
    is seeded by (seed, epoch, rank, worker), so the order is reproducible.
    """

    def __init__(self, in_flight: int, seed: int, epoch: _Epoch, rank: int | None, world_size: int | None,
                 storage_options: dict[str, Any] | None) -> None:
        self.in_flight, self.seed, self.epoch = in_flight, seed, epoch
        self.rank, self.world_size, self.storage_options = rank, world_size, storage_options

    def _samples(self, item: dict) -> Iterator[dict]:
        return shard_samples([item], storage_options=self.storage_options)

    def __call__(self, src: Iterable[dict]) -> Iterator[dict]:
        if self.in_flight == 1:
            yield from shard_samples(src, storage_options=self.storage_options)
            return
        rank, worker = node_info(self.rank, self.world_size)[0], _worker()[0]
        rng = random.Random(f"interleave:{self.seed}:{self.epoch.value}:{rank}:{worker}")
        pending = iter(src)
        active = [self._samples(item) for item in itertools.islice(pending, self.in_flight)]
        while active:
            i = rng.randrange(len(active))
            try:
                yield next(active[i])
            except StopIteration:
                item = next(pending, None)
                if item is None:
                    active.pop(i)
                else:
                    active[i] = self._samples(item)


def _parse_meta(src: Iterable[dict]) -> Iterator[dict]:
    for sample in src:
        where = f"sample {sample.get('__key__')!r} in {sample.get('__url__')}"
        if JSON_MEMBER not in sample:
            raise ValueError(f"{where} has no .json member (not an {SHARD_FORMAT} shard?)")
        meta = json.loads(sample[JSON_MEMBER])
        if meta.get(FORMAT_FIELD) != SHARD_FORMAT:
            raise ValueError(f"{where}: format {meta.get(FORMAT_FIELD)!r}, expected {SHARD_FORMAT!r}")
        sample["meta"] = meta
        yield sample


def _wanted_keys(src: Iterable[dict], keys: frozenset[str]) -> Iterator[dict]:
    """Drop samples whose key is not wanted before their json is parsed (12 KB a sample in the demo's
    shards): a subset of a few images would otherwise parse every sample of its shards every epoch
    (the balance ablations spent a third of their time there). ``_filter`` still checks the json."""
    for sample in src:
        if sample.get("__key__") in keys:
            yield sample


def _filter(src: Iterable[dict], sample_filter: SampleFilter) -> Iterator[dict]:
    for sample in src:
        if sample_filter.matches(sample["meta"]):
            yield sample


class _Shuffle:
    def __init__(self, bufsize: int, seed: int, epoch: _Epoch, rank: int | None, world_size: int | None) -> None:
        self.bufsize, self.seed, self.epoch, self.rank, self.world_size = bufsize, seed, epoch, rank, world_size

    def __call__(self, src: Iterable[dict]) -> Iterator[dict]:
        rank, worker = node_info(self.rank, self.world_size)[0], _worker()[0]
        # a string seed is hashed deterministically (sha512) by random.Random
        rng = random.Random(f"{self.seed}:{self.epoch.value}:{rank}:{worker}")
        return wds.shuffle(self.bufsize, initial=self.bufsize, rng=rng)(iter(src))


_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV >= 4.10: the decoder writes RGB itself


def decode_image(data: bytes, *, key: str = "", grayscale: bool = False) -> np.ndarray:
    """cv2 decode to RGB (or one channel); a clear error naming the sample when the bytes are bad.

    EXIF orientation is ignored (as the shard writer does): pixels stay in the
    calibrated sensor layout the camera's K, R, t describe.
    """
    flags = cv2.IMREAD_GRAYSCALE if grayscale else (cv2.IMREAD_COLOR if _IMREAD_RGB is None else _IMREAD_RGB)
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise ValueError(f"sample {key!r}: image bytes ({len(data)} B) could not be decoded")
    if not grayscale and _IMREAD_RGB is None:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def scale_intrinsics(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """K after resizing by (sx, sy) with cv2.resize, whose pixel centres map as x' = (x + 0.5) s - 0.5."""
    out = np.array(K, dtype=np.float64)
    out[0, 0] *= sx
    out[1, 1] *= sy
    out[0, 2] = (out[0, 2] + 0.5) * sx - 0.5
    out[1, 2] = (out[1, 2] + 0.5) * sy - 0.5
    return out


def _float_tensors(fields: dict[str, Any]) -> dict[str, torch.Tensor]:
    """float32 tensors viewing one array: one numpy->torch conversion instead of one per field."""
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in fields.items()}
    flat = torch.from_numpy(np.concatenate([a.ravel() for a in arrays.values()]))
    out, offset = {}, 0
    for k, a in arrays.items():
        out[k] = flat[offset:offset + a.size].view(a.shape)
        offset += a.size
    return out


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 HxW or HxWxC -> contiguous float (C,H,W) in [0,1], one vectorised pass per plane."""
    planes = [image] if image.ndim == 2 else cv2.split(image)
    out = np.empty((len(planes),) + image.shape[:2], np.float32)
    for i, plane in enumerate(planes):
        np.multiply(plane, np.float32(1.0 / 255.0), out=out[i])
    return torch.from_numpy(out)


class _Decode:
    """Image, mask and camera at the training resolution.

    ``train.png`` is used when the json's train block has this resolution (the
    original is then never decoded); else the original is decoded and resized
    (INTER_AREA, longer side = resolution). K is scaled per axis by the actual
    output/original size. The mask member, when present, is resized to the image.
    """

    def __init__(self, resolution: int) -> None:
        self.resolution = resolution

    def __call__(self, src: Iterable[dict]) -> Iterator[dict]:
        return map(self.decode, src)

    def decode(self, sample: dict) -> dict:
        meta, key = sample["meta"], sample["__key__"]
        img_meta, cam = meta[IMAGE_BLOCK], meta[CAMERA_BLOCK]
        width, height = int(img_meta["width"]), int(img_meta["height"])
        if (int(cam["width"]), int(cam["height"])) != (width, height):
            raise ValueError(f"sample {key!r}: camera is {cam['width']}x{cam['height']}, "
                             f"image is {width}x{height}")
        train = meta.get(TRAIN_BLOCK) or {}
        train_member = train.get("member")
        if train.get("resolution") == self.resolution and train_member in sample:
            image = decode_image(sample[train_member], key=key)
        else:
            member = img_meta.get("member", img_meta.get("format"))
            if member not in sample:
                raise ValueError(f"sample {key!r} in {sample.get('__url__')} has no .{member} image member")
            image = decode_image(sample[member], key=key)
            if image.shape[:2] != (height, width):
                raise ValueError(f"sample {key!r}: image is {image.shape[1]}x{image.shape[0]}, "
                                 f"json says {width}x{height}")
            size = train_size(width, height, self.resolution)
            if size != (width, height):
                image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        out_h, out_w = image.shape[:2]
        mask = None
        mask_member = train.get("mask_member")
        if mask_member and mask_member in sample:
            m = decode_image(sample[mask_member], key=key, grayscale=True)
            if m.shape[:2] != (out_h, out_w):
                m = cv2.resize(m, (out_w, out_h), interpolation=cv2.INTER_AREA)
            mask = _to_tensor(m)
        dist, R, t = cam.get("dist", [0.0] * 5), cam["R"], cam["t"]
        if len(dist) != 5 or len(R) != 3 or any(len(row) != 3 for row in R) or len(t) != 3:
            raise ValueError(f"sample {key!r}: camera needs dist[5], R[3][3], t[3]")
        sx, sy = out_w / width, out_h / height  # scale_intrinsics, inlined: this runs per sample
        flat = torch.tensor([cam["fx"] * sx, 0.0, (cam["cx"] + 0.5) * sx - 0.5,
                             0.0, cam["fy"] * sy, (cam["cy"] + 0.5) * sy - 0.5, 0.0, 0.0, 1.0,
                             *dist, *R[0], *R[1], *R[2], *t], dtype=torch.float32)
        camera = {"K": flat[:9].view(3, 3), "dist": flat[9:14], "R": flat[14:23].view(3, 3), "t": flat[23:26]}
        fit = meta.get(FIT_BLOCK)
        fit_t = _float_tensors({f: fit[f] for f in FIT_FIELDS}) if fit else None
        return {"key": key, "image": _to_tensor(image), "mask": mask, "camera": camera, "meta": meta, "fit": fit_t}


# ---------------------------------------------------------------- dataset


class ShardDataset(wds.DataPipeline):
    """The training pipeline; ``set_epoch`` reseeds the shard and sample shuffles."""

    def __init__(self, *stages: Any, epoch_ref: _Epoch) -> None:
        super().__init__(*stages)
        self._epoch = epoch_ref

    @property
    def epoch(self) -> int:
        return self._epoch.value

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch (workers must not be persistent, so they see the new value)."""
        self._epoch.value = int(epoch)


def build_dataset(
    urls: list[str],
    *,
    resolution: int,
    sample_filter: SampleFilter | None = None,
    shuffle_buffer: int = 0,
    seed: int = 0,
    split_by_node: bool = True,
    split_by_worker: bool = True,
    epoch: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    storage_options: dict[str, Any] | None = None,
    shards_in_flight: int = 1,
) -> ShardDataset:
    """Samples as dicts: key, image (3,H,W) RGB float in [0,1], mask (1,H,W)|None, camera, meta, fit.

    ``shuffle_buffer > 0`` shuffles shard order (seed+epoch, identical on all ranks)
    and samples in a buffer of that size (seeded by seed, epoch, rank, worker).
    ``rank``/``world_size`` override the distributed environment (tests, custom launchers).
    ``shards_in_flight > 1`` reads that many shards at once and interleaves their samples
    (seeded): consecutive samples then come from different sessions.
    """
    if isinstance(urls, str):
        raise TypeError("urls must be a list of shard URLs, not a string")
    urls = list(urls)
    if not urls:
        raise ValueError("no shard URLs given")
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    if shuffle_buffer < 0:
        raise ValueError("shuffle_buffer must be >= 0")
    if shards_in_flight < 1:
        raise ValueError("shards_in_flight must be >= 1")
    if rank is not None or world_size is not None:
        node_info(rank, world_size)  # validate early
    epoch_ref = _Epoch(epoch)
    stages: list[Any] = [_ShardList(urls, shuffle_buffer > 0, seed, epoch_ref)]
    if split_by_node:
        stages.append(_SplitByNode(rank, world_size))
    if split_by_worker:
        stages.append(_split_by_worker)
    stages.append(_ShardSamples(shards_in_flight, seed, epoch_ref, rank, world_size, storage_options))
    if sample_filter is not None and sample_filter.keys is not None:
        stages.append(functools.partial(_wanted_keys, keys=sample_filter.keys))
    stages.append(_parse_meta)
    if sample_filter is not None:
        stages.append(functools.partial(_filter, sample_filter=sample_filter))
    if shuffle_buffer > 0:
        stages.append(_Shuffle(shuffle_buffer, seed, epoch_ref, rank, world_size))
    stages.append(_Decode(resolution))
    return ShardDataset(*stages, epoch_ref=epoch_ref)


# ---------------------------------------------------------------- batching


def _shared_buffer(numel: int) -> torch.Tensor:
    """float32 buffer, in shared memory inside a DataLoader worker (as default_collate does)."""
    if get_worker_info() is None:
        return torch.empty(numel)
    return torch.empty(0).set_(torch.UntypedStorage._new_shared(numel * 4))


def _stack_columns(columns: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack each column into views of ONE float32 buffer.

    Every separate tensor leaving a worker costs a shared-memory segment and a
    file-descriptor handover (~0.3 ms); views of one storage travel as one.
    """
    size = len(next(iter(columns.values())))
    flat = _shared_buffer(sum(size * col[0].numel() for col in columns.values()))
    out, offset = {}, 0
    for name, col in columns.items():
        n = size * col[0].numel()
        out[name] = torch.stack(col, out=flat[offset:offset + n].view(size, *col[0].shape))
        offset += n
    return out


def collate_samples(samples: list[dict]) -> dict:
    """Stack tensors; keys and meta stay lists. Missing masks/fits are zeros with has_mask/has_fit False."""
    shapes = {tuple(s["image"].shape) for s in samples}
    if len(shapes) > 1:
        raise ValueError(f"images in one batch differ in size {sorted(shapes)}: cameras with different "
                         "aspect ratios need batch_size=1 or a per-camera batch")
    columns = {"image": [s["image"] for s in samples]}
    columns.update({f"camera.{k}": [s["camera"][k] for s in samples] for k in samples[0]["camera"]})
    has_mask = has_fit = None
    if any(s["mask"] is not None for s in samples):
        zero = torch.zeros_like(next(s["mask"] for s in samples if s["mask"] is not None))
        columns["mask"] = [zero if s["mask"] is None else s["mask"] for s in samples]
        has_mask = torch.tensor([s["mask"] is not None for s in samples])
    if any(s["fit"] is not None for s in samples):
        template = next(s["fit"] for s in samples if s["fit"] is not None)
        for f in FIT_FIELDS:
            zero = torch.zeros_like(template[f])
            columns[f"fit.{f}"] = [zero if s["fit"] is None else s["fit"][f] for s in samples]
        has_fit = torch.tensor([s["fit"] is not None for s in samples])
    out = _stack_columns(columns)
    return {"key": [s["key"] for s in samples], "image": out["image"], "mask": out.get("mask"), "has_mask": has_mask,
            "camera": {k.split(".", 1)[1]: v for k, v in out.items() if k.startswith("camera.")},
            "meta": [s["meta"] for s in samples], "has_fit": has_fit,
            "fit": {f: out[f"fit.{f}"] for f in FIT_FIELDS} if has_fit is not None else None}


def make_loader(
    dataset: IterableDataset,
    batch_size: int,
    num_workers: int,
    *,
    multiprocessing_context: str | None = None,
    pin_memory: bool = False,
    drop_last: bool = False,
    timeout: float = 0,
    collate_fn: Callable[[list[dict]], Any] = collate_samples,
) -> DataLoader:
    """A torch DataLoader with ``collate_samples`` (or ``collate_fn``).

    Workers default to ``fork`` where available: the pipeline holds no zarr stores,
    event loops or CUDA state, and fork starts in milliseconds; pass "spawn" when
    the parent holds such state (every stage is picklable). Workers are not
    persistent, so ``dataset.set_epoch`` takes effect at the next ``iter(loader)``.
    Workers must not call ``cv2.setNumThreads``: after the parent has used OpenCV's
    thread pool, that call hangs forever in a forked child (checked, OpenCV 5.1);
    set it in the parent before the first batch if needed.
    """
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        if multiprocessing_context is None:
            multiprocessing_context = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        kwargs = {"multiprocessing_context": multiprocessing_context, "persistent_workers": False}
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_fn,
                      pin_memory=pin_memory, drop_last=drop_last, timeout=timeout, **kwargs)
