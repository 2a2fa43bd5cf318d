"""New identities: a Gaussian fitted to the training codes, sampled with a seed.

With S training subjects the sample covariance has rank at most S - 1 (10 subjects, 32-dimensional
codes at the cpu preset), so the Gaussian is sampled through its eigen-decomposition: draws lie in
the span the training codes vary in, never along directions the prior has no evidence for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Eigenvalues below this fraction of the largest are treated as zero (numerical noise of a rank-deficient fit).
RANK_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Gaussian:
    """Mean (D,) and covariance (D, D) of the training codes (``numpy.cov``, unbiased)."""

    mean: np.ndarray
    covariance: np.ndarray

    @property
    def factor(self) -> np.ndarray:
        """(D, r) ``L`` with ``L @ L.T == covariance`` over the r non-zero eigen-directions."""
        values, vectors = np.linalg.eigh(self.covariance)
        top = float(values.max()) if values.size else 0.0
        keep = values > RANK_TOLERANCE * top if top > 0 else np.zeros(len(values), bool)
        return vectors[:, keep] * np.sqrt(values[keep])[None, :]

    @property
    def rank(self) -> int:
        return int(self.factor.shape[1])

    def sample(self, n: int, seed: int) -> np.ndarray:
        """(n, D) codes drawn from the Gaussian with ``numpy.random.default_rng(seed)`` (reproducible)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        factor = self.factor
        z = np.random.default_rng(seed).standard_normal((n, factor.shape[1]))
        return self.mean[None, :] + z @ factor.T


def fit_gaussian(codes: np.ndarray) -> Gaussian:
    """The Gaussian of ``codes`` (S, D): their mean and unbiased covariance (zero for a single code)."""
    codes = np.atleast_2d(np.asarray(codes, np.float64))
    if len(codes) == 0:
        raise ValueError("cannot fit a Gaussian to no codes")
    if len(codes) == 1:
        return Gaussian(codes[0].copy(), np.zeros((codes.shape[1], codes.shape[1])))
    return Gaussian(codes.mean(axis=0), np.cov(codes, rowvar=False))
