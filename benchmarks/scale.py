"""Capacity plan: what Dagster's orchestration costs, how the session stages scale, and what
2,407 studio sessions would take.

Two ways to materialise the session assets of the same simulated sessions, each with the
same number of processes, into fresh storage roots:

(a) the deployment's way: ``backfill_all_sessions`` (a real backfill through the instance's
    run queue and ``dagster-daemon``, one run process per session, pools applied);
(b) the same asset bodies (which call the library stages) invoked directly, one session per
    task of a ``ProcessPoolExecutor`` of that many processes: no instance, no runs, no event log.

(a)/(b) is Dagster's overhead (goal <= 1.15 with several workers). (b) with one process also
times each stage; measured at two image sizes, each stage's time is fitted as
``fixed + per_pixel x pixels`` and projected to 2048 x 1536, with shard bytes likewise. The
projection for 2,407 sessions assumes session runs scale linearly with workers (independent
partitions on separate cores or machines, at the 2-worker efficiency measured here) and says
what does not: the shared calibration (once per rig and board capture), the dataset index
(one process over every session) and the prior (its own GPU plan, README "Training at full size").

    .venv/bin/python -m benchmarks.scale [--sessions 8] [--size 384] [--second-size 512] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

SUBJECTS_TO_PLAN = 2407
STUDIO_PIXELS = 2048 * 1536
PLAN_WORKERS = (1, 8, 64)
STAGES = ("session_manifest", "camera_calibration", "face_landmarks", "face_fits", "session_shards")


def _direct_session(captures: str, storage_url: str, session_id: str) -> dict[str, float]:
    """Invoke the session assets' bodies in order for one session; seconds per stage."""
    import dagster as dg

    from pipelines.definitions import SESSION_ASSETS
    from pipelines.partitions import SESSIONS_PARTITION
    from pipelines.resources import CapturesResource, FaceModelResource, StorageResource

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(SESSIONS_PARTITION, [session_id])
    resources = {"captures": CapturesResource(root=captures), "storage": StorageResource(url=storage_url),
                 "face_model": FaceModelResource()}
    times = {}
    for asset in SESSION_ASSETS:
        start = time.perf_counter()
        asset(dg.build_asset_context(partition_key=session_id, instance=instance, resources=resources))
        times[asset.key.to_user_string()] = time.perf_counter() - start
    return times


def _fresh(*folders: Path) -> None:
    """Empty output folders: a step whose inputs are unchanged is reused, not recomputed, so never time one twice."""
    import shutil

    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def direct(captures: Path, sessions: list[str], storage: Path, processes: int) -> tuple[float, list[dict]]:
    """(b): every session's stages in a pool of ``processes``; wall seconds and per-session stage times."""
    import multiprocessing

    _fresh(storage)
    from pipelines.deployment import thread_env

    os.environ.update(thread_env(processes))  # inherited by the pool's processes, as the backfill's runs get it
    start = time.perf_counter()
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        times = list(pool.map(_direct_session, [str(captures)] * len(sessions), [f"file://{storage}"] * len(sessions),
                              sessions))
    return time.perf_counter() - start, times


def backfill(captures: Path, storage: Path, home: Path, workers: int) -> float:
    """(a): the sessions as a backfill on a fresh embedded instance; wall seconds."""
    from pipelines.deployment import instance_at, prepare_home, set_pool_limits
    from pipelines.resources import CapturesResource, StorageResource
    from pipelines.runner import backfill_all_sessions

    _fresh(storage, home)
    prepare_home(home, workers)
    instance = instance_at(home)
    set_pool_limits(instance, workers)
    start = time.perf_counter()
    runs = backfill_all_sessions(instance, home, CapturesResource(root=str(captures)),
                                 StorageResource(url=f"file://{storage}"), workers, log=lambda _: None)
    seconds = time.perf_counter() - start
    assert all(r.success and not r.failed_checks for r in runs), runs
    return seconds


def shard_bytes(storage: Path) -> int:
    return sum(p.stat().st_size for p in (storage / "shards").rglob("*.tar"))


def _simulate(folder: Path, n: int, size: int) -> tuple[Path, list[str]]:
    from capture_simulator.simulate import simulate_dataset

    marker = folder / "done"
    if not marker.exists():
        simulate_dataset(folder, n_subjects=n, size=size, seed=3)
        marker.touch()
    captures = folder / "captures"
    return captures, sorted(p.name for p in captures.iterdir() if (p / "session.json").exists())


def _per_stage(times: list[dict]) -> dict[str, float]:
    """Median seconds per session of each stage; for the calibration, the fastest (a session reusing the
    rig's calibration) and, as ``calibrate``, the slowest (the session that computed it)."""
    import numpy as np

    out = {stage: float(np.median([t[stage] for t in times])) for stage in STAGES}
    out["camera_calibration"] = min(t["camera_calibration"] for t in times)  # a session reusing it
    out["calibrate"] = max(t["camera_calibration"] for t in times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--size", type=int, default=384, help="image size of the main measurement (px)")
    parser.add_argument("--second-size", type=int, default=1024, help="second size, for the per-pixel fit")
    parser.add_argument("--second-sessions", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--work-dir", type=Path, help="keep simulations and outputs here (default: a temp folder)")
    args = parser.parse_args()

    keep = args.work_dir is not None
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="o2a-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"simulating {args.sessions} sessions at {args.size} px and {args.second_sessions} at "
          f"{args.second_size} px under {work}", flush=True)
    captures, sessions = _simulate(work / f"sim{args.size}", args.sessions, args.size)
    captures2, sessions2 = _simulate(work / f"sim{args.second_size}", args.second_sessions, args.second_size)
    images = 169 * len(sessions)

    rows, stage_times, tb_bytes = [], {}, {}
    for workers in args.workers:
        b_wall, times = direct(captures, sessions, work / f"direct{workers}", workers)
        a_wall = backfill(captures, work / f"backfill{workers}", work / f"home{workers}", workers)
        rows.append((workers, a_wall, b_wall))
        if workers == 1:
            stage_times[args.size] = _per_stage(times)
            tb_bytes[args.size] = shard_bytes(work / "direct1") / len(sessions)
        print(f"  {workers} worker(s): backfill {a_wall:6.1f} s, direct {b_wall:6.1f} s, "
              f"overhead (a)/(b) {a_wall / b_wall:.2f}x", flush=True)
    _, times2 = direct(captures2, sessions2, work / "direct_second", 1)
    stage_times[args.second_size] = _per_stage(times2)
    tb_bytes[args.second_size] = shard_bytes(work / "direct_second") / len(sessions2)

    print(f"\nDagster overhead, {len(sessions)} sessions at {args.size} px ({images} images):")
    print("  workers | backfill (a) s | direct (b) s | (a)/(b) | backfill speed-up over 1 worker")
    one = rows[0][1]
    for workers, a_wall, b_wall in rows:
        print(f"  {workers:7d} | {a_wall:14.1f} | {b_wall:12.1f} | {a_wall / b_wall:7.2f} | {one / a_wall:.2f}x")

    small, big = args.size ** 2, args.second_size ** 2
    print("\nper stage, one process, median seconds per session (169 images) and images/s (face_landmarks runs "
          "its own detector processes, one per core; camera_calibration here reuses the rig's calibration, "
          "calibrate is the one session that computed it):")
    print(f"  {'stage':20s} | {args.size:>5d} px s | {args.second_size:>5d} px s | img/s at {args.size} px | "
          f"projected s at 2048x1536")
    projected = {}
    for stage in (*STAGES, "calibrate"):
        t1, t2 = stage_times[args.size][stage], stage_times[args.second_size][stage]
        per_pixel = max(0.0, (t2 - t1) / (big - small))
        fixed = max(0.0, t1 - per_pixel * small)
        projected[stage] = fixed + per_pixel * STUDIO_PIXELS
        print(f"  {stage:20s} | {t1:10.2f} | {t2:10.2f} | {169 / max(t1, 1e-9):15.1f} | {projected[stage]:8.1f}")
    per_pixel_bytes = (tb_bytes[args.second_size] - tb_bytes[args.size]) / (big - small)
    session_bytes = tb_bytes[args.size] + per_pixel_bytes * (STUDIO_PIXELS - small)

    per_run = [(a_wall - b_wall) * workers / len(sessions) for workers, a_wall, b_wall in rows]
    studio_session = sum(projected[stage] for stage in STAGES)
    print(f"\nDagster's cost is fixed per run: {', '.join(f'{o:.1f} s' for o in per_run)} per session run at "
          f"{', '.join(str(w) for w, _, _ in rows)} worker(s) (a run's process start and code load, the steps' "
          "first imports in a new process, the queue's 1 s dequeue); against the projected "
          f"{studio_session:.0f} s of work per 2048x1536 session that is an overhead ratio of "
          + ", ".join(f"{(studio_session + o) / studio_session:.2f}x" for o in per_run))

    efficiency = (one / rows[-1][1]) / rows[-1][0] if len(rows) > 1 else 1.0
    print(f"\nprojection for {SUBJECTS_TO_PLAN} sessions at 2048x1536 (linear in pixels from the two sizes; "
          f"session runs in parallel at the measured {len(rows) > 1 and rows[-1][0]}-worker efficiency "
          f"{efficiency:.2f}, one process per worker):")
    print("  stage                | " + " | ".join(f"{w:>3d} worker(s) h" for w in PLAN_WORKERS))
    for stage in (*STAGES, "calibrate"):  # calibrate: once per rig and board capture, on one worker
        total = projected[stage] * (1 if stage == "calibrate" else SUBJECTS_TO_PLAN)
        cells = []
        for w in PLAN_WORKERS:
            parallel = 1 if stage == "calibrate" else w * (efficiency if w > 1 else 1.0)
            cells.append(f"{total / parallel / 3600:16.2f}")
        print(f"  {stage:20s} | " + " | ".join(cells))
    print(f"  shards: {session_bytes / 1e6:.0f} MB per session -> {session_bytes * SUBJECTS_TO_PLAN / 1e12:.2f} TB "
          f"for {SUBJECTS_TO_PLAN} sessions (simulated JPEGs; studio JPEGs of ~2.5 MB give ~1 TB of originals)")
    print("  not linear in workers: the calibration (once per rig and board capture), the dataset index "
          "(one process reads every session's shards.json) and the prior (GPUs, README 'Training at full size')")
    if not keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
