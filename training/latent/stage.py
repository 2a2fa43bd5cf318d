"""The latent-space report of a stored prior, into a storage folder: the ``latent_space_report`` and
``ablation_latent`` stage, callable without Dagster.

The folder is built in a staging folder and replaces the published one whole. The summary row
records the sha256 of the prior checkpoint and of the adapted-codes file it was measured on, so
the ablation comparison can refuse metrics of a prior or codes that have been replaced since.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence

from capture_schema import derived_layout as layout
from capture_schema.atomic import canonical_json
from capture_schema.storage import Storage
from fitting.face_models.base import FaceModel
from training.latent.analyse import LatentAnalysis
from training.latent.config import LatentConfig
from training.stage_io import StageError

Log = Callable[[str], None]
#: Columns of the summary row that say what it was measured on (not metrics).
PROVENANCE = ("prior_sha256", "codes_sha256", "latent_config")


def file_digest(store: Storage, relpath: str) -> str:
    """sha256 of a stored file ("" when it is absent)."""
    return hashlib.sha256(store.read_bytes(relpath)).hexdigest() if store.exists(relpath) else ""


def latent_report_into(store: Storage, target: str, prior_path: str, prior_step: str, codes_path: str,
                       model: FaceModel, config: LatentConfig, *, title: str, notes: Sequence[str] = (),
                       log: Log | None = None) -> LatentAnalysis:
    """Measure the prior at ``prior_path`` (with the held-out codes at ``codes_path`` when they exist) and
    publish the report folder at ``target``; ``StageError`` for anything that cannot be used."""
    from training.latent.analyse import analyse
    from training.latent.codes import held_out_codes, read_adapted_codes
    from training.latent.report import write_latent_report
    from training.latent.scene import LatentInputError
    from training.prior.stage import load_stored_prior
    from training.stage_io import read_index

    index = read_index(store)
    prior, ckpt = load_stored_prior(store, prior_path, prior_step)
    if ckpt.get("face_model") not in (None, model.name):
        raise StageError(f"the prior was trained with face model {ckpt.get('face_model')!r}, not {model.name!r}")
    notes = list(notes)
    held = None
    try:
        if store.exists(codes_path):
            held = held_out_codes(read_adapted_codes(store.read_bytes(codes_path)), prior)
        else:
            notes.append(f"no adapted codes at {store.uri(codes_path)}: coverage needs the few-shot run first")
        analysis = analyse(prior, list(ckpt["subjects"]), model, index, config, held, log)
    except (LatentInputError, ValueError) as exc:
        raise StageError(f"latent space of {store.uri(prior_path)}: {exc}") from None
    if len(analysis.subjects) < 2:
        notes.append("fewer than two training identities: no interpolation, no coverage; every sample is the "
                     "one code")
    extra = {"prior_sha256": file_digest(store, prior_path), "codes_sha256": file_digest(store, codes_path),
             "latent_config": canonical_json(config.to_dict())}
    with store.staged_directory(target) as work:
        write_latent_report(work, analysis, extra, title, notes)
    return analysis


def run_latent_report(store: Storage, model: FaceModel, config: LatentConfig, backbone: str = "anchored",
                      log: Log | None = None) -> LatentAnalysis:
    """The main prior's report (``latent/<backbone>``), coverage from the few-shot run's codes."""
    return latent_report_into(store, layout.latent_dir(backbone), layout.prior_checkpoint(backbone), "avatar_prior",
                              layout.fewshot_codes(backbone), model, config,
                              title=f"Identity latent space of the {backbone} prior", log=log)
