"""Everything the latent-space report measures for one prior, in memory: interpolations, samples, coverage.

* **Interpolations** between ``pairs`` training subjects (a seeded draw) give the smoothness (mean over
  pairs) and whether each path moves monotonically from one face to the other; one more per held-out
  subject with an adapted code, from its nearest training subject, is shown (not averaged in).
* **Samples** of the Gaussian fitted to the training codes, and the mean code, are rendered on the
  3DMM's mean shape and checked by mediapipe (``plausibility``): the plausible share.
* **Coverage** of each held-out subject's adapted code (``codes.held_out_codes``).

Every image is rendered from the configured camera and expression: interpolations on the start
subject's captured frame, samples on the first training subject's frame.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from fitting.face_models.base import FaceModel
from training.latent.codes import HeldOutCodes, training_codes
from training.latent.config import LatentConfig
from training.latent.interpolate import Interpolation, endpoint, interpolate
from training.latent.metrics import code_spread, coverage, nearest_distances, share
from training.latent.plausibility import FaceCheck, check_faces
from training.latent.sample import fit_gaussian
from training.latent.scene import LatentInputError, Rendered, load_reference_frames, render_avatars

Log = Callable[[str], None]


@dataclass
class LatentAnalysis:
    """What one prior's latent space measured, with the renders the report shows."""

    config: LatentConfig
    subjects: list[str]
    training: list[Interpolation] = field(default_factory=list)
    held_out: list[Interpolation] = field(default_factory=list)
    samples: Rendered | None = None
    sample_checks: list[FaceCheck] = field(default_factory=list)
    mean: Rendered | None = None
    mean_check: FaceCheck | None = None
    coverage: pd.DataFrame = field(default_factory=pd.DataFrame)
    gaussian_rank: int = 0
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """The one-row summary (``metrics.parquet``, the ablation's columns, Dagster metadata)."""
        smooth = [i.smoothness for i in self.training]
        checks = self.sample_checks
        nmes = [c.nme for c in checks if c.detected]
        cov = self.coverage["coverage"].to_numpy(float) if len(self.coverage) else np.array([])
        nan = float("nan")
        return {
            "identities": len(self.subjects), "gaussian_rank": self.gaussian_rank,
            "pairs": len(self.training), "steps": self.config.steps,
            "smoothness": float(np.mean(smooth)) if smooth else nan,
            "smoothness_max": float(np.max(smooth)) if smooth else nan,
            "monotonic_share": share([i.profile.monotonic for i in self.training]),
            "samples": len(checks), "detected_share": share([c.detected for c in checks]),
            "plausible_share": share([c.plausible for c in checks]),
            "sample_nme_median": float(np.median(nmes)) if nmes else nan,
            "mean_code_detected": bool(self.mean_check and self.mean_check.detected),
            "mean_code_plausible": bool(self.mean_check and self.mean_check.plausible),
            "mean_code_nme": self.mean_check.nme if self.mean_check else nan,
            "held_out": len(self.coverage), "coverage_k": int(self.coverage["k"].iloc[0]) if len(self.coverage) else 0,
            "coverage_mean": float(np.mean(cov)) if cov.size and np.isfinite(cov).all() else nan,
            "coverage_max": float(np.max(cov)) if cov.size and np.isfinite(cov).all() else nan,
            "camera": self.config.camera, "expression": self.config.expression, "seconds": self.seconds,
        }


def choose_pairs(n: int, pairs: int, seed: int) -> list[tuple[int, int]]:
    """``pairs`` distinct index pairs of ``n`` codes (a seeded draw, sorted), or every pair when there are fewer."""
    every = list(itertools.combinations(range(n), 2))
    if len(every) <= pairs:
        return every
    chosen = np.random.default_rng(seed).choice(len(every), size=pairs, replace=False)
    return [every[i] for i in sorted(chosen.tolist())]


def coverage_table(held: HeldOutCodes, subjects: Sequence[str], codes: np.ndarray) -> pd.DataFrame:
    """One row per held-out subject: nearest training subject, distance, the training spread and the coverage."""
    if not held.subjects:
        return pd.DataFrame(columns=["subject_id", "k", "nearest_subject", "distance", "spread", "coverage"])
    d = np.linalg.norm(held.codes[:, None, :] - codes[None, :, :], axis=-1)
    return pd.DataFrame({"subject_id": list(held.subjects), "k": held.k,
                         "nearest_subject": [subjects[i] for i in d.argmin(axis=1)],
                         "distance": nearest_distances(held.codes, codes), "spread": code_spread(codes),
                         "coverage": coverage(held.codes, codes)})


def analyse(prior, subjects: Sequence[str], face_model: FaceModel, index: pa.Table | str | os.PathLike[str],
            config: LatentConfig, held: HeldOutCodes | None = None, log: Log | None = None) -> LatentAnalysis:
    """Interpolate, sample and measure ``prior``'s latent space (see the module docstring)."""
    say = log or (lambda _: None)
    start = time.perf_counter()
    subjects = list(subjects)
    codes = training_codes(prior)
    if len(codes) != len(subjects):
        raise LatentInputError(f"the checkpoint lists {len(subjects)} subjects for {len(codes)} identity codes")
    held = held or HeldOutCodes((), np.zeros((0, codes.shape[1])), 0)
    resolution = config.resolution or prior.config.resolution
    pairs = choose_pairs(len(subjects), config.pairs, config.seed)
    out = LatentAnalysis(config, subjects)
    out.coverage = coverage_table(held, subjects, codes)
    needed = sorted({subjects[0], *(subjects[i] for p in pairs for i in p), *held.subjects,
                     *out.coverage["nearest_subject"]})
    frames = load_reference_frames(index, needed, config.camera, config.expression, face_model, resolution,
                                   prior.config.crop_scale, prior.config.head_depth)
    for a, b in pairs:
        path = interpolate(prior, face_model, frames[subjects[a]], endpoint(subjects[a], codes[a], frames[subjects[a]]),
                           endpoint(subjects[b], codes[b], frames[subjects[b]]), config.steps, resolution)
        out.training.append(path)
        say(f"interpolation {subjects[a]} -> {subjects[b]}: smoothness {path.smoothness:.3f}, "
            f"monotonic {path.profile.monotonic}")
    for row, code in zip(out.coverage.itertuples(), held.codes):
        near = subjects.index(row.nearest_subject)
        out.held_out.append(interpolate(prior, face_model, frames[row.nearest_subject],
                                        endpoint(row.nearest_subject, codes[near], frames[row.nearest_subject]),
                                        endpoint(row.subject_id, code, frames[row.subject_id]), config.steps,
                                        resolution))
        say(f"coverage of {row.subject_id} (K={row.k}): {row.coverage:.3f} (nearest {row.nearest_subject})")
    gaussian = fit_gaussian(codes)
    out.gaussian_rank = gaussian.rank
    drawn = gaussian.sample(config.samples, config.seed)
    scene = frames[subjects[0]]
    shape = np.zeros((1, face_model.n_identity))
    out.mean = render_avatars(prior, face_model, scene, gaussian.mean[None], shape, scene.expression[None], resolution)
    out.samples = render_avatars(prior, face_model, scene, drawn, shape.repeat(len(drawn), 0),
                                 np.repeat(scene.expression[None], len(drawn), 0), resolution)
    from fitting.landmarks.detect import FaceMeshDetector

    with FaceMeshDetector(mirror=True) as detector:
        [out.mean_check] = check_faces(out.mean.images, out.mean.landmarks, out.mean.landmark_ids, config.detect_px,
                                       detector)
        out.sample_checks = check_faces(out.samples.images, out.samples.landmarks, out.samples.landmark_ids,
                                        config.detect_px, detector)
    out.seconds = time.perf_counter() - start
    summary = out.summary()
    say(f"samples: {summary['plausible_share']:.0%} plausible, {summary['detected_share']:.0%} detected of "
        f"{summary['samples']}; mean code {'plausible' if out.mean_check.plausible else 'NOT plausible'} "
        f"(NME {out.mean_check.nme:.3f}); {out.seconds:.1f} s")
    return out
