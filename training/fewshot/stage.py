"""Adapt a stored prior to held-out subjects and publish the scores and report: the ``fewshot_report``
and ``ablation_fewshot`` stage, callable without Dagster (``o2a fewshot``).

The report folder is built in a staging folder and replaces the published one whole
(``Storage.staged_directory``), adapted avatars included: a crash leaves the previous
report, never a mix of two runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
import pyarrow as pa

from capture_schema import derived_layout as layout
from capture_schema.storage import Storage
from fitting.face_models.base import FaceModel
from training.fewshot.config import FewShotConfig
from training.stage_io import StageError

Log = Callable[[str], None]


@dataclass(frozen=True)
class FewShotRun:
    """The scores of one few-shot stage and what its report shows."""

    scores: pd.DataFrame
    summary: pd.DataFrame
    plot_png: bytes
    subjects: list[str]
    lpips_note: str = ""


def choose_subjects(index: pa.Table, splits: Sequence[str], wanted: Sequence[str] = ()) -> list[str]:
    """The held-out subjects to adapt to: every subject of ``splits``, or ``wanted`` if all of them are held out."""
    from training.fewshot.evaluate import held_out_subjects

    subjects = held_out_subjects(index, splits)
    if wanted:
        missing = sorted(set(wanted) - set(subjects))
        if missing:
            raise StageError(f"subject(s) {', '.join(missing)} are not in the index's {'/'.join(splits)} "
                             f"split(s) (held out: {', '.join(subjects) or 'none'})")
        subjects = sorted(wanted)
    if not subjects:
        raise StageError(f"the dataset index has no subject in split(s) {', '.join(splits)}: capture more subjects "
                         "(the split is 80/10/10 by subject) or choose other splits")
    return subjects


def evaluate_into(store: Storage, target: str, prior, model: FaceModel, index: pa.Table, subjects: Sequence[str],
                  config: FewShotConfig, *, notes: Sequence[str], settings: Mapping[str, Any],
                  keep_adapted: bool = True, extra_files: Mapping[str, bytes] | None = None,
                  lpips: tuple[Any, str] = (None, ""), log: Log = print) -> FewShotRun:
    """Adapt ``prior`` to ``subjects``, score every method and K, and publish report + scores at ``target`` whole.

    ``keep_adapted`` also publishes each adapted avatar (``adapted/<subject>/<condition>/k<K>``);
    every adapted identity code goes into ``codes.parquet`` (the latent-space coverage reads it);
    ``extra_files`` (name -> bytes) go into the same folder.
    """
    from capture_schema.atomic import atomic_write_bytes, canonical_json
    from training.fewshot.evaluate import evaluate_subjects
    from training.fewshot.report import summary_table, write_report
    from training.latent.codes import adapted_codes_parquet

    with store.staged_directory(target) as work:
        result = evaluate_subjects(prior, model, index, list(subjects), config,
                                   work / layout.ADAPTED_DIR if keep_adapted else None, log, lpips[0])
        scores = pd.DataFrame(result.rows)
        paths = write_report(work, scores, result.grids, list(notes), dict(settings))
        if keep_adapted:
            atomic_write_bytes(work / layout.FEWSHOT_RUNS_FILE, canonical_json(result.runs).encode())
        atomic_write_bytes(work / layout.FEWSHOT_CODES_FILE, adapted_codes_parquet(result.codes, prior))
        for name, data in (extra_files or {}).items():
            atomic_write_bytes(work / name, data)
        plot = paths["plot"].read_bytes()
    return FewShotRun(scores=scores, summary=summary_table(scores), plot_png=plot, subjects=list(subjects),
                      lpips_note=lpips[1])


def run_fewshot(store: Storage, model: FaceModel, config: FewShotConfig, backbone: str = "anchored",
                splits: Sequence[str] = ("test",), subjects: Sequence[str] = (), log: Log | None = print) -> FewShotRun:
    """The main prior (``prior/<backbone>``) adapted to held-out subjects, into ``fewshot/<backbone>``."""
    log = log or (lambda _: None)
    from training.fewshot.metrics import load_lpips
    from training.fewshot.selection import INPUT_RULE
    from training.prior.stage import load_stored_prior
    from training.stage_io import read_index, require

    prior_path = layout.prior_checkpoint(backbone)
    index = read_index(store)
    require(store, prior_path, "prior", "avatar_prior")
    chosen = choose_subjects(index, splits, subjects)
    prior, ckpt = load_stored_prior(store, prior_path, "avatar_prior")
    if ckpt.get("face_model") not in (None, model.name):
        raise StageError(f"the prior was trained with face model {ckpt.get('face_model')!r}, not {model.name!r}")
    lpips = load_lpips()
    lpips_note = lpips[1]
    log(lpips_note)
    notes = [lpips_note, "Inputs: " + INPUT_RULE,
             f"Scores are over {config.eval_frames or 'all'} held-out frames per subject, "
             "the same for every K and method; crops are 64 px composited onto the mask background."]
    settings = {"fewshot": config.to_dict(), "prior": ckpt["architecture"]["config"],
                "prior_checkpoint": store.uri(prior_path), "subjects": chosen, "splits": list(splits)}
    return evaluate_into(store, layout.fewshot_dir(backbone), prior, model, index, chosen, config, notes=notes,
                         settings=settings, lpips=lpips, log=log)


def psnr_cell(summary: pd.DataFrame, condition: str, method: str, k: int) -> float:
    """Mean PSNR of one (condition, method, K) cell of ``summary_table``; NaN when it was not run."""
    hit = summary[(summary["condition"] == condition) & (summary["method"] == method) & (summary["k"] == k)]
    return float(hit["psnr_mean"].iloc[0]) if len(hit) else float("nan")
