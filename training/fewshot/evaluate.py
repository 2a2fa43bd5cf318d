"""The few-shot evaluation protocol: per held-out subject and K, adapt with every method and score.

For each subject the frames come from the dataset index (the pipeline's calibrated
cameras and 3DMM fits, never ground truth). ``selection`` picks the K inputs and
the evaluation frames; every method adapts on the same inputs and renders the same
evaluation frames, scored against the captured crops (composited onto the mask
background, as the prior was trained) by PSNR, SSIM and SSIM inside the head mask.
In the ``perturbed`` condition each input camera is first rotated by
``camera_noise_deg`` about its centre (seeded axis), the evaluation cameras are
left as estimated: joint camera optimisation has to undo the error.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import torch

from capture_schema import derived_layout as layout
from fitting.camera_model import axis_angle_to_matrix
from fitting.face_models.base import FaceModel
from training.fewshot.adapt import Adapted, adapt_latent, refine, train_scratch
from training.fewshot.config import FewShotConfig
from training.fewshot.metrics import score_images
from training.fewshot.report import GridRow
from training.fewshot.selection import choose_eval_frames, choose_inputs
from training.loader import SampleFilter
from training.prior.checkpoint import save_checkpoint
from training.prior.dataset import frame_loader, prior_data_from_index, read_index
from training.prior.evaluate import render_batch, target_images
from training.prior.frames import collate_frames
from training.prior.model import AvatarPrior

Log = Callable[[str], None] | None


@dataclass
class SubjectResult:
    subject_id: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    grids: list[GridRow] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    """One entry per adaptation: method, condition, K, inputs, seconds, final loss, corrections."""
    codes: list[dict[str, Any]] = field(default_factory=list)
    """Every adapted identity code (stage 1 as ``latent_only`` whenever it ran): subject, condition, method,
    K and the code, for the latent-space coverage (``training.latent``)."""


def evaluate_subjects(prior: AvatarPrior, face_model: FaceModel, index: pa.Table | str, subjects: Sequence[str],
                      config: FewShotConfig, out_dir: Path | None = None, log: Log = None,
                      lpips_model: Any = None) -> SubjectResult:
    """``SubjectEvaluation`` of every subject in turn, merged (``subject_id`` is then "all")."""
    merged = SubjectResult("all")
    for n, subject in enumerate(subjects, 1):
        frames = load_subject_frames(index, subject, face_model, prior)
        if log:
            log(f"subject {n}/{len(subjects)} {subject}: {len(frames)} usable frames")
        result = SubjectEvaluation(prior, face_model, frames, config, out_dir, log, lpips_model).run()
        merged.rows += result.rows
        merged.grids += result.grids
        merged.runs += result.runs
        merged.codes += result.codes
    return merged


def held_out_subjects(index: pa.Table | str, splits: Sequence[str]) -> list[str]:
    """Subjects of the index's ``splits`` (the prior never trained on them), sorted."""
    df = read_index(index).to_pandas()
    return sorted(df.loc[df["split"].isin(list(splits)), "subject_id"].unique())


def load_subject_frames(index: pa.Table | str, subject_id: str, face_model: FaceModel,
                        prior: AvatarPrior) -> list[dict]:
    """Every usable frame (with a 3DMM fit) of one subject, cropped as the prior was trained."""
    df = read_index(index).to_pandas()
    split = df.loc[df["subject_id"] == subject_id, "split"]
    if split.empty:
        raise ValueError(f"subject {subject_id!r} is not in the dataset index")
    data = prior_data_from_index(index, split=str(split.iloc[0]), sample_filter=SampleFilter(subjects={subject_id}))
    loader = frame_loader(data, face_model, prior.config.with_changes(num_workers=0), shuffle=False,
                          rank=0, world_size=1)
    frames: list[dict] = []
    for batch in loader:
        for i in range(len(batch["key"])):
            frame = {k: v[i] for k, v in batch.items()}
            frame["mask"] = frame["mask"] if bool(frame["has_mask"]) else None
            frames.append(frame)
    return frames


def perturb_cameras(inputs: dict, degrees: float, seed: int) -> dict:
    """``inputs`` with every camera rotated by ``degrees`` about its centre (random axis per image, seeded)."""
    generator = torch.Generator().manual_seed(seed)
    axes = torch.nn.functional.normalize(torch.randn(len(inputs["key"]), 3, generator=generator), dim=-1)
    turn = axis_angle_to_matrix(axes * math.radians(degrees))
    return {**inputs, "R": turn @ inputs["R"], "t": torch.einsum("bij,bj->bi", turn, inputs["t"])}


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """(B, 3, H, W) in [0, 1] -> HxWx3 uint8 RGB images."""
    return [np.ascontiguousarray((img.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))
            for img in images.detach().cpu()]


def _label(frame: dict) -> str:
    return f"{frame['camera_id']} / {frame['expression_name']}"


class SubjectEvaluation:
    """Adapts ``prior`` to one subject with every method and K of ``config`` and scores the renderings."""

    def __init__(self, prior: AvatarPrior, face_model: FaceModel, frames: list[dict], config: FewShotConfig,
                 out_dir: Path | None = None, log: Log = None, lpips_model: Any = None,
                 render_batch_size: int = 4) -> None:
        if not frames:
            raise ValueError("the subject has no frame with a 3DMM fit of this face model")
        self.prior, self.face_model, self.config, self.log = prior, face_model, config, log
        self.out_dir, self.lpips_model, self.render_batch_size = out_dir, lpips_model, render_batch_size
        self.subject_id = str(frames[0]["subject_id"])
        self.by_key = {f["key"]: f for f in frames}
        self.inputs = choose_inputs(frames, config.max_k, config.seed)
        self.eval_keys = choose_eval_frames(frames, self.inputs, config.eval_frames, config.seed)
        self.targets = collate_frames([self.by_key[k] for k in self.eval_keys])
        self.result = SubjectResult(self.subject_id)

    def _say(self, message: str) -> None:
        if self.log:
            self.log(f"{self.subject_id}: {message}")

    def run(self) -> SubjectResult:
        cfg = self.config
        plan = [("estimated", k, cfg.methods) for k in sorted(set(cfg.ks))]
        plan += [("perturbed", k, ("prior", "prior_fixed_geometry")) for k in sorted(set(cfg.perturbed_ks))]
        for condition, k, methods in plan:
            self._run_one(condition, k, methods)
        return self.result

    def _run_one(self, condition: str, k: int, methods: Sequence[str]) -> None:
        cfg = self.config
        keys = self.inputs[:k]
        inputs = collate_frames([self.by_key[key] for key in keys])
        if condition == "perturbed":
            inputs = perturb_cameras(inputs, cfg.camera_noise_deg, cfg.seed + k)
        self._say(f"{condition} cameras, K={k}: inputs {', '.join(keys)}")
        adapted: dict[str, Adapted] = {}
        if {"latent_only", "prior", "prior_fixed_geometry"} & set(methods):
            stage1 = adapt_latent(self.prior, self.face_model, inputs, cfg, self.log)
            adapted["latent_only"] = stage1
            if "prior" in methods:
                adapted["prior"] = refine(stage1, self.face_model, inputs, cfg, True, self.log)
            if "prior_fixed_geometry" in methods:
                adapted["prior_fixed_geometry"] = refine(stage1, self.face_model, inputs, cfg, False, self.log)
        for method, run in adapted.items():  # before the no-prior baseline, whose code means nothing to the prior
            self.result.codes.append({"subject_id": self.subject_id, "condition": condition, "method": method,
                                      "k": k, "code": run.model.latents.weight[0].detach().cpu().numpy()})
        if "scratch" in methods:
            adapted["scratch"] = train_scratch(self.prior, self.face_model, inputs, cfg, self.log)
        renders: dict[str, torch.Tensor] = {}
        for method in methods:
            run = adapted[method]
            start = time.perf_counter()
            renders[method] = self._render(run.model)
            scores = score_images(renders[method], target_images(self.targets), self.targets["mask"],
                                  self.targets["has_mask"], self.lpips_model)
            for key, s in zip(self.eval_keys, scores):
                frame = self.by_key[key]
                self.result.rows.append({"subject_id": self.subject_id, "condition": condition, "method": method,
                                         "k": k, "key": key, "camera_id": frame["camera_id"],
                                         "expression": frame["expression_name"], "psnr": s.psnr, "ssim": s.ssim,
                                         "ssim_mask": s.ssim_mask, "lpips": s.lpips})
            mean = float(np.mean([s.psnr for s in scores]))
            self._say(f"{condition} K={k} {method}: mean PSNR {mean:.2f} dB over {len(scores)} frames "
                      f"(adapted in {run.seconds:.0f} s, rendered in {time.perf_counter() - start:.0f} s)")
            self.result.runs.append({"subject_id": self.subject_id, "condition": condition, "method": method, "k": k,
                                     "inputs": list(keys), "adapt_seconds": run.seconds, "psnr_mean": mean,
                                     "final_loss": run.history[-1]["loss"] if run.history else math.nan,
                                     **(run.geometry.summary() if run.geometry is not None else {})})
            if method == "prior" and self.out_dir is not None:
                self._save(run, condition, k, keys)
        self._grid(condition, k, keys, inputs, renders)

    def _render(self, model: AvatarPrior) -> torch.Tensor:
        n, size = len(self.eval_keys), self.render_batch_size
        parts = []
        for s in range(0, n, size):
            batch = {k: (v[s:s + size] if torch.is_tensor(v) or isinstance(v, list) else v)
                     for k, v in self.targets.items()}
            parts.append(render_batch(model, self.face_model, batch))
        return torch.cat(parts)

    def _grid(self, condition: str, k: int, keys: Sequence[str], inputs: dict, renders: dict) -> None:
        shown = min(self.config.grid_rows, len(self.eval_keys))
        if not shown:
            return
        input_images = to_uint8(target_images(inputs))
        truth = to_uint8(target_images({name: v[:shown] for name, v in self.targets.items() if torch.is_tensor(v)}))
        rows = self.result.rows
        for i in range(shown):
            key = self.eval_keys[i]
            psnr = {r["method"]: r["psnr"] for r in rows
                    if r["key"] == key and r["k"] == k and r["condition"] == condition}
            self.result.grids.append(GridRow(
                self.subject_id, condition, k, _label(self.by_key[key]),
                [(_label(self.by_key[key_in]), img) for key_in, img in zip(keys, input_images)],
                truth[i], {m: to_uint8(r[i:i + 1])[0] for m, r in renders.items()}, psnr))

    def _save(self, run: Adapted, condition: str, k: int, keys: Sequence[str]) -> Path:
        """The adapted avatar as a prior checkpoint with one subject (``load_prior`` renders it)."""
        path = self.out_dir / layout.adapted_checkpoint(self.subject_id, condition, k)
        save_checkpoint(path, {"architecture": run.model.architecture(), "subjects": [self.subject_id],
                               "face_model": self.face_model.name, "model": run.model.state_dict(),
                               "fewshot": {"inputs": list(keys), "condition": condition, "k": k,
                                           "config": self.config.to_dict(), "history": run.history,
                                           "corrections": run.geometry.state_dict() if run.geometry else {}}})
        return path
