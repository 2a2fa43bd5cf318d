"""What the prior trains on, and a resumable stream of frame batches.

``prior_data_from_index`` turns the dataset index into shard URLs, the ordered
list of training subjects (the rows of the identity-code table) and a
``SampleFilter``: subsets (the balance ablations) are filters, never rewritten
shards. ``FrameStream`` cycles epochs through the loader and knows its position
(epoch, batches consumed) so a resumed run reads exactly the batches the
uninterrupted run would have read.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from torch.utils.data import DataLoader

from fitting.face_models.base import FaceModel
from training.loader import SampleFilter, build_dataset, make_loader
from training.prior.config import PriorConfig
from training.prior.frames import FramePreparer, collate_frames


@dataclass(frozen=True)
class PriorData:
    """Shards, subjects (latent rows, sorted) and the sample filter of one training run."""

    urls: tuple[str, ...]
    subjects: tuple[str, ...]
    sample_filter: SampleFilter
    stats: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    """sha256 of the selected (shard URL, key) rows: a checkpoint resumes only on the same data."""


def read_index(index: pa.Table | str | os.PathLike[str]) -> pa.Table:
    return index if isinstance(index, pa.Table) else pq.read_table(index)


def prior_data_from_index(index: pa.Table | str | os.PathLike[str], split: str = "train",
                          sample_filter: SampleFilter | None = None) -> PriorData:
    """The ``split`` rows of the index (narrowed by ``sample_filter``) as training data."""
    df = read_index(index).to_pandas()
    rows = df[df["split"] == split]
    if sample_filter is not None:
        rows = rows[[sample_filter.matches({"subject_id": r.subject_id, "camera_id": r.camera_id,
                                            "expression": r.expression, "session_id": r.session_id})
                     for r in rows.itertuples()]]
    if rows.empty:
        splits = ", ".join(f"{k}: {v}" for k, v in df["split"].value_counts().sort_index().items()) or "empty index"
        raise ValueError(f"no {split!r} samples to train on (index has {splits})")
    subjects = tuple(sorted(rows["subject_id"].unique()))
    base = sample_filter or SampleFilter()
    chosen = SampleFilter(subjects=subjects if base.subjects is None else base.subjects & set(subjects),
                          cameras=base.cameras, expressions=base.expressions, keys=base.keys)
    per_subject = rows.groupby("subject_id").size()
    stats = {"split": split, "images": int(len(rows)), "subjects": len(subjects),
             "cameras": int(rows["camera_id"].nunique()), "expressions": int(rows["expression"].nunique()),
             "images_per_subject_min": int(per_subject.min()), "images_per_subject_max": int(per_subject.max()),
             "shards": int(rows["shard_url"].nunique())}
    digest = hashlib.sha256()
    for url, key in sorted(zip(rows["shard_url"], rows["key"])):
        digest.update(f"{url}\t{key}\n".encode())
    return PriorData(tuple(sorted(rows["shard_url"].unique())), subjects, chosen, stats, digest.hexdigest())


def frame_loader(data: PriorData, face_model: FaceModel, config: PriorConfig, *, shuffle: bool = True,
                 rank: int | None = None, world_size: int | None = None, split_by_node: bool = True) -> DataLoader:
    """Batches of head-crop frames (``collate_frames``) from the shards; ``loader.dataset.set_epoch`` reseeds."""
    dataset = build_dataset(list(data.urls), resolution=config.load_resolution, sample_filter=data.sample_filter,
                            shuffle_buffer=config.shuffle_buffer if shuffle else 0, seed=config.seed,
                            rank=rank, world_size=world_size, split_by_node=split_by_node,
                            shards_in_flight=config.shards_in_flight if shuffle else 1)
    dataset.append(FramePreparer(face_model, data.subjects, config.resolution, config.crop_scale,
                                  config.head_depth))
    return make_loader(dataset, config.images_per_batch, config.num_workers, collate_fn=collate_frames)


class FrameStream:
    """Endless batches over epochs, resumable at ``(epoch, batch)``."""

    def __init__(self, loader: DataLoader, epoch: int = 0, batch: int = 0) -> None:
        self.loader, self.epoch, self.batch = loader, int(epoch), int(batch)
        self._it: Iterator[dict] | None = None

    @property
    def position(self) -> tuple[int, int]:
        return self.epoch, self.batch

    def _start(self) -> None:
        self.loader.dataset.set_epoch(self.epoch)
        self._it = iter(self.loader)
        for _ in range(self.batch):  # replay to the saved position: same seed, same order
            next(self._it)

    def next_batch(self) -> dict:
        for _ in range(2):
            if self._it is None:
                self._start()
            try:
                batch = next(self._it)
            except StopIteration:
                empty = self.batch == 0
                self.epoch, self.batch, self._it = self.epoch + 1, 0, None
                if empty:
                    break
                continue
            self.batch += 1
            return batch
        raise RuntimeError("the training data yielded no frame (no sample with a 3DMM fit of this face model?)")
