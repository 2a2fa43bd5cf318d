"""Every path under the storage root, named once.

Assets, the CLI, the loader, reports, benchmarks and tests all find derived
artefacts by path. When each spelled its own ``f"face_fits/{sid}/fit.zarr"``, a
rename could split a writer from its readers, and assets imported each other only to
learn where an upstream step wrote. Here each path is a function of its ids
(relative to the storage root, ``/``-separated, as ``capture_schema.storage.Storage``
takes it) and each file name that library code writes inside a folder is a
constant. ``PATTERNS`` lists every file the pipeline writes, built from the same
names, so ``describe`` says what any file of a derived tree is and a stray one stands out.

Usage: ``from capture_schema import derived_layout as layout``; ``layout.manifest(sid)``.
"""

from __future__ import annotations

import re

from capture_schema.layout import ID_PATTERN


def join(*parts: str) -> str:
    """Storage paths are ``/``-joined on every OS (they become fsspec URLs)."""
    return "/".join(parts)


# Top-level folders of the storage root.
INGEST = "ingest"
QUARANTINE = "quarantine"
CALIBRATIONS = "calibrations"
CALIBRATION_BY_SESSION = "calibration_by_session"
LANDMARKS = "landmarks"
FACE_FITS = "face_fits"
SHARDS = "shards"
DATASET = "dataset"
PRIOR = "prior"
FEWSHOT = "fewshot"
LATENT = "latent"
ABLATIONS = "ablations"
EXPORTS = "exports"

#: Suffix of the one-file-per-session records (quarantine, calibration pointer).
JSON_SUFFIX = ".json"

# Ingest (capture_schema.ingest).
MANIFEST_FILE = "manifest.parquet"
PROBLEMS_FILE = "problems.parquet"
INGEST_SUMMARY_FILE = "summary.json"
CAPTURES_ROOT_FILE = "captures_root.json"
#: Every captures-root entry and what it is (the ``capture_folders`` asset).
CAPTURES_ROOT_LISTING = join(INGEST, CAPTURES_ROOT_FILE)

# A calibration folder (fitting.calibration.write_calibration_outputs).
CALIBRATION_FILE = "calibration.json"
CALIBRATION_REPORT_FILE = "calibration_report.json"
#: The rig pictured (``fitting.rig_picture.stand_in_picture``): frusta around a stand-in head.
CALIBRATION_PICTURE_FILE = "cameras.png"
TRANSFORMS_FILE = "transforms.json"
COLMAP_DIR = "colmap"
#: What pycolmap's ``Reconstruction.write_text`` (4.x) writes into ``colmap/``.
COLMAP_TEXT_FILES = ("cameras.txt", "images.txt", "points3D.txt", "rigs.txt", "frames.txt")

# Per-session fitting outputs.
LANDMARKS_ZARR = "landmarks.zarr"
LANDMARKS_SUMMARY_FILE = "summary.parquet"
FIT_ZARR = "fit.zarr"
FIT_VIEWS_FILE = "views.parquet"
FIT_OVERLAY_FILE = "overlay.png"
#: Zarr v3: group and array metadata files, and the chunk folder of an array (``c/<i>/<j>...``).
ZARR_METADATA_FILE = "zarr.json"
ZARR_CHUNKS_DIR = "c"
#: The reuse record a session step publishes inside its output folder (``capture_schema.reuse``).
INPUTS_FILE = "inputs.json"

# Shards (training.shards.write).
SHARDS_INDEX_FILE = "shards.json"
SHARD_SUFFIX = ".tar"
SHARD_NUMBER_DIGITS = 6

# Dataset index (training.dataset_index).
INDEX_FILE = "index.parquet"
COVERAGE_FILE = "coverage.json"
INDEX = join(DATASET, INDEX_FILE)
COVERAGE = join(DATASET, COVERAGE_FILE)

# Avatar prior (training.prior).
CHECKPOINT_FILE = "checkpoint.pt"
PRIOR_CURVES_FILE = "curves.png"
PRIOR_REPORT_FILE = "report.json"
#: Files describing one checkpoint: removed when a run replaces it instead of resuming.
PRIOR_REPORT_FILES = (PRIOR_CURVES_FILE, PRIOR_REPORT_FILE)

# Few-shot report (training.fewshot.report.write_report) and the asset's extras.
FEWSHOT_SCORES_FILE = "scores.parquet"
FEWSHOT_REPORT_FILE = "report.html"
FEWSHOT_PLOT_FILE = "psnr_vs_k.png"
FEWSHOT_SUMMARY_FILE = "summary.md"
FEWSHOT_RUNS_FILE = "runs.json"
#: Every identity code a few-shot run adapted (``capture_schema.tables.ADAPTED_CODES_SCHEMA``).
FEWSHOT_CODES_FILE = "codes.parquet"
ADAPTED_DIR = "adapted"

# Latent-space report (training.latent.report): the same files for the main prior and each ablation repeat.
LATENT_METRICS_FILE = "metrics.parquet"
LATENT_INTERPOLATIONS_FILE = "interpolations.parquet"
LATENT_SAMPLES_FILE = "samples.parquet"
LATENT_COVERAGE_FILE = "coverage.parquet"
LATENT_REPORT_FILE = "report.html"
LATENT_PLOT_FILE = "profiles.png"
LATENT_SAMPLES_IMAGE = "samples.png"
#: ``interpolations/<start>/<end>.png`` (a strip) and ``.gif`` (an animation) per interpolated pair.
LATENT_STRIPS_DIR = "interpolations"
LATENT_STRIP_SUFFIXES = (".png", ".gif")

# Balance ablations (pipelines.assets.ablation, training.ablation.report).
SUBSET_FILE = "subset.json"
#: A configuration's repeat folder is ``seed-<s>`` (``ablation_seed_dir``).
ABLATION_SEED_PREFIX = "seed-"
#: Beside a configuration's few-shot scores: what they were computed under.
SETTINGS_FILE = "settings.json"
ABLATION_TABLE_FILE = "report.parquet"
ABLATION_HTML_FILE = "report.html"
ABLATION_PLOT_FILE = "report.png"
ABLATION_MARKDOWN_FILE = "report.md"
ABLATIONS_REPORT = join(ABLATIONS, ABLATION_HTML_FILE)
ABLATIONS_TABLE = join(ABLATIONS, ABLATION_TABLE_FILE)

# Exports (training.export): one folder per frame ``<session>/<expression>/`` plus two files at the top.
EXPORT_SUMMARY_FILE = "export.json"
CONVENTIONS_FILE = "CONVENTIONS.md"
EXPORT_IMAGES_DIR = "images"
EXPORT_MASKS_DIR = "masks"
EXPORT_COLMAP_DIR = "sparse/0"
EXPORT_MESH_FILE = "mesh.ply"
EXPORT_FIT_FILE = "fit.json"
EXPORT_PICTURE_FILE = "cameras.png"
EXPORT_CAMERA_FILES = (TRANSFORMS_FILE, CALIBRATION_FILE)  # nerfstudio's, and the image export's own cameras


def ingest_dir(session_id: str) -> str:
    return join(INGEST, session_id)


def manifest(session_id: str) -> str:
    """Images that passed their own checks (``capture_schema.tables.MANIFEST_SCHEMA``)."""
    return join(ingest_dir(session_id), MANIFEST_FILE)


def session_problems(session_id: str) -> str:
    return join(ingest_dir(session_id), PROBLEMS_FILE)


def ingest_summary(session_id: str) -> str:
    return join(ingest_dir(session_id), INGEST_SUMMARY_FILE)


def quarantine(session_id: str) -> str:
    """Present only while the session is invalid."""
    return join(QUARANTINE, session_id + JSON_SUFFIX)


def calibration_dir(key: str) -> str:
    """One calibration result, shared by every session with the same board captures and camera order."""
    return join(CALIBRATIONS, key)


def calibration_file(key: str) -> str:
    return join(calibration_dir(key), CALIBRATION_FILE)


def calibration_pointer(session_id: str) -> str:
    """Names the calibration a session uses (``calibration_key`` and ``calibration``, its folder)."""
    return join(CALIBRATION_BY_SESSION, session_id + JSON_SUFFIX)


def landmarks_dir(session_id: str) -> str:
    return join(LANDMARKS, session_id)


def landmarks_zarr(session_id: str) -> str:
    return join(landmarks_dir(session_id), LANDMARKS_ZARR)


def landmarks_summary(session_id: str) -> str:
    return join(landmarks_dir(session_id), LANDMARKS_SUMMARY_FILE)


def face_fits_dir(session_id: str) -> str:
    return join(FACE_FITS, session_id)


def fit_zarr(session_id: str) -> str:
    return join(face_fits_dir(session_id), FIT_ZARR)


def fit_views(session_id: str) -> str:
    return join(face_fits_dir(session_id), FIT_VIEWS_FILE)


def fit_overlay(session_id: str) -> str:
    return join(face_fits_dir(session_id), FIT_OVERLAY_FILE)


def shards_dir(session_id: str) -> str:
    return join(SHARDS, session_id)


def shards_index(session_id: str) -> str:
    return join(shards_dir(session_id), SHARDS_INDEX_FILE)


def shard_name(prefix: str, number: int) -> str:
    """``<prefix>-NNNNNN.tar``: the ``number``-th shard of a set (the prefix is the session id)."""
    return f"{prefix}-{number:0{SHARD_NUMBER_DIGITS}d}{SHARD_SUFFIX}"


def shard_name_regex(prefix_regex: str) -> str:
    """Regex source matching ``shard_name(prefix, n)`` for any n, ``prefix_regex`` matching the prefix."""
    return rf"{prefix_regex}-\d{{{SHARD_NUMBER_DIGITS}}}{re.escape(SHARD_SUFFIX)}"


def inputs_record(folder: str) -> str:
    """The reuse record inside a session step's output folder."""
    return join(folder, INPUTS_FILE)


#: Suffix of a folder's resumable staging sibling: ``prior/.anchored.partial`` for ``prior/anchored``.
STAGING_SUFFIX = ".partial"


def staging_dir(folder: str) -> str:
    """Where long work on ``folder`` (training) happens until it is published whole; kept after a crash to resume."""
    parent, _, name = folder.rpartition("/")
    return join(parent, f".{name}{STAGING_SUFFIX}") if parent else f".{name}{STAGING_SUFFIX}"


def prior_dir(backbone: str) -> str:
    return join(PRIOR, backbone)


def prior_checkpoint(backbone: str) -> str:
    return join(prior_dir(backbone), CHECKPOINT_FILE)


def prior_report(backbone: str) -> str:
    return join(prior_dir(backbone), PRIOR_REPORT_FILE)


def fewshot_dir(backbone: str) -> str:
    return join(FEWSHOT, backbone)


def fewshot_report(backbone: str) -> str:
    return join(fewshot_dir(backbone), FEWSHOT_REPORT_FILE)


def fewshot_scores(backbone: str) -> str:
    return join(fewshot_dir(backbone), FEWSHOT_SCORES_FILE)


def adapted_checkpoint(subject_id: str, condition: str, k: int | str) -> str:
    """An adapted avatar, relative to the ``adapted/`` folder of a few-shot run."""
    return join(subject_id, condition, f"k{k}", CHECKPOINT_FILE)


def latent_dir(backbone: str) -> str:
    """The main prior's latent-space report (``latent_space_report``)."""
    return join(LATENT, backbone)


def latent_report(backbone: str) -> str:
    return join(latent_dir(backbone), LATENT_REPORT_FILE)


def latent_metrics(backbone: str) -> str:
    return join(latent_dir(backbone), LATENT_METRICS_FILE)


def latent_strip(start: str, end: str, suffix: str = ".png") -> str:
    """An interpolation's strip (``.png``) or animation (``.gif``), relative to a latent-report folder."""
    if suffix not in LATENT_STRIP_SUFFIXES:
        raise ValueError(f"suffix must be one of {LATENT_STRIP_SUFFIXES}, got {suffix!r}")
    return join(LATENT_STRIPS_DIR, start, end + suffix)


def fewshot_codes(backbone: str) -> str:
    return join(fewshot_dir(backbone), FEWSHOT_CODES_FILE)


def ablation_dir(name: str) -> str:
    """A configuration's folder: one ``seed-<s>`` folder per repeat seed of the spec."""
    return join(ABLATIONS, name)


def ablation_seed_dir(name: str, seed: int | str) -> str:
    """Repeat ``seed`` of configuration ``name``: its subset, prior and few-shot scores."""
    return join(ablation_dir(name), f"{ABLATION_SEED_PREFIX}{seed}")


def ablation_subset(name: str, seed: int | str) -> str:
    return join(ablation_seed_dir(name, seed), SUBSET_FILE)


def ablation_prior_dir(name: str, seed: int | str) -> str:
    return join(ablation_seed_dir(name, seed), PRIOR)


def ablation_prior_checkpoint(name: str, seed: int | str) -> str:
    return join(ablation_prior_dir(name, seed), CHECKPOINT_FILE)


def ablation_prior_report(name: str, seed: int | str) -> str:
    return join(ablation_prior_dir(name, seed), PRIOR_REPORT_FILE)


def ablation_fewshot_dir(name: str, seed: int | str) -> str:
    return join(ablation_seed_dir(name, seed), FEWSHOT)


def ablation_scores(name: str, seed: int | str) -> str:
    return join(ablation_fewshot_dir(name, seed), FEWSHOT_SCORES_FILE)


def ablation_fewshot_report(name: str, seed: int | str) -> str:
    return join(ablation_fewshot_dir(name, seed), FEWSHOT_REPORT_FILE)


def ablation_settings(name: str, seed: int | str) -> str:
    return join(ablation_fewshot_dir(name, seed), SETTINGS_FILE)


def ablation_codes(name: str, seed: int | str) -> str:
    return join(ablation_fewshot_dir(name, seed), FEWSHOT_CODES_FILE)


def ablation_latent_dir(name: str, seed: int | str) -> str:
    """Repeat ``seed`` of configuration ``name``: its prior's latent-space report (``ablation_latent``)."""
    return join(ablation_seed_dir(name, seed), LATENT)


def ablation_latent_metrics(name: str, seed: int | str) -> str:
    return join(ablation_latent_dir(name, seed), LATENT_METRICS_FILE)


def export_dir(name: str) -> str:
    """An export the ``dataset_export`` asset made (``o2a export`` writes the same tree into any folder)."""
    return join(EXPORTS, name)


def export_frame_dir(session_id: str, expression: str) -> str:
    """One frame's folder inside an export: what nerfstudio or COLMAP opens as a scene."""
    return join(session_id, expression)


# ---- Every file the pipeline writes -------------------------------------------------------------

_ID = ID_PATTERN.pattern
_CHUNK = r"\d+(?:/\d+)*"


def _rx(template: str, **slots: str) -> re.Pattern[str]:
    """A path built by the functions above with ``<slot>`` placeholders, as a regex: each slot's first
    occurrence becomes a named group of its regex, later ones a back-reference (the same id again)."""
    text = re.escape(template)
    for name, regex in slots.items():
        parts = text.split(re.escape(f"<{name}>"))
        if len(parts) > 1:
            text = parts[0] + f"(?P<{name}>{regex})" + f"(?P={name})".join(parts[1:])
    return re.compile(text)


def _one_of(names: tuple[str, ...]) -> str:
    return "|".join(re.escape(n) for n in names)


def _zarr(store: str, what: str, **slots: str) -> list[tuple[re.Pattern[str], str]]:
    """The group metadata, array metadata and chunks of a zarr v3 store at ``store``."""
    return [(_rx(join(store, ZARR_METADATA_FILE), **slots), f"{what}: zarr group metadata"),
            (_rx(join(store, "<array>", ZARR_METADATA_FILE), **slots, array=_ID), f"{what}: zarr array metadata"),
            (_rx(join(store, "<array>", ZARR_CHUNKS_DIR, "<chunk>"), **slots, array=_ID, chunk=_CHUNK),
             f"{what}: zarr array chunk")]


def _fewshot_files(folder: str, who: str, **slots: str) -> list[tuple[re.Pattern[str], str]]:
    return [(_rx(join(folder, FEWSHOT_SCORES_FILE), **slots), f"{who}: one row per scored frame, method, K, condition"),
            (_rx(join(folder, FEWSHOT_REPORT_FILE), **slots), f"{who}: self-contained HTML report"),
            (_rx(join(folder, FEWSHOT_PLOT_FILE), **slots), f"{who}: PSNR against K plot"),
            (_rx(join(folder, FEWSHOT_SUMMARY_FILE), **slots), f"{who}: summary table (markdown)")]


def _latent_files(folder: str, who: str, **slots: str) -> list[tuple[re.Pattern[str], str]]:
    strip = {**slots, "start": _ID, "end": _ID, "suffix": _one_of(LATENT_STRIP_SUFFIXES)}
    return [(_rx(join(folder, LATENT_METRICS_FILE), **slots), f"{who}: summary metrics (one row)"),
            (_rx(join(folder, LATENT_INTERPOLATIONS_FILE), **slots), f"{who}: image distances of every step"),
            (_rx(join(folder, LATENT_SAMPLES_FILE), **slots), f"{who}: mediapipe check of every sample"),
            (_rx(join(folder, LATENT_COVERAGE_FILE), **slots), f"{who}: coverage of each held-out code"),
            (_rx(join(folder, LATENT_REPORT_FILE), **slots), f"{who}: self-contained HTML report"),
            (_rx(join(folder, LATENT_PLOT_FILE), **slots), f"{who}: distance-to-ends plot"),
            (_rx(join(folder, LATENT_SAMPLES_IMAGE), **slots), f"{who}: sampled identities"),
            (_rx(join(folder, LATENT_STRIPS_DIR, "<start>", "<end><suffix>"), **strip),
             f"{who}: an interpolation strip or animation")]


def _export_files(folder: str, **slots: str) -> list[tuple[re.Pattern[str], str]]:
    frame = join(folder, export_frame_dir("<sid>", "<expression>"))
    frame_slots = {**slots, "sid": _ID, "expression": _ID}
    return [(_rx(join(folder, EXPORT_SUMMARY_FILE), **slots), "export: what was asked for, exported and missing"),
            (_rx(join(folder, CONVENTIONS_FILE), **slots), "export: world frame, axes and pixels of every file"),
            (_rx(join(frame, EXPORT_IMAGES_DIR, "<file>"), **frame_slots, file=r"[^/]+\.(?:jpg|png)"),
             "export: a frame's image"),
            (_rx(join(frame, EXPORT_MASKS_DIR, "<file>"), **frame_slots, file=r"[^/]+\.png"), "export: a head mask"),
            (_rx(join(frame, EXPORT_COLMAP_DIR, "<file>"), **frame_slots, file=_one_of(COLMAP_TEXT_FILES)),
             "export: a frame's COLMAP text model"),
            (_rx(join(frame, "<file>"), **frame_slots, file=_one_of(EXPORT_CAMERA_FILES)), "export: a frame's cameras"),
            (_rx(join(frame, EXPORT_MESH_FILE), **frame_slots), "export: the frame's posed 3DMM mesh"),
            (_rx(join(frame, EXPORT_FIT_FILE), **frame_slots), "export: the frame's 3DMM parameters"),
            (_rx(join(frame, EXPORT_PICTURE_FILE), **frame_slots), "export: cameras and fitted head, pictured")]


_S = {"sid": _ID}
_B = {"backbone": _ID}
_N = {"name": _ID}
_NS = {**_N, "seed": r"\d+"}

#: (regex on a path relative to the storage root, one-line description); ``describe`` takes the first fullmatch.
PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = tuple([
    (_rx(manifest("<sid>"), **_S), "ingest: manifest of the session's images"),
    (_rx(session_problems("<sid>"), **_S), "ingest: every problem validation found"),
    (_rx(ingest_summary("<sid>"), **_S), "ingest: counts and the valid flag"),
    (_rx(CAPTURES_ROOT_LISTING), "ingest: every captures-root entry and what it is"),
    (_rx(quarantine("<sid>"), **_S), "quarantine record of an invalid session"),
    (_rx(calibration_file("<key>"), key=_ID), "calibration: cameras of the rig"),
    (_rx(join(calibration_dir("<key>"), CALIBRATION_REPORT_FILE), key=_ID), "calibration: detections and residuals"),
    (_rx(join(calibration_dir("<key>"), TRANSFORMS_FILE), key=_ID), "calibration: NeRF-style transforms.json"),
    (_rx(join(calibration_dir("<key>"), CALIBRATION_PICTURE_FILE), key=_ID), "calibration: the cameras pictured"),
    (_rx(join(calibration_dir("<key>"), COLMAP_DIR, "<file>"), key=_ID, file=_one_of(COLMAP_TEXT_FILES)),
     "calibration: COLMAP text model"),
    (_rx(calibration_pointer("<sid>"), **_S), "calibration pointer: which calibration a session uses"),
    *_zarr(landmarks_zarr("<sid>"), "landmarks", **_S),
    (_rx(landmarks_summary("<sid>"), **_S), "landmarks: per-image detection summary"),
    (_rx(inputs_record(landmarks_dir("<sid>")), **_S), "landmarks: reuse record (inputs fingerprint)"),
    *_zarr(fit_zarr("<sid>"), "face fit", **_S),
    (_rx(fit_views("<sid>"), **_S), "face fit: per-view reprojection errors"),
    (_rx(fit_overlay("<sid>"), **_S), "face fit: overlay picture"),
    (_rx(inputs_record(face_fits_dir("<sid>")), **_S), "face fit: reuse record (inputs fingerprint)"),
    (_rx(join(shards_dir("<sid>"), "<tar>"), **_S, tar=shard_name_regex("(?P=sid)")), "shards: webdataset tar"),
    (_rx(shards_index("<sid>"), **_S), "shards: the session's shard list"),
    (_rx(inputs_record(shards_dir("<sid>")), **_S), "shards: reuse record (inputs fingerprint)"),
    (_rx(INDEX), "dataset index: every sample with its split"),
    (_rx(COVERAGE), "dataset index: coverage summary"),
    (_rx(prior_checkpoint("<backbone>"), **_B), "avatar prior: checkpoint"),
    (_rx(prior_report("<backbone>"), **_B), "avatar prior: training report"),
    (_rx(join(prior_dir("<backbone>"), PRIOR_CURVES_FILE), **_B), "avatar prior: training curves"),
    *_fewshot_files(fewshot_dir("<backbone>"), "few-shot", **_B),
    (_rx(join(fewshot_dir("<backbone>"), FEWSHOT_RUNS_FILE), **_B), "few-shot: adaptation time, loss per run"),
    (_rx(fewshot_codes("<backbone>"), **_B), "few-shot: every adapted identity code"),
    *_latent_files(latent_dir("<backbone>"), "latent space", **_B),
    (_rx(join(fewshot_dir("<backbone>"), ADAPTED_DIR, adapted_checkpoint("<subject>", "<condition>", "<k>")),
         **_B, subject=_ID, condition=_ID, k=r"\d+"), "few-shot: adapted avatar checkpoint"),
    (_rx(ablation_subset("<name>", "<seed>"), **_NS), "ablation: the configuration's images (one repeat)"),
    (_rx(ablation_prior_checkpoint("<name>", "<seed>"), **_NS), "ablation: the configuration's prior checkpoint"),
    (_rx(ablation_prior_report("<name>", "<seed>"), **_NS), "ablation: the configuration's training report"),
    (_rx(join(ablation_prior_dir("<name>", "<seed>"), PRIOR_CURVES_FILE), **_NS),
     "ablation: the configuration's training curves"),
    *_fewshot_files(ablation_fewshot_dir("<name>", "<seed>"), "ablation few-shot", **_NS),
    (_rx(ablation_settings("<name>", "<seed>"), **_NS), "ablation few-shot: settings the scores were computed under"),
    (_rx(ablation_codes("<name>", "<seed>"), **_NS), "ablation few-shot: every adapted identity code"),
    *_latent_files(ablation_latent_dir("<name>", "<seed>"), "ablation latent space", **_NS),
    (_rx(ABLATIONS_TABLE), "ablation report: comparison table"),
    (_rx(ABLATIONS_REPORT), "ablation report: HTML"),
    (_rx(join(ABLATIONS, ABLATION_PLOT_FILE)), "ablation report: few-shot PSNR per configuration plot"),
    (_rx(join(ABLATIONS, ABLATION_MARKDOWN_FILE)), "ablation report: comparison (markdown)"),
    *_export_files(export_dir("<name>"), **_N),
])


def describe(relpath: str) -> str | None:
    """What the file at ``relpath`` (relative to the storage root) is, or None when the pipeline writes no such file."""
    parts = relpath.split("/")
    staged = [i for i, p in enumerate(parts) if p.startswith(".") and p.endswith(STAGING_SUFFIX)]
    if staged:  # unfinished work on a folder: described as the file it will become
        i = staged[0]
        inner = describe("/".join(parts[:i] + [parts[i][1:-len(STAGING_SUFFIX)]] + parts[i + 1:]))
        return None if inner is None else f"unfinished (resumes on the next run): {inner}"
    for pattern, description in PATTERNS:
        if pattern.fullmatch(relpath):
            return description
    return None
