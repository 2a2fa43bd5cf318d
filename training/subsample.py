"""Deterministic image-budget subsets for balance ablations (identities x views x expressions).

Rule (stable across runs and machines, no global RNG): every choice ranks its
candidates by ``sha256(f"{seed}:{kind}:{subject}:{id}")`` and takes the first ones.

- identities: subjects able to supply the per-identity grid, ranked by hash of
  (seed, "subject", subject_id); the first ``n_identities``. Because ranks do not
  depend on ``n_identities``, a smaller selection is a subset of a larger one.
- expressions per identity: the pool (``expressions`` or every expression the
  subject has) ranked by hash of (seed, "expression", subject_id, expression); the
  first ``expressions_per_identity`` (default: the whole pool, all required).
- views per identity: pool views that hold every chosen expression for that
  subject, ranked by hash of (seed, "view", subject_id, camera_id); the first
  ``views_per_identity`` (default: the whole pool, all required).

So each identity contributes exactly views x expressions images and the budget is
exactly ``n_identities x views x expressions``. Where one cell has several images
(several sessions of a subject), the lexicographically smallest key is used.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from training.loader import SampleFilter

REQUIRED_COLUMNS = ("key", "subject_id", "camera_id", "expression")


class BudgetError(ValueError):
    """The index cannot supply the requested subset; the message says what is missing."""


def _rank(seed: int, kind: str, subject: str, item: str = "") -> tuple[str, str]:
    digest = hashlib.sha256(f"{seed}:{kind}:{subject}:{item}".encode()).hexdigest()
    return digest, item or subject


@dataclass(frozen=True)
class SelectedSubset:
    """The chosen keys, a filter for the loader, and per-identity choices (for reports)."""

    keys: tuple[str, ...]
    sample_filter: SampleFilter
    identities: tuple[str, ...]
    views: dict[str, tuple[str, ...]] = field(default_factory=dict)
    expressions: dict[str, tuple[str, ...]] = field(default_factory=dict)
    shard_urls: tuple[str, ...] = ()
    """The shards holding the keys (when the index has ``shard_url``): stream only these."""

    @property
    def n_images(self) -> int:
        return len(self.keys)

    def to_dict(self) -> dict[str, Any]:
        return {"n_images": self.n_images, "identities": list(self.identities),
                "views": {s: list(v) for s, v in self.views.items()},
                "expressions": {s: list(e) for s, e in self.expressions.items()}}


def _choose(subject: str, cells: dict[tuple[str, str], str], seed: int, view_pool: list[str] | None,
            n_views: int | None, expr_pool: list[str] | None, n_exprs: int | None
            ) -> tuple[tuple[str, ...], tuple[str, ...]] | str:
    """Per-identity views and expressions, or a reason why this subject cannot supply them."""
    have_views = {v for v, _ in cells}
    have_exprs = {e for _, e in cells}
    if expr_pool is None:
        exprs = sorted(have_exprs)
    else:
        exprs = [e for e in expr_pool if e in have_exprs]
        if n_exprs is None and len(exprs) < len(expr_pool):
            return f"lacks expression(s) {sorted(set(expr_pool) - have_exprs)}"
    k_exprs = len(exprs) if n_exprs is None else n_exprs
    if len(exprs) < k_exprs:
        return f"has {len(exprs)} usable expression(s), {k_exprs} needed"
    chosen_exprs = sorted(exprs, key=lambda e: _rank(seed, "expression", subject, e))[:k_exprs]
    pool = sorted(have_views) if view_pool is None else list(view_pool)
    full = [v for v in pool if all((v, e) in cells for e in chosen_exprs)]
    k_views = len(pool) if n_views is None else n_views
    if n_views is None and len(full) < len(pool):
        missing = sorted((v, e) for v in pool for e in chosen_exprs if (v, e) not in cells)
        return f"lacks (camera, expression) cell(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}"
    if len(full) < k_views:
        return f"has {len(full)} view(s) holding all of expressions {chosen_exprs}, {k_views} needed"
    chosen_views = sorted(full, key=lambda v: _rank(seed, "view", subject, v))[:k_views]
    return tuple(chosen_views), tuple(chosen_exprs)


def _check_count(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise BudgetError(f"{name} must be >= 1, got {value}")


def select_budget(
    index: pd.DataFrame,
    *,
    n_images: int | None = None,
    n_identities: int,
    views_per_identity: int | None = None,
    expressions_per_identity: int | None = None,
    views: list[str] | None = None,
    expressions: list[str] | None = None,
    split: str | None = None,
    seed: int = 0,
) -> SelectedSubset:
    """Choose identities, and per identity views and expressions, for an exact image budget.

    ``index``: a pandas DataFrame or pyarrow Table (e.g. the dataset index) with
    columns key, subject_id, camera_id, expression (+ split, shard_url if used).

    ``views``/``expressions`` restrict the pool (default: all the subject has);
    ``views_per_identity``/``expressions_per_identity`` draw that many per identity
    from the pool (default: the whole pool, which every identity must then have).
    At least one of each pair is required. ``split`` keeps rows whose ``split``
    column equals it. ``n_images``, when given, must equal the product.
    """
    if not isinstance(index, pd.DataFrame) and hasattr(index, "to_pandas"):
        index = index.to_pandas()
    missing_cols = [c for c in REQUIRED_COLUMNS if c not in index.columns]
    if missing_cols:
        raise BudgetError(f"index lacks column(s) {missing_cols}; it needs {list(REQUIRED_COLUMNS)}")
    if views is None and views_per_identity is None:
        raise BudgetError("give views_per_identity (a count drawn per identity) or views (an explicit list)")
    if expressions is None and expressions_per_identity is None:
        raise BudgetError("give expressions_per_identity (a count drawn per identity) "
                          "or expressions (an explicit list)")
    for name, value in (("n_identities", n_identities), ("views_per_identity", views_per_identity),
                        ("expressions_per_identity", expressions_per_identity), ("n_images", n_images)):
        _check_count(name, value)
    for name, pool in (("views", views), ("expressions", expressions)):
        if pool is not None and (isinstance(pool, str) or not pool or len(set(pool)) != len(pool)):
            raise BudgetError(f"{name} must be a non-empty list of distinct ids, got {pool!r}")
    if views is not None and views_per_identity is not None and views_per_identity > len(views):
        raise BudgetError(f"views_per_identity={views_per_identity} exceeds the {len(views)} views listed")
    if expressions is not None and expressions_per_identity is not None and expressions_per_identity > len(expressions):
        raise BudgetError(f"expressions_per_identity={expressions_per_identity} exceeds the "
                          f"{len(expressions)} expressions listed")
    n_v = len(views or ()) if views_per_identity is None else views_per_identity
    n_e = len(expressions or ()) if expressions_per_identity is None else expressions_per_identity
    product = n_identities * n_v * n_e
    if n_images is not None and n_images != product:
        raise BudgetError(f"n_images={n_images} but n_identities x views x expressions = "
                          f"{n_identities} x {n_v} x {n_e} = {product}")
    where = "the index"
    if split is not None:
        if "split" not in index.columns:
            raise BudgetError(f"split={split!r} requested but the index has no 'split' column")
        index = index[index["split"] == split]
        where = f"split {split!r}"

    cells_by_subject: dict[str, dict[tuple[str, str], str]] = {}
    for key, subject, camera, expression in index[list(REQUIRED_COLUMNS)].itertuples(index=False):
        cells = cells_by_subject.setdefault(str(subject), {})
        cell = (str(camera), str(expression))
        if cell not in cells or str(key) < cells[cell]:
            cells[cell] = str(key)
    if len(cells_by_subject) < n_identities:
        raise BudgetError(f"only {len(cells_by_subject)} subject(s) in {where}, {n_identities} requested")

    chosen: list[str] = []
    picks: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    rejected: dict[str, str] = {}
    for subject in sorted(cells_by_subject, key=lambda s: _rank(seed, "subject", s)):
        result = _choose(subject, cells_by_subject[subject], seed, views, views_per_identity,
                         expressions, expressions_per_identity)
        if isinstance(result, str):
            rejected[subject] = result
            continue
        chosen.append(subject)
        picks[subject] = result
        if len(chosen) == n_identities:
            break
    if len(chosen) < n_identities:
        reasons = "; ".join(f"{s} {r}" for s, r in sorted(rejected.items())[:5])
        raise BudgetError(f"only {len(chosen)} of {len(cells_by_subject)} subject(s) in {where} can supply "
                          f"{n_v} view(s) x {n_e} expression(s), {n_identities} requested; {reasons}"
                          f"{' ...' if len(rejected) > 5 else ''}")
    keys = sorted(cells_by_subject[s][(v, e)] for s in chosen for v in picks[s][0] for e in picks[s][1])
    urls: tuple[str, ...] = ()
    if "shard_url" in index.columns:
        chosen_keys = set(keys)
        urls = tuple(sorted({str(u) for k, u in zip(index["key"], index["shard_url"]) if k in chosen_keys}))
    return SelectedSubset(
        keys=tuple(keys),
        sample_filter=SampleFilter(keys=frozenset(keys)),
        identities=tuple(chosen),
        views={s: picks[s][0] for s in chosen},
        expressions={s: picks[s][1] for s in chosen},
        shard_urls=urls,
    )
