"""Effect sizes with uncertainty: least squares with a bootstrap over configurations.

The unit of evidence is a configuration (its seeds averaged), so a claim never counts a
configuration's seeds as independent evidence about a setting. Confidence intervals are
percentile intervals of ``n_boot`` resamples of configurations with replacement.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Fit:
    """Coefficients of ``y ~ 1 + X`` and their bootstrap intervals (one entry per column of X)."""

    coef: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    n: int
    level: float


def _lstsq(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    A = np.column_stack([np.ones(len(y)), X])
    return np.linalg.lstsq(A, y, rcond=None)[0][1:]


def ols_bootstrap(X: np.ndarray, y: np.ndarray, *, n_boot: int = 1000, level: float = 0.95,
                  seed: int = 0) -> Fit:
    """Least-squares slopes of ``y`` on the columns of ``X`` with percentile bootstrap intervals.

    >>> rng = np.random.default_rng(1)
    >>> x = rng.uniform(0, 1, (40, 1))
    >>> fit = ols_bootstrap(x, 2.0 * x[:, 0] + rng.normal(0, 0.01, 40))
    >>> bool(fit.lo[0] < 2.0 < fit.hi[0]), round(float(fit.coef[0]), 1)
    (True, 2.0)
    """
    X = np.asarray(X, dtype=float).reshape(len(y), -1)
    y = np.asarray(y, dtype=float)
    coef = _lstsq(X, y)
    n, k = X.shape
    rng = np.random.default_rng(seed)
    # a resample is a vector of counts: weighted normal equations solve all resamples at once
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float) if n_boot else np.zeros((0, n))
    A = np.column_stack([np.ones(n), X])
    AtA = np.einsum("bn,ni,nj->bij", w, A, A)
    Aty = np.einsum("bn,ni,n->bi", w, A, y)
    boots = np.einsum("bij,bj->bi", np.linalg.pinv(AtA), Aty)[:, 1:]
    # a resample where a column does not vary carries no information about that slope
    mean = (w @ X) / n
    var = (w @ X**2) / n - mean**2
    boots[var <= 1e-12 * np.maximum(1.0, mean**2)] = np.nan
    a = (1.0 - level) / 2.0
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column gives a NaN interval
        lo = np.nanquantile(boots, a, axis=0) if n_boot else np.full(k, np.nan)
        hi = np.nanquantile(boots, 1.0 - a, axis=0) if n_boot else np.full(k, np.nan)
    return Fit(coef, np.asarray(lo), np.asarray(hi), n, level)


def mean_ci(values: np.ndarray, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean and percentile bootstrap interval of the mean (NaN interval with fewer than two values)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.nan, np.nan, np.nan
    if v.size == 1:
        return float(v[0]), np.nan, np.nan
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, (n_boot, v.size))].mean(axis=1)
    a = (1.0 - level) / 2.0
    return float(v.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))
