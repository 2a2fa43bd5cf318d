"""Shard write throughput as a ratio to writing the same bytes with plain ``tarfile``.

Part (a), the writer: both sides run in this process on the same files (page cache
warmed first), in turns, best of ``--repeat`` runs each. Ours is ``session_samples`` +
``write_session_shards`` per session (read each image once, build the sample
JSON, size-bounded webdataset tars with fixed headers, sha256 of every tar,
rename into place, ``shards.json``). The baseline reads the same images and
writes them with the same JSON bytes into one tar with ``tarfile`` and nothing
else. Landmarks and fits are left out (``None``) so the figure is the cost of
sharding alone; the manifest comes from ingest, as in the pipeline. Simulated
images are re-encoded ``--upscale`` times larger (default 4: 512 -> 2048 px,
~studio JPEG sizes), as in ``benchmarks/ingest.py``. Goal: ratio >= 0.8.

    .venv/bin/python -m benchmarks.shards [--captures DIR --calibration FILE] [--subjects N] [--upscale K]
"""

from __future__ import annotations

import argparse
import io
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path


import pyarrow as pa
import pyarrow.parquet as pq

from capture_schema import derived_layout as layout
from capture_schema.calibration_file import Calibration, read_calibration
from capture_schema.ingest import ingest_session
from capture_schema.storage import Storage
from capture_schema.validation import iter_session_dirs
from training.shards.format import IMAGE_MEMBERS, JSON_MEMBER
from training.shards.write import ShardConfig, session_samples, write_session_shards


@dataclass(frozen=True)
class BenchSession:
    session_dir: Path
    calibration: Calibration
    manifest: pa.Table


def upscale_session(session_dir: Path, calibration: Calibration, factor: int) -> Calibration:
    """Re-encode the simulator's grid images ``factor`` times larger; the cameras scale with them."""
    import cv2

    for path in sorted((session_dir / "images").rglob("*.jpg")):
        big = cv2.resize(cv2.imread(str(path)), None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)
        path.write_bytes(cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    cameras = {c: replace(cam, width=cam.width * factor, height=cam.height * factor, fx=cam.fx * factor,
                          fy=cam.fy * factor, cx=(cam.cx + 0.5) * factor - 0.5, cy=(cam.cy + 0.5) * factor - 0.5)
               for c, cam in calibration.cameras.items()}
    return Calibration(cameras)


def prepare_sessions(args: argparse.Namespace, tmp: Path) -> list[BenchSession]:
    """Sessions with their calibration and ingest manifest (simulated unless --captures is given)."""
    if args.captures:
        dirs, calibrations = list(iter_session_dirs(Path(args.captures))), None
        calibration = read_calibration(args.calibration)
    else:
        from capture_simulator.simulate import simulate_dataset

        print(f"simulating {args.subjects} subjects at {args.size} px ...")
        sim = simulate_dataset(tmp / "sim", n_subjects=args.subjects, size=args.size, seed=11, n_board_poses=2)
        dirs = [sim.captures_root / sid for sid in sim.session_ids]
        calibrations = [read_calibration(sim.ground_truth_root / sid / "calibration.json") for sid in sim.session_ids]
        if args.upscale > 1:
            calibrations = [upscale_session(d, c, args.upscale) for d, c in zip(dirs, calibrations)]
    storage = Storage(f"file://{tmp / 'derived'}")
    sessions = []
    for i, session_dir in enumerate(dirs):
        manifest = pq.read_table(ingest_session(session_dir, storage).manifest_uri)
        sessions.append(BenchSession(session_dir, calibrations[i] if calibrations else calibration, manifest))
    return sessions


def best_of_interleaved(repeat: int, runs: dict, cleanup) -> dict[str, float]:
    """Best time of each named function, run in turns so both see the same disk and cache state."""
    best = {name: float("inf") for name in runs}
    for _ in range(repeat):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
            cleanup()
    return best


def write_ours(sessions: list[BenchSession], out: Path, config: ShardConfig) -> None:
    for s in sessions:
        sid = s.session_dir.name
        write_session_shards(session_samples(s.session_dir, s.calibration, None, None, s.manifest, config=config),
                             out / sid, sid, config)


def baseline_members(sessions: list[BenchSession]) -> list[tuple[str, str, Path, bytes]]:
    """(key, image extension, image path, json bytes) of every sample, in shard order."""
    out = []
    for s in sessions:
        for sample in session_samples(s.session_dir, s.calibration, None, None, s.manifest):
            ext = next(e for e in sample.members if e in IMAGE_MEMBERS)
            _, expression, camera = sample.key.split("/")
            out.append((sample.key, ext, s.session_dir / "images" / expression / f"{camera}.{ext}",
                        sample.members[JSON_MEMBER]))
    return out


def write_baseline(members: list[tuple[str, str, Path, bytes]], path: Path) -> None:
    with tarfile.open(path, "w") as tar:
        for key, ext, image, json_bytes in members:
            for name, data in ((f"{key}.{ext}", image.read_bytes()), (f"{key}.json", json_bytes)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def part_a_write_throughput(sessions: list[BenchSession], tmp: Path, repeat: int) -> Path:
    """Print writer vs. tarfile throughput; return the folder of shards written by the last run of ours."""
    members = baseline_members(sessions)
    nbytes = sum(len(j) + p.stat().st_size for _, _, p, j in members)
    for _, _, p, _ in members:  # warm the page cache for both sides
        p.read_bytes()
    print(f"{len(sessions)} sessions, {len(members)} samples, {nbytes / 1e6:.1f} MB of members")
    out = tmp / "out"

    def clean() -> None:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()

    clean()
    write_ours(sessions, out, ShardConfig())  # warm-up: imports (webdataset) and code paths
    clean()
    best = best_of_interleaved(repeat, {"baseline": lambda: write_baseline(members, out / "baseline.tar"),
                                        "ours": lambda: write_ours(sessions, out, ShardConfig())}, clean)
    baseline, ours = best["baseline"], best["ours"]
    write_ours(sessions, out, ShardConfig())  # leave one shard set for later parts
    rate = lambda seconds: f"{nbytes / 1e6 / seconds:8.1f} MB/s  {len(members) / seconds:8.0f} samples/s"  # noqa: E731
    print(f"tarfile, same bytes (baseline) : {rate(baseline)}")
    print(f"session_samples + shards       : {rate(ours)}")
    print(f"ratio shards / baseline        : {baseline / ours:.2f}   (goal >= 0.8)")
    return out


def part_b_loader_throughput(sessions: list[BenchSession], shards_dir: Path, resolution: int, repeat: int) -> None:
    """Print the shard loader's decode throughput against decoding the same images from loose files."""
    import importlib.util

    import cv2
    import torch

    spec = importlib.util.spec_from_file_location("loader_decode", Path(__file__).with_name("loader_decode.py"))
    loader_decode = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader_decode)
    cv2.setNumThreads(1)  # one core per image on both sides; parallelism comes from workers
    torch.set_num_threads(1)
    urls = sorted(str(p) for p in shards_dir.rglob(f"*{layout.SHARD_SUFFIX}"))
    from capture_schema.session import read_session
    from fitting.landmarks.detect import session_image_path

    loose = []  # the same images in the shards' (grid) order
    for s in sessions:
        info, _ = read_session(s.session_dir)
        loose += [session_image_path(s.session_dir, e, c) for e in info.expressions for c in info.cameras]
    r = loader_decode.loader_throughput(urls, loose, resolution, repeat=repeat)
    for name in ("loose_loop", "shards_w0", "loose_loader_w2", "shards_w2"):
        print(f"{name:<16}: {r[name]['images_per_s']:8.1f} images/s  {r[name]['cpu_ms_per_image']:6.3f} CPU ms/image")
    for w in (0, 2):
        print(f"ratio shards / loose, {w} workers : {r[f'ratio_w{w}']:.2f} wall, {r[f'cpu_ratio_w{w}']:.2f} CPU"
              "   (goal >= 1.0)")

    # The same shards written with a training-resolution copy of each image (train_resolution):
    # the loader then decodes that small PNG instead of the full original (identical pixels).
    train_dir = shards_dir.parent / "train_shards"
    write_ours(sessions, train_dir, ShardConfig(train_resolution=resolution, masks=False))
    urls = sorted(str(p) for p in train_dir.rglob(f"*{layout.SHARD_SUFFIX}"))
    r = loader_decode.loader_throughput(urls, loose, resolution, repeat=repeat)
    for w in (0, 2):
        print(f"ratio shards with train members / loose, {w} workers : {r[f'ratio_w{w}']:.2f} wall, "
              f"{r[f'cpu_ratio_w{w}']:.2f} CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captures", help="an existing captures root (needs --calibration; default: simulate)")
    parser.add_argument("--calibration", help="calibration.json for every session under --captures")
    parser.add_argument("--subjects", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--upscale", type=int, default=4, help="re-encode simulated images this many times larger")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--resolution", type=int, default=256, help="training resolution the loader decodes to")
    args = parser.parse_args()
    if args.captures and not args.calibration:
        parser.error("--captures needs --calibration")

    with tempfile.TemporaryDirectory() as tmp:
        sessions = prepare_sessions(args, Path(tmp))

        print("\n(a) shard writer")
        shards_dir = part_a_write_throughput(sessions, Path(tmp), args.repeat)
        print(f"shards kept for the next part: {shards_dir}")

        print("\n(b) loader decode")
        part_b_loader_throughput(sessions, shards_dir, args.resolution, args.repeat)


if __name__ == "__main__":
    main()
