"""Measure the numbers behind ``fitting.face_fit.quality``: detector noise per view angle and both
fit gates on good sessions and on sessions with a wrong calibration.

Faces that are not the built-in model's template: (i) ICT-FaceKit subjects through the
simulator's ICT face source (read from ``--ict-dir``, default ``../shared/data/ict_facekit``
beside the project; skipped with a message when absent) and (ii) built-in subjects for
comparison. Each session is simulated at 512 px, detected with mediapipe (both passes, as
the pipeline does) and fitted with the built-in model through the TRUE cameras. Printed:

1. mediapipe's error against the simulator's true 2D landmarks (per view: median over the
   478 landmarks) per view-angle bin, in image px and reference px, per face source, with
   the expected-noise table beside it; and the fit's residual per bin (true cameras);
2. the normalised residuals and both gate statistics on these good sessions;
3. the same after (a) rotating one camera by 3 degrees about its centre, (b) swapping two
   cameras' calibrations, for several cameras and pairs.

    .venv/bin/python -m benchmarks.fit_gate [--ict-subjects 3] [--builtin-subjects 2]
        [--perturb-sessions 2] [--work-dir DIR]   # DIR keeps simulated sessions and landmarks for a rerun

The defaults take ~5 minutes on 2 cores. The numbers quoted in ``fitting/face_fit/quality.py``
come from ``--ict-subjects 8 --builtin-subjects 4 --perturb-sessions 3`` (seed 5), ~10
minutes (3 with the sessions already under ``--work-dir``).

View angles for the detector-noise bins come from the ground truth (true head rotation,
true camera); the gates use the fitted head rotation, as in production.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.common import pct, summary, work_directory

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ICT_DIR = ROOT.parent / "shared" / "data" / "ict_facekit"
#: (camera, axis in the camera frame): pan turns about y, tilt about x, roll about the optical axis.
ROTATED = (("mid_C00", "pan"), ("mid_L30", "tilt"), ("up_R30", "pan"), ("low_L30", "tilt"), ("mid_R60", "pan"),
           ("up_L60", "tilt"), ("low_C00", "random"), ("mid_C00", "roll"), ("mid_L30", "roll"))
AXES = {"pan": (0.0, 1.0, 0.0), "tilt": (1.0, 0.0, 0.0), "roll": (0.0, 0.0, 1.0)}
SWAPPED = (("mid_L30", "mid_R30"), ("mid_C00", "up_C00"), ("mid_C00", "mid_L30"), ("up_L30", "up_R30"),
           ("mid_L60", "mid_R60"))
ROTATION_DEG = 3.0
BINS = (0, 10, 20, 30, 40, 50, 60, 70)


def rotated_camera(camera, degrees: float, axis: np.ndarray):
    """The camera turned by ``degrees`` about ``axis`` (camera frame) around its own centre."""
    import cv2

    dR, _ = cv2.Rodrigues(np.radians(degrees) * axis / np.linalg.norm(axis))
    centre = -camera.R.T @ camera.t
    R = dR @ camera.R
    return dataclasses.replace(camera, R=R, t=-R @ centre)


def with_cameras(calibration, changes: dict):
    return dataclasses.replace(calibration, cameras={**calibration.cameras, **changes})


def truth(gt_dir: Path) -> dict:
    from capture_schema.calibration_file import read_calibration

    frames = json.loads((gt_dir / "frames.json").read_text())
    with np.load(gt_dir / "landmarks_2d.npz") as data:
        landmarks = data["landmarks"].astype(np.float64)
    return {"calibration": read_calibration(gt_dir / "calibration.json"), "landmarks": landmarks,
            "rotation": np.array([f["head_rotation"] for f in frames["frames"]])}


def true_angles(rotation: np.ndarray, calibration, cameras) -> np.ndarray:
    """(E, C) angle between each true optical axis and the true facing direction (model -z)."""
    facing = rotation @ np.array([0.0, 0.0, -1.0])
    optical = np.stack([calibration.cameras[c].R[2] for c in cameras])
    return np.degrees(np.arccos(np.clip(-(facing @ optical.T), -1, 1)))


def simulate(kind: str, n: int, out: Path, ict_dir: Path, size: int, seed: int) -> list[tuple[Path, Path]]:
    """(session dir, ground-truth dir) per subject; reuses what a previous run left in ``out``."""
    from capture_simulator.face_source import load_face_source
    from capture_simulator.simulate import simulate_dataset

    root = out / f"{kind}_{n}_{size}_{seed}"
    done = root / "done.json"
    if not done.exists():
        source = load_face_source(kind, ict_dir if kind == "ict" else None)
        t0 = time.perf_counter()
        sim = simulate_dataset(root, n_subjects=n, size=size, seed=seed, n_board_poses=1, workers=2,
                               face_source=source)
        done.write_text(json.dumps(list(sim.session_ids)))
        print(f"  simulated {n} {kind} subject(s) in {time.perf_counter() - t0:.0f} s", flush=True)
    ids = json.loads(done.read_text())
    return [(root / "captures" / s, root / "ground_truth" / s) for s in ids]


def landmarks_for(session: Path, cache: Path):
    from fitting.landmarks.detect import detect_session
    from fitting.landmarks.store import read_landmarks_zarr, write_landmarks_zarr

    path = cache / f"{session.parent.parent.name}_{session.name}.zarr"
    if path.exists():
        return read_landmarks_zarr(path)
    t0 = time.perf_counter()
    lm = detect_session(session, workers=2)
    write_landmarks_zarr(lm, path)
    print(f"  detected {session.name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return lm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ict-subjects", type=int, default=3)
    parser.add_argument("--builtin-subjects", type=int, default=2)
    parser.add_argument("--ict-dir", type=Path, default=DEFAULT_ICT_DIR)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--work-dir", type=Path, help="keep simulated sessions and landmarks here (reused)")
    parser.add_argument("--perturb-sessions", type=int, default=2,
                        help="sessions per face source that get the rotated/swapped calibrations")
    args = parser.parse_args()

    from fitting.face_fit.fitter import VIEW_OUTLIER, FitConfig
    from fitting.face_fit.quality import (MODEL_FACING_AXIS, NOISE_TABLE_DEG, NOISE_TABLE_REF_PX, evaluate_fit,
                                          expected_detector_noise_px, model_facing_axis)
    from fitting.face_fit.session import fit_session
    from fitting.face_models import load_face_model
    from fitting.face_models.builtin import OUTER_EYE_CORNERS
    from fitting.face_models.ict import TOPOLOGY_FILE

    work, tmp = work_directory(args.work_dir)
    sources = []
    if args.ict_subjects > 0:
        if (args.ict_dir / TOPOLOGY_FILE).is_file():
            sources.append(("ict", args.ict_subjects))
        else:
            print(f"SKIPPING ICT-FaceKit subjects: {args.ict_dir / TOPOLOGY_FILE} not found "
                  "(pass --ict-dir with the packaged ICT-FaceKit npz files)")
    if args.builtin_subjects > 0:
        sources.append(("builtin", args.builtin_subjects))
    model = load_face_model()
    # Bad fits for gate (a), true cameras: one that learnt nothing (the mean face, neutral, only the
    # head pose free) and one stopped after 3 L-BFGS iterations per stage.
    BAD_FITS = {"rigid mean face": FitConfig(identity_prior=1e9, expression_prior=1e9),
                "unconverged fit": FitConfig(pose_iterations=3, iterations=3)}
    print(f"noise table (deg: ref px): {dict(zip(NOISE_TABLE_DEG, NOISE_TABLE_REF_PX))}")
    facing = model_facing_axis(model)
    print(f"built-in model's facing axis from its landmarks: {np.round(facing, 3)}, "
          f"{np.degrees(np.arccos(np.clip(facing @ np.asarray(MODEL_FACING_AXIS), -1, 1))):.1f} deg from the "
          f"convention {MODEL_FACING_AXIS}")

    rng = np.random.default_rng(0)
    per_source: dict[str, dict] = {}
    cam_by_name: dict[str, dict[str, list]] = {}
    bad_rows: list[dict] = []
    for kind, n in sources:
        print(f"[{kind}] simulating / detecting {n} subject(s) at {args.size} px", flush=True)
        sessions = simulate(kind, n, work, args.ict_dir, args.size, args.seed)
        acc: dict[str, list] = {k: [] for k in (
            "angle", "det_px", "det_ref", "res_ref", "r_used", "r_all", "r_det", "n_detected", "n_views", "fitq",
            "cam_worst", "cam_all", "scale", "facing_err_deg", "old_gate")}
        for s_index, (session, gt_dir) in enumerate(sessions):
            lm = landmarks_for(session, work)
            gt = truth(gt_dir)
            cams = lm.cameras
            # detector error against the true 2D landmarks
            err_px = np.median(np.linalg.norm(lm.landmarks - gt["landmarks"], axis=-1), axis=-1)  # (E, C)
            eye = np.linalg.norm(gt["landmarks"][:, :, OUTER_EYE_CORNERS[0]]
                                 - gt["landmarks"][:, :, OUTER_EYE_CORNERS[1]], axis=-1)
            scale = np.median(eye, axis=1) / 60.0  # the fitter's reference-pixel convention, per frame
            angle = true_angles(gt["rotation"], gt["calibration"], cams)
            t0 = time.perf_counter()
            fit = fit_session(model, lm, gt["calibration"])
            t_fit = time.perf_counter() - t0
            gates = evaluate_fit(fit, gt["calibration"])
            v = gates.views
            det = lm.detected
            acc["angle"].append(angle[det])
            acc["det_px"].append(err_px[det])
            acc["det_ref"].append((err_px / scale[:, None])[det])
            acc["res_ref"].append(v.residual_ref_px[det])
            acc["r_all"].append(v.normalised[v.judged])
            acc["r_det"].append(v.normalised[det])
            acc["n_detected"].append(int(det.sum()))
            acc["n_views"].append(det.size)
            for c, value in gates.camera_consistency.camera_median.items():
                cam_by_name.setdefault(kind, {}).setdefault(c, []).append(value)
            acc["r_used"].append(v.normalised[v.used])
            acc["fitq"].append(gates.fit_quality.median_normalised)
            acc["cam_worst"].append(gates.camera_consistency.worst)
            acc["cam_all"].extend(gates.camera_consistency.camera_median.values())
            acc["scale"].append(scale)
            acc["facing_err_deg"].append(np.abs(v.view_angle_deg - angle)[np.isfinite(v.view_angle_deg)])
            n_out = int((fit.fit.view_status == VIEW_OUTLIER).sum())
            used = fit.fit.view_status == "used"
            acc["old_gate"].append(float(np.median(fit.fit.view_rmse_px[used])))
            cc = gates.camera_consistency
            worst_cam = max((c for c in cc.camera_median if np.isfinite(cc.camera_median[c])),
                            key=lambda c: cc.camera_median[c])
            print(f"  {session.name}: fit {t_fit:.1f} s, {n_out} outlier views; old gate (median view RMSE, "
                  f"used views) {acc['old_gate'][-1]:.2f} px; fit quality "
                  f"{gates.fit_quality.median_normalised:.2f}, worst camera {worst_cam} {cc.worst:.2f}, "
                  f"px scale {np.median(scale):.2f}; {gates.fit_quality.passed and cc.passed and 'PASS' or 'FAIL'}",
                  flush=True)
            if s_index >= args.perturb_sessions:
                continue
            cases = []
            for cam, how in ROTATED:
                axis = rng.normal(size=3) if how == "random" else np.array(AXES[how])
                cases.append((f"rot3-{how} {cam}", (cam,), with_cameras(gt["calibration"], {
                    cam: rotated_camera(gt["calibration"].cameras[cam], ROTATION_DEG, axis)})))
            for a, b in SWAPPED:
                cases.append((f"swap {a}<>{b}", (a, b), with_cameras(gt["calibration"], {
                    a: gt["calibration"].cameras[b], b: gt["calibration"].cameras[a]})))
            cases += [("rigid mean face", (), gt["calibration"]), ("unconverged fit", (), gt["calibration"])]
            for name, bad_cams, calib in cases:
                config = BAD_FITS.get(name, FitConfig())
                bfit = fit_session(model, lm, calib, config)
                g = evaluate_fit(bfit, calib)
                cc = g.camera_consistency
                others = [cc.camera_median[c] for c in cc.camera_median if c not in bad_cams]
                bad_rows.append({
                    "source": kind, "session": session.name, "case": name,
                    "fitq": g.fit_quality.median_normalised, "fitq_pass": g.fit_quality.passed,
                    "bad": [cc.camera_median[c] for c in bad_cams], "others_max": np.nanmax(others),
                    "named": cc.failing_cameras, "caught": all(c in cc.failing_cameras for c in bad_cams),
                    "innocent": bool(set(cc.failing_cameras) - set(bad_cams)),
                    "outliers": int((bfit.fit.view_status == VIEW_OUTLIER).sum()),
                })
                r = bad_rows[-1]
                print(f"    {name:28s} fitq {r['fitq']:5.2f}  bad cam(s) "
                      f"{' '.join(f'{x:6.2f}' for x in r['bad'])}  others max {r['others_max']:5.2f}  "
                      f"outlier views {r['outliers']:2d}  named {','.join(r['named']) or '-'}", flush=True)
        per_source[kind] = {k: (np.concatenate(v) if v and isinstance(v[0], np.ndarray) else np.asarray(v))
                            for k, v in acc.items()}
        per_source[kind]["n_detected"] = int(np.sum(acc["n_detected"]))
        per_source[kind]["n_views"] = int(np.sum(acc["n_views"]))

    print("\n=== 1. mediapipe error vs the true 2D landmarks, per true view-angle bin (per-view median "
          "over 478 landmarks); fit residual and r on the good fits ===")
    print(f"{'source':8s} {'bin deg':>8s} {'views':>5s} {'med px':>7s} {'p90 px':>7s} {'med ref':>7s} "
          f"{'p90 ref':>7s} {'table':>6s} {'fit res ref':>11s} {'med r':>6s} {'p95 r':>6s}")
    for kind, a in per_source.items():
        for lo, hi in zip(BINS[:-1], BINS[1:]):
            m = (a["angle"] >= lo) & (a["angle"] < hi)
            if not m.any():
                continue
            mid = np.median(a["angle"][m])
            print(f"{kind:8s} {lo:3d}-{hi:<4d} {m.sum():5d} {np.median(a['det_px'][m]):7.2f} "
                  f"{pct(a['det_px'][m], 90):7.2f} {np.median(a['det_ref'][m]):7.2f} {pct(a['det_ref'][m], 90):7.2f} "
                  f"{expected_detector_noise_px(mid):6.2f} {np.nanmedian(a['res_ref'][m]):11.2f} "
                  f"{np.nanmedian(a['r_det'][m]):6.2f} {pct(a['r_det'][m], 95):6.2f}")
        print(f"{kind:8s} px per reference px: median {np.median(a['scale']):.2f} "
              f"(range {a['scale'].min():.2f}-{a['scale'].max():.2f}); fitted vs true view angle: median "
              f"{np.median(a['facing_err_deg']):.2f} deg, max {a['facing_err_deg'].max():.2f} deg; detected "
              f"{a['n_detected']}/{a['n_views']} views")

    print("\n=== 2. good sessions (true cameras): normalised residual r = residual / expected noise ===")
    for kind, a in per_source.items():
        print(f"{kind:8s} r, used views              {summary(a['r_used'])}")
        print(f"{kind:8s} r, all detected views      {summary(a['r_all'])}")
        print(f"{kind:8s} (a) fit quality, per session {summary(a['fitq'])}")
        print(f"{kind:8s} (b) camera median, per camera {summary(a['cam_all'])}")
        print(f"{kind:8s} (b) worst camera, per session {summary(a['cam_worst'])}")
        print(f"{kind:8s} old gate: median view RMSE px {summary(a['old_gate'])}")
    names = list(next(iter(cam_by_name.values())).keys()) if cam_by_name else []
    if names:
        print("per camera, (b) median r over sessions [max]: " + "  ".join(
            f"{c} " + "/".join(f"{np.median(cam_by_name[k][c]):.2f}[{np.max(cam_by_name[k][c]):.2f}]"
                               for k in cam_by_name) for c in names) + f"   ({'/'.join(cam_by_name)})")

    if bad_rows:
        print(f"\n=== 3. bad calibrations ({ROTATION_DEG:g} deg rotation about the camera centre; swaps) "
              "and a bad fit ===")
        groups = (("rotated pan/tilt/random", lambda r: r["case"].startswith("rot") and "roll" not in r["case"]),
                  ("rotated roll only", lambda r: "roll" in r["case"]),
                  ("swapped", lambda r: r["case"].startswith("swap")),
                  ("bad fits, true cameras", lambda r: not r["case"].startswith(("rot", "swap"))))
        for label, pred in groups:
            rows = [r for r in bad_rows if pred(r)]
            if not rows:
                continue
            bad_vals = [x for r in rows for x in r["bad"]]
            print(f"{label}:")
            if bad_vals:
                print(f"   (b) wronged camera median r   {summary(bad_vals)}")
            print(f"   (b) other cameras' max r      {summary([r['others_max'] for r in rows])}")
            print(f"   (a) fit quality               {summary([r['fitq'] for r in rows])}")
            if bad_vals:
                print(f"   caught (every wronged camera named) {sum(r['caught'] for r in rows)}/{len(rows)}; "
                      f"an innocent camera named in {sum(r['innocent'] for r in rows)}/{len(rows)}")
            per_case: dict[str, list] = {}
            for r in rows:
                per_case.setdefault(r["case"], []).append(r)
            for case, rs in per_case.items():
                print(f"     {case:28s} " + "  ".join(
                    f"[{' '.join(f'{x:.2f}' for x in r['bad'])}{' ' if r['bad'] else ''}fitq {r['fitq']:.2f}]"
                    for r in rs))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
