"""Identity codes by id: a prior's training codes, and the codes few-shot runs adapted to held-out subjects.

A prior checkpoint holds one auto-decoded code per training subject (``latents``); a few-shot run
writes every code it adapted to ``codes.parquet`` (``capture_schema.tables.ADAPTED_CODES_SCHEMA``)
beside its scores, tagged with a digest of the prior's code table so that codes adapted to
another prior (retrained since) are refused instead of silently mixed in.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from capture_schema.tables import ADAPTED_CODES_SCHEMA
from training.latent.scene import LatentInputError

#: The adapted code coverage is measured on: stage 1 fits the code alone with the prior frozen, so it lives
#: in the prior's own code space (stage 2 also moves the weights, after which a code means something else).
COVERAGE_METHOD = "latent_only"
COVERAGE_CONDITION = "estimated"


def training_codes(prior) -> np.ndarray:
    """(S, D) float64: the prior's training codes, one row per subject in checkpoint order."""
    return prior.latents.weight.detach().cpu().double().numpy()


def codes_digest(codes: np.ndarray) -> str:
    """sha256 of a code table as float32 (C order): names the prior a code was adapted to."""
    return hashlib.sha256(np.ascontiguousarray(np.asarray(codes, np.float32)).tobytes()).hexdigest()


def adapted_codes_parquet(records: Iterable[Mapping[str, Any]], prior) -> bytes:
    """``codes.parquet`` bytes of few-shot ``records`` (subject_id, condition, method, k, code), sorted."""
    from capture_schema.manifest import parquet_bytes, table_from_columns

    digest = codes_digest(training_codes(prior))
    rows = sorted(records, key=lambda r: (r["subject_id"], r["condition"], r["method"], int(r["k"])))
    columns = {"subject_id": [r["subject_id"] for r in rows], "condition": [r["condition"] for r in rows],
               "method": [r["method"] for r in rows], "k": [int(r["k"]) for r in rows],
               "code": [np.asarray(r["code"], np.float32).tolist() for r in rows],
               "prior_codes_sha256": [digest] * len(rows)}
    return parquet_bytes(table_from_columns(columns, ADAPTED_CODES_SCHEMA))


def read_adapted_codes(data: bytes) -> pd.DataFrame:
    """The rows of a ``codes.parquet``; ``ValueError`` if it does not have the declared columns."""
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    missing = sorted(set(ADAPTED_CODES_SCHEMA.names) - set(table.column_names))
    if missing:
        raise ValueError(f"not an adapted-codes table: missing column(s) {', '.join(missing)}")
    return table.select(ADAPTED_CODES_SCHEMA.names).cast(ADAPTED_CODES_SCHEMA).to_pandas()


@dataclass(frozen=True)
class HeldOutCodes:
    """One adapted code per held-out subject (method ``COVERAGE_METHOD`` under the estimated cameras, the
    largest K the run adapted with), and that K."""

    subjects: tuple[str, ...]
    codes: np.ndarray
    k: int


def held_out_codes(table: pd.DataFrame, prior) -> HeldOutCodes:
    """The coverage codes of an adapted-codes table; ``LatentInputError`` if they belong to another prior."""
    digest = codes_digest(training_codes(prior))
    if len(table) and set(table["prior_codes_sha256"]) != {digest}:
        raise LatentInputError("the adapted codes were adapted to another prior (its code table differs): "
                               "re-run the few-shot evaluation of this prior")
    rows = table[(table["method"] == COVERAGE_METHOD) & (table["condition"] == COVERAGE_CONDITION)]
    if rows.empty:
        return HeldOutCodes((), np.zeros((0, prior.config.latent_dim)), 0)
    k = int(rows["k"].max())
    rows = rows[rows["k"] == k].sort_values("subject_id")
    return HeldOutCodes(tuple(rows["subject_id"]), np.stack([np.asarray(c, np.float64) for c in rows["code"]]), k)


def resolve_code(identifier: str, subjects: Iterable[str], codes: np.ndarray,
                 held_out: HeldOutCodes | None = None) -> np.ndarray:
    """The code of a training subject of the prior, or of a held-out subject with an adapted code;
    ``LatentInputError`` listing both kinds of valid id otherwise."""
    subjects = list(subjects)
    if identifier in subjects:
        return np.asarray(codes[subjects.index(identifier)], np.float64)
    if held_out is not None and identifier in held_out.subjects:
        return np.asarray(held_out.codes[held_out.subjects.index(identifier)], np.float64)
    adapted = ", ".join(held_out.subjects) if held_out is not None and held_out.subjects else "none found"
    raise LatentInputError(f"no identity code for {identifier!r}: training subjects of this prior are "
                           f"{', '.join(subjects)}; adapted held-out subjects: {adapted}")

