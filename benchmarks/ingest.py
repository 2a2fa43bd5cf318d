"""Ingest throughput as a ratio to simply reading and hashing the same files.

Both sides run in this process on the same files (page cache warmed first), best
of ``--repeat`` runs each. Simulated images are re-encoded at ``--upscale`` times
their size (default 4: 512 -> 2048 px, ~studio JPEG sizes), because a 25 KB
thumbnail measures per-file overheads no studio capture has; ``--upscale 1``
measures the small files as they are. The baseline is the simplest correct tool: read every
grid image and sha256 it, one after another. Ingest adds validation of the whole
session, structural image checks and writing the Parquet manifest.

    .venv/bin/python -m benchmarks.ingest [--captures DIR] [--subjects N] [--size PX]
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
from pathlib import Path

from benchmarks.common import best_of
from capture_schema.ingest import ingest_session
from capture_schema.storage import Storage
from capture_schema.validation import iter_session_dirs


def grid_files(session_dirs: list[Path]) -> list[Path]:
    return [p for d in session_dirs for p in sorted((d / "images").rglob("*")) if p.is_file()]


def upscale_images(root: Path, factor: int) -> None:
    """Re-encode the simulator's own temporary grid images at studio-like resolution."""
    import cv2

    for path in grid_files(list(iter_session_dirs(root))):
        image = cv2.imread(str(path))
        big = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)
        path.write_bytes(cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())


def read_and_hash(files: list[Path]) -> int:
    total = 0
    for path in files:
        data = path.read_bytes()
        hashlib.sha256(data).hexdigest()
        total += len(data)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captures", help="an existing captures root (default: simulate one)")
    parser.add_argument("--subjects", type=int, default=3)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--upscale", type=int, default=4, help="re-encode simulated images this many times larger")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.captures:
            root = Path(args.captures)
        else:
            from capture_simulator.simulate import simulate_dataset

            print(f"simulating {args.subjects} subjects at {args.size} px ...")
            root = simulate_dataset(Path(tmp) / "sim", args.subjects, size=args.size).captures_root
            if args.upscale > 1:
                upscale_images(root, args.upscale)
        sessions = list(iter_session_dirs(root))
        files = grid_files(sessions)
        nbytes = read_and_hash(files)  # warm the page cache for both sides
        print(f"{len(sessions)} sessions, {len(files)} images, {nbytes / 1e6:.1f} MB")

        baseline, _ = best_of(args.repeat, lambda: read_and_hash(files))

        def ingest(deep: bool) -> None:
            storage = Storage(f"file://{tempfile.mkdtemp(dir=tmp)}")
            for session_dir in sessions:
                ingest_session(session_dir, storage, deep=deep)

        ours, _ = best_of(args.repeat, lambda: ingest(False))
        deep, _ = best_of(1, lambda: ingest(True))

    def rate(seconds: float) -> str:
        return f"{nbytes / 1e6 / seconds:8.1f} MB/s  {len(files) / seconds:8.0f} images/s"

    print(f"read + sha256 (baseline) : {rate(baseline)}")
    print(f"ingest_session           : {rate(ours)}")
    print(f"ingest_session deep      : {rate(deep)}")
    print(f"ratio ingest / baseline  : {baseline / ours:.2f}   (goal >= 0.7)")
    print(f"ratio deep / baseline    : {baseline / deep:.2f}   (decodes every image; opt-in)")


if __name__ == "__main__":
    main()
