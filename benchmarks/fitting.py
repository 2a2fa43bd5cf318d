"""Session fit time as a ratio to the landmark detection time of the same session.

Detection is mediapipe FaceMesh on all 169 images (with the mirrored second pass
the pipeline uses), inline in this process (``workers=1``) so both sides use the
same single process; the fit is the batched torch problem over all 13 frames
and 13 views. Best of ``--repeat`` runs each, on a simulated session (or
``--session DIR --calibration FILE``). Goal: fit <= 0.5 x detection.

    .venv/bin/python -m benchmarks.fitting [--repeat N] [--session DIR --calibration FILE]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


from benchmarks.common import best_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--session", help="a session folder (default: simulate one at 512 px)")
    parser.add_argument("--calibration", help="calibration.json for --session")
    args = parser.parse_args()

    from capture_schema.calibration_file import read_calibration
    from fitting.face_fit.session import fit_session
    from fitting.face_models.builtin import builtin_face_model
    from fitting.landmarks.detect import detect_session

    with tempfile.TemporaryDirectory() as tmp:
        if args.session:
            session, calibration = Path(args.session), read_calibration(Path(args.calibration))
        else:
            from capture_simulator.simulate import simulate_dataset

            sim = simulate_dataset(Path(tmp) / "sim", n_subjects=1, size=512, seed=11, n_board_poses=2)
            session = sim.captures_root / sim.session_ids[0]
            calibration = read_calibration(sim.ground_truth_root / sim.session_ids[0] / "calibration.json")
        model = builtin_face_model()
        t_detect, landmarks = best_of(args.repeat, lambda: detect_session(session, workers=1))
        fit_session(model, landmarks, calibration)  # warm-up: torch kernels, model tensors
        t_fit, result = best_of(args.repeat, lambda: fit_session(model, landmarks, calibration))
    used = result.fit.view_status == "used"
    print(f"session {session.name}: {int(landmarks.detected.sum())}/{landmarks.detected.size} faces, "
          f"{int(used.sum())} views used, median view RMSE {np.median(result.fit.view_rmse_px[used]):.2f} px")
    print(f"landmark detection (169 images, mirrored pass, 1 process): {t_detect:.2f} s")
    print(f"session fit ({model.name}, {model.n_identity} id + 13 x {model.n_expression} expr + 13 poses): "
          f"{t_fit:.2f} s")
    print(f"ratio fit / detection: {t_fit / t_detect:.2f} (goal <= 0.5)")


if __name__ == "__main__":
    main()
