"""Loader decode throughput from shards as a ratio to decoding the same loose files (goal >= 1.0).

Both sides do the same work per image: decode the original JPEG, resize so the
longer side is ``--resolution`` (cv2.INTER_AREA), BGR->RGB, float tensor in [0, 1],
stacked into batches of 8. The shard side adds tar streaming, json parsing, the
filter stage and scaled cameras (what training needs); the loose side is the
simplest correct tool (``cv2.imread`` in a loop, and a torch DataLoader over the
files with the same number of workers). One core per image on both sides. Same
process, page cache warmed, best of ``--repeat`` rounds that interleave the four
runs (so bursts of other load on the machine hit all alike). Shards are written
here by hand per ``o2a.shard/1`` (no fits, no train.png, so the loader decodes the
originals as the baseline does).

As in benchmarks/ingest.py, simulated images are re-encoded ``--upscale`` times
larger (default 4: 512 -> 2048 px, studio-like); ``--upscale 1`` keeps 512 px files,
where per-sample overheads weigh most.

    .venv/bin/python -m benchmarks.loader_decode [--subjects N] [--upscale F] [--resolution PX]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import tempfile
import time
from pathlib import Path


import cv2
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, Dataset

from capture_schema import derived_layout as layout
from training.loader import build_dataset, make_loader, scale_intrinsics
from training.shards.format import (JSON_MEMBER, SHARD_FORMAT, TAR_GROUP, TAR_MODE, TAR_MTIME, TAR_USER,
                                    train_size)

BATCH = 8


def write_session_shards(session_dir: Path, calibration_json: Path, out_root: Path, upscale: int = 1,
                         max_samples: int = 1000) -> tuple[list[str], list[Path]]:
    """Contract shards for one simulated session (re-encoding images ``upscale`` x); returns (urls, loose files)."""
    from capture_schema.calibration_file import read_calibration
    from capture_schema.session import read_session

    info, problems = read_session(session_dir)
    if info is None:
        raise ValueError(f"{session_dir}: {problems}")
    cameras = read_calibration(calibration_json).cameras
    folder = out_root / layout.shards_dir(info.session_id)
    folder.mkdir(parents=True, exist_ok=True)
    samples, loose = [], []
    for expression in info.expressions:
        for camera_id in info.cameras:
            path = next((session_dir / "images" / expression).glob(f"{camera_id}.*"))
            if upscale > 1:
                image = cv2.imread(str(path))
                image = cv2.resize(image, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_CUBIC)
                path.write_bytes(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
            data = path.read_bytes()
            fmt = path.suffix[1:]
            height, width = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE).shape
            cam = cameras[camera_id].to_dict()
            s = width / cam["width"]
            K = scale_intrinsics(np.array([[cam["fx"], 0, cam["cx"]], [0, cam["fy"], cam["cy"]], [0, 0, 1]]), s, s)
            cam.update(width=width, height=height, fx=K[0, 0], fy=K[1, 1], cx=K[0, 2], cy=K[1, 2])
            meta = {"format": SHARD_FORMAT, "subject_id": info.subject_id, "session_id": info.session_id,
                    "expression": expression, "camera_id": camera_id,
                    "image": {"format": fmt, "width": width, "height": height,
                              "sha256": hashlib.sha256(data).hexdigest(), "member": fmt},
                    "camera": cam, "fit": None, "landmarks": None, "train": None}
            samples.append({"__key__": f"{info.session_id}/{expression}/{camera_id}", fmt: data,
                            JSON_MEMBER: json.dumps(meta, sort_keys=True).encode("utf-8")})
            loose.append(path)
    urls = []
    for n, start in enumerate(range(0, len(samples), max_samples)):
        name = layout.shard_name(info.session_id, n)
        tmp = folder / f".{name}.tmp"
        with open(tmp, "wb") as fh, wds.TarWriter(fh, mtime=TAR_MTIME, user=TAR_USER, group=TAR_GROUP,
                                                 mode=TAR_MODE) as writer:
            for sample in samples[start:start + max_samples]:
                writer.write(sample)
        os.replace(tmp, folder / name)
        urls.append(str(folder / name))
    return urls, loose


def load_loose(path: Path, resolution: int) -> torch.Tensor:
    """The baseline's per-image work, matching the loader's decode of an original."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    height, width = image.shape[:2]
    size = train_size(width, height, resolution)
    if size != (width, height):
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255.0  # the usual idiom


class LooseFiles(Dataset):
    def __init__(self, paths: list[Path], resolution: int) -> None:
        self.paths, self.resolution = paths, resolution

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return load_loose(self.paths[i], self.resolution)


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (DataLoader workers are joined at the end)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def loader_throughput(shard_urls: list[str], loose_paths: list[Path], resolution: int, repeat: int = 5,
                      workers: int = 2) -> dict:
    """Images/s and CPU ms/image of the shard loader (0 and ``workers`` workers) and of loose-file decoding.

    ``ratio_wN`` = loose time / shard time (>= 1: shards are at least as fast);
    ``cpu_ratio_wN`` the same on CPU time, which other load on the machine hardly moves.
    """
    for p in loose_paths:  # warm the page cache for both sides
        p.read_bytes()
    for u in shard_urls:
        Path(u).read_bytes()

    first = next(iter(build_dataset(shard_urls, resolution=resolution)))  # same work: same pixels
    if not torch.allclose(first["image"], load_loose(loose_paths[0], resolution), atol=1e-6):
        raise RuntimeError("the loader and the baseline decode different pixels: not a like-for-like comparison")

    def shards(num_workers: int) -> int:
        ds = build_dataset(shard_urls, resolution=resolution)
        return sum(len(b["key"]) for b in make_loader(ds, BATCH, num_workers))

    def loose_loop() -> int:  # batches too, as the loader does
        n = 0
        for start in range(0, len(loose_paths), BATCH):
            n += len(torch.stack([load_loose(p, resolution) for p in loose_paths[start:start + BATCH]]))
        return n

    def loose_loader() -> int:
        dl = DataLoader(LooseFiles(loose_paths, resolution), batch_size=BATCH, num_workers=workers,
                        multiprocessing_context="fork")
        return sum(len(b) for b in dl)

    n = len(loose_paths)
    runs = {"loose_loop": loose_loop, "shards_w0": lambda: shards(0),
            f"loose_loader_w{workers}": loose_loader, f"shards_w{workers}": lambda: shards(workers)}
    wall = {name: float("inf") for name in runs}
    cpu = dict(wall)
    for _ in range(repeat):  # rounds interleave the contenders, so a burst of other load hits all alike
        for name, fn in runs.items():
            start, start_cpu = time.perf_counter(), _cpu_seconds()
            count = fn()
            wall[name] = min(wall[name], time.perf_counter() - start)
            cpu[name] = min(cpu[name], _cpu_seconds() - start_cpu)
            if count != n:
                raise RuntimeError(f"{name} produced {count} images, expected {n}")
    result: dict = {"n_images": n}
    for name in runs:
        result[name] = {"images_per_s": n / wall[name], "cpu_ms_per_image": 1e3 * cpu[name] / n}
    for w, base in ((0, "loose_loop"), (workers, f"loose_loader_w{workers}")):
        result[f"ratio_w{w}"] = wall[base] / wall[f"shards_w{w}"]
        result[f"cpu_ratio_w{w}"] = cpu[base] / cpu[f"shards_w{w}"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--upscale", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    cv2.setNumThreads(1)  # one core per image on both sides (forked workers inherit it); parallelism = workers
    torch.set_num_threads(1)
    from capture_simulator.simulate import simulate_dataset

    with tempfile.TemporaryDirectory() as tmp:
        print(f"simulating {args.subjects} subjects at {args.size} px ...")
        sim = simulate_dataset(Path(tmp) / "sim", n_subjects=args.subjects, size=args.size, seed=11, n_board_poses=2)
        urls, loose = [], []
        for sid in sim.session_ids:
            u, paths = write_session_shards(sim.captures_root / sid, sim.ground_truth_root / sid / "calibration.json",
                                            Path(tmp) / "out", upscale=args.upscale)
            urls += u
            loose += paths
        mb = sum(p.stat().st_size for p in loose) / 1e6
        print(f"{len(urls)} shards, {len(loose)} images ({args.size * args.upscale} px, {mb:.1f} MB) "
              f"-> resolution {args.resolution}")
        r = loader_throughput(urls, loose, args.resolution, repeat=args.repeat)
    for name in ("loose_loop", "shards_w0", "loose_loader_w2", "shards_w2"):
        print(f"{name:<16}: {r[name]['images_per_s']:8.1f} images/s  {r[name]['cpu_ms_per_image']:6.3f} CPU ms/image")
    for w in (0, 2):
        print(f"ratio shards / loose, {w} workers : {r[f'ratio_w{w}']:.2f} wall, {r[f'cpu_ratio_w{w}']:.2f} CPU"
              "   (goal >= 1.0)")


if __name__ == "__main__":
    main()
