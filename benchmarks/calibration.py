"""Wall time of the joint pycolmap refinement as a ratio to OpenCV's per-camera calibrateCamera.

Both run in this process on the same detections (the views the rig initialisation
keeps), best of ``--repeat`` runs each. The baseline calibrates each camera alone
(13 small problems, no shared board poses); the refinement solves one problem over
every camera's intrinsics, distortion and pose and every board pose.

    .venv/bin/python -m benchmarks.calibration [--calib DIR] [--size PX] [--poses N]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


import cv2
import numpy as np

from benchmarks.common import best_of
from fitting.calibration.boards import board_object_points
from fitting.calibration.detect import detect_folder, load_board
from fitting.calibration.initialize import initialize_rig
from fitting.calibration.refine import refine_rig


def opencv_per_camera(initial, sizes: dict[str, tuple[int, int]]) -> float:
    """Sum of calibrateCamera over cameras; returns the mean RMS to show the work was real."""
    obj = board_object_points(initial.spec)
    rms = []
    for cam_id, views in initial.views.items():
        object_points = [obj[v.ids].astype(np.float32) for v in views.values()]
        image_points = [v.corners.astype(np.float32).reshape(-1, 1, 2) for v in views.values()]
        rms.append(cv2.calibrateCamera(object_points, image_points, sizes[cam_id], None, None)[0])
    return float(np.mean(rms))


def simulated_folder(out: Path, size: int, poses: int) -> Path:
    from capture_schema.board import write_board
    from capture_simulator.board_render import DEFAULT_BOARD
    from capture_simulator.rig import default_rig
    from capture_simulator.simulate import render_calibration_captures

    shots, _ = render_calibration_captures(default_rig(size=size), DEFAULT_BOARD, poses, seed=0)
    write_board(out / "board.json", DEFAULT_BOARD)
    for cam_id, images in shots.items():
        (out / cam_id).mkdir(parents=True)
        for n, data in enumerate(images):
            (out / cam_id / f"{n:03d}.png").write_bytes(data)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calib", help="a calibration folder (default: simulate the 13-camera rig)")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--poses", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        calib = Path(args.calib) if args.calib else simulated_folder(Path(tmp) / "calibration", args.size, args.poses)
        detections = detect_folder(calib, None, spec=load_board(calib))
        initial = initialize_rig(detections)
    sizes = {c: d.image_size for c, d in detections.cameras.items()}
    n_obs = sum(len(v.ids) for views in initial.views.values() for v in views.values())
    print(f"{len(initial.cameras)} cameras, {len(initial.board_poses)} board poses, {n_obs} corner observations")
    t_cv, rms_cv = best_of(args.repeat, lambda: opencv_per_camera(initial, sizes))
    t_ba, refined = best_of(args.repeat, lambda: refine_rig(initial))
    print(f"opencv calibrateCamera x{len(initial.cameras)} : {t_cv * 1e3:8.1f} ms  (mean RMS {rms_cv:.3f} px)")
    print(f"pycolmap joint refinement      : {t_ba * 1e3:8.1f} ms  (RMS {refined.rmse_px:.3f} px)")
    print(f"ratio refinement / opencv      : {t_ba / t_cv:.2f}")


if __name__ == "__main__":
    main()
