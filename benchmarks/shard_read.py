"""Shard reading: our reader (``training.shards.read``) against webdataset's own, on the same shards.

The shards are real: simulated sessions written by the writer (``benchmarks.shards``'
helpers, ingest manifest, no landmarks or fits), with a ``train.png`` per sample
(``--resolution``) so a sample has the members training reads: ``jpg``, ``json``,
``train.png``. Both sides run in this process on the same files (page cache warmed),
in turns, best of ``--repeat`` runs per turn.

(a) members: every member of every shard, its bytes read. Ours: ``read.tar_entries``;
    webdataset: ``wds.tariterators.tar_file_expander`` (``tarfile`` in stream mode).
    Both over streams opened by ``read.open_url``, so only the tar parsing differs.
(b) samples: what the loader runs, ours ``read.shard_samples`` (open, parse, group) against
    ``wds.tarfile_to_samples()`` (webdataset's gopen, tar_file_expander, group_by_keys).

The ratio is webdataset's time / ours (above 1: ours is faster). The hand-written
parser stays only while ratio (a) is above 1.05.

    .venv/bin/python -m benchmarks.shard_read [--subjects N] [--upscale K] [--resolution PX] [--repeat N]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.common import best_of
from benchmarks.shards import prepare_sessions, write_ours
from capture_schema import derived_layout as layout
from training.shards import read
from training.shards.write import ShardConfig

KEEP_THRESHOLD = 1.05


def ours_members(urls: list[str]) -> tuple[int, int]:
    n = nbytes = 0
    for url in urls:
        with read.open_url(url) as stream:
            for _, data in read.tar_entries(stream, url):
                if data is not None:
                    n += 1
                    nbytes += len(data)
    return n, nbytes


def wds_members(urls: list[str]) -> tuple[int, int]:
    from webdataset.tariterators import tar_file_expander

    n = nbytes = 0
    streams = [{"url": url, "stream": read.open_url(url)} for url in urls]
    try:
        for member in tar_file_expander(iter(streams), eof_value=None):
            n += 1
            nbytes += len(member["data"])
    finally:
        for item in streams:
            item["stream"].close()
    return n, nbytes


def ours_samples(urls: list[str]) -> tuple[int, int]:
    n = nbytes = 0
    for sample in read.shard_samples({"url": url} for url in urls):
        n += 1
        nbytes += sum(len(v) for k, v in sample.items() if not k.startswith("__"))
    return n, nbytes


def wds_samples(urls: list[str]) -> tuple[int, int]:
    import webdataset as wds

    n = nbytes = 0
    for sample in wds.tarfile_to_samples()({"url": url} for url in urls):
        n += 1
        nbytes += sum(len(v) for k, v in sample.items() if not k.startswith("__"))
    return n, nbytes


def compare(name: str, ours, theirs, urls: list[str], repeat: int, rounds: int) -> float:
    """Best time of each side over ``rounds`` turns of ``best_of(repeat)``; prints both and the ratio."""
    best = {"ours": float("inf"), "webdataset": float("inf")}
    counts = {}
    for _ in range(rounds):
        for side, fn in (("ours", ours), ("webdataset", theirs)):
            seconds, counts[side] = best_of(repeat, lambda: fn(urls))
            best[side] = min(best[side], seconds)
    if counts["ours"] != counts["webdataset"]:
        raise SystemExit(f"{name}: the readers disagree: ours {counts['ours']}, webdataset {counts['webdataset']}")
    n, nbytes = counts["ours"]
    for side in best:
        print(f"  {side:<11}: {best[side] * 1e3:8.2f} ms  {n / best[side]:9.0f} {name}/s  "
              f"{nbytes / 1e6 / best[side]:8.1f} MB/s  ({best[side] / n * 1e6:6.2f} us per item)")
    ratio = best["webdataset"] / best["ours"]
    print(f"  ratio webdataset / ours: {ratio:.2f}   ({n} {name}, {nbytes / 1e6:.1f} MB)")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--upscale", type=int, default=1, help="re-encode simulated images this many times larger")
    parser.add_argument("--resolution", type=int, default=256, help="train.png resolution written into the shards")
    parser.add_argument("--max-samples", type=int, default=60, help="samples per shard")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="turns of the two sides")
    args = parser.parse_args()
    args.captures = args.calibration = None  # prepare_sessions: always simulate

    with tempfile.TemporaryDirectory() as tmp:
        sessions = prepare_sessions(args, Path(tmp))
        out = Path(tmp) / "shards"
        write_ours(sessions, out, ShardConfig(max_samples=args.max_samples, train_resolution=args.resolution,
                                              masks=False))
        urls = sorted(str(p) for p in out.rglob(f"*{layout.SHARD_SUFFIX}"))
        total = sum(Path(u).stat().st_size for u in urls)
        print(f"{len(sessions)} sessions, {len(urls)} shards, {total / 1e6:.1f} MB")
        for url in urls:  # page cache
            Path(url).read_bytes()
        print("\n(a) every member of every shard: read.tar_entries vs tar_file_expander")
        members = compare("members", ours_members, wds_members, urls, args.repeat, args.rounds)
        print("\n(b) samples: read.shard_samples vs wds.tarfile_to_samples")
        compare("samples", ours_samples, wds_samples, urls, args.repeat, args.rounds)
        verdict = "keep the hand-written reader" if members > KEEP_THRESHOLD else "switch to webdataset's reader"
        print(f"\nmembers ratio {members:.2f} vs threshold {KEEP_THRESHOLD}: {verdict}")


if __name__ == "__main__":
    main()
