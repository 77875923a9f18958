"""Effect sizes with uncertainty: least squares with a bootstrap over configurations.

The unit of evidence is a configuration (its seeds averaged), so a claim never counts a
configuration's seeds as independent evidence about a setting. Confidence intervals are
percentile intervals of ``n_boot`` resamples of configurations with replacement.

Response surfaces (open question 1) use the second half: a resample is a vector of counts
(:func:`resample_counts`), so the weighted normal equations of all 10,000 resamples are
solved at once (:func:`weighted_lstsq`: one matrix product with the per-configuration outer
products, then a batched solve); designs of linear and quadratic surfaces
(:func:`surface_terms`, :func:`design`, :func:`independent_terms`); held-out fit by K-fold
cross-validation (:func:`cv_r2`) with a ridge penalty chosen by closed-form leave-one-out
(:func:`best_ridge`).
"""

from __future__ import annotations

import warnings

import numpy as np


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


# ---- response surfaces: designs, held-out fit, vectorised bootstrap -------------------------------------------


def resample_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``n_boot`` bootstrap resamples of ``n`` units as counts, shape ``(n_boot, n)``.

    Row ``b`` says how often each unit was drawn; a weighted fit with these weights is the
    fit on resample ``b`` (so every resample is solved at once, without copying the data).

    >>> c = resample_counts(5, 3, np.random.default_rng(0))
    >>> c.shape, c.sum(axis=1).tolist()
    ((3, 5), [5.0, 5.0, 5.0])
    """
    if n_boot <= 0 or n <= 0:
        return np.zeros((max(n_boot, 0), n))
    draws = rng.integers(0, n, size=(n_boot, n)) + n * np.arange(n_boot)[:, None]
    return np.bincount(draws.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(float)


def _penalty(k: int, ridge: float, scale: float) -> np.ndarray:
    """Diagonal added to AᵀWA: ``ridge · scale`` on every term but the intercept (column 0), and a
    jitter of 1e-9 that keeps a resample where a term does not vary solvable (its coefficient ~0)."""
    d = np.full(k, (ridge + 1e-9) * scale)
    d[0] = 1e-9 * scale
    return d


def weighted_lstsq(A: np.ndarray, y: np.ndarray, w: np.ndarray, *, ridge: float = 0.0,
                   chunk: int = 2000) -> np.ndarray:
    """Coefficients of ``y ~ A`` for every row of weights ``w`` (``(B, n)`` → ``(B, k)``).

    Column 0 of ``A`` is the intercept; ``ridge`` penalises the others by ``ridge · Σw``
    (columns should be on comparable scales). AᵀWA for all rows is one matrix product with
    the per-unit outer products, so 10,000 resamples of 150 units cost a few GEMMs.

    >>> rng = np.random.default_rng(0)
    >>> x = rng.uniform(-1, 1, 30)
    >>> A = np.column_stack([np.ones(30), x])
    >>> np.round(weighted_lstsq(A, 1 + 2 * x, np.ones((2, 30))), 6).tolist()
    [[1.0, 2.0], [1.0, 2.0]]
    """
    A = np.asarray(A, dtype=float)
    y = np.asarray(y, dtype=float)
    w = np.atleast_2d(np.asarray(w, dtype=float))
    n, k = A.shape
    outer = (A[:, :, None] * A[:, None, :]).reshape(n, k * k)
    Ay = A * y[:, None]
    out = np.empty((w.shape[0], k))
    for s in range(0, w.shape[0], chunk):
        wc = w[s:s + chunk]
        AtA = (wc @ outer).reshape(-1, k, k)
        scale = wc.sum(axis=1)
        AtA[:, np.arange(k), np.arange(k)] += scale[:, None] * _penalty(k, ridge, 1.0)[None, :]
        out[s:s + chunk] = np.linalg.solve(AtA, (wc @ Ay)[..., None])[..., 0]
    return out


def ridge_fit(A: np.ndarray, y: np.ndarray, ridge: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients and leave-one-out residuals (closed form, ``e_i / (1 − h_ii)``) of one fit."""
    n, k = A.shape
    M = A.T @ A + np.diag(_penalty(k, ridge, float(n)))
    coef = np.linalg.solve(M, A.T @ y)
    h = np.einsum("ij,ji->i", A, np.linalg.solve(M, A.T))
    resid = y - A @ coef
    with np.errstate(divide="ignore", invalid="ignore"):
        loo = resid / (1.0 - h)
    return coef, loo


RIDGE_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


def best_ridge(A: np.ndarray, y: np.ndarray, grid: tuple[float, ...] = RIDGE_GRID) -> float:
    """The penalty of ``grid`` with the smallest leave-one-out error on ``(A, y)``."""
    errs = []
    for lam in grid:
        loo = ridge_fit(A, y, lam)[1]
        errs.append(float(np.mean(loo**2)) if np.all(np.isfinite(loo)) else np.inf)
    return float(grid[int(np.argmin(errs))])


def cv_r2(A: np.ndarray, y: np.ndarray, *, ridge: float | None = 0.0, folds: int = 10, repeats: int = 5,
          seed: int = 0) -> float:
    """Held-out R² of ``y ~ A`` by K-fold cross-validation (``K = min(folds, n)``), averaged
    over ``repeats`` shuffles: 1 − Σ(y − ŷ_held-out)² / Σ(y − ȳ_train)².

    ``ridge=None`` picks the penalty inside each training fold (:func:`best_ridge`), so the
    score of a ridge candidate is not flattered by choosing its penalty on the held-out part.

    >>> rng = np.random.default_rng(0)
    >>> x = rng.uniform(-1, 1, 40)
    >>> A = np.column_stack([np.ones(40), x])
    >>> cv_r2(A, 2 * x + rng.normal(0, 0.1, 40)) > 0.95, cv_r2(A, rng.normal(0, 1, 40)) < 0.05
    (True, True)
    """
    n = len(y)
    K = max(2, min(folds, n))
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(repeats):
        fold = rng.permutation(np.arange(n) % K)
        sse = sst = 0.0
        for f in range(K):
            test, train = fold == f, fold != f
            lam = best_ridge(A[train], y[train]) if ridge is None else ridge
            coef = ridge_fit(A[train], y[train], lam)[0]
            sse += float(np.sum((y[test] - A[test] @ coef) ** 2))
            sst += float(np.sum((y[test] - y[train].mean()) ** 2))
        scores.append(1.0 - sse / sst if sst > 0 else np.nan)
    return float(np.nanmean(scores)) if np.isfinite(scores).any() else float("nan")


Term = tuple[int, ...]  # () intercept, (i,) linear, (i, i) square, (i, j) interaction


def surface_terms(n_vars: int, kind: str, *, curved: list[int] | None = None, linear_only: int = 0) -> list[Term]:
    """Terms of a response surface in ``n_vars`` variables.

    ``kind`` is ``"linear"`` (intercept and main effects) or ``"quadratic"`` (plus every
    pairwise interaction and the squares of the variables in ``curved``). The last
    ``linear_only`` variables (covariates) enter linearly only.

    >>> surface_terms(2, "quadratic")
    [(), (0,), (1,), (0, 0), (0, 1), (1, 1)]
    >>> surface_terms(3, "quadratic", curved=[1], linear_only=1)
    [(), (0,), (1,), (2,), (0, 1), (1, 1)]
    """
    terms: list[Term] = [()] + [(i,) for i in range(n_vars)]
    if kind == "linear":
        return terms
    if kind != "quadratic":
        raise ValueError(f"unknown surface kind {kind!r}")
    m = n_vars - linear_only
    curved = list(range(m)) if curved is None else curved
    for i in range(m):
        for j in range(i, m):
            if i != j or i in curved:
                terms.append((i, j))
    return terms


def design(Z: np.ndarray, terms: list[Term]) -> np.ndarray:
    """The design matrix of ``terms`` at points ``Z`` (``(n, n_vars)`` → ``(n, len(terms))``)."""
    Z = np.atleast_2d(np.asarray(Z, dtype=float))
    cols = [np.prod(Z[:, list(t)], axis=1) if t else np.ones(len(Z)) for t in terms]
    return np.column_stack(cols)


def independent_terms(Z: np.ndarray, terms: list[Term], tol: float = 1e-8) -> list[Term]:
    """``terms`` without those whose column is a linear combination of the earlier ones."""
    A = design(Z, terms)
    keep: list[int] = []
    for j in range(A.shape[1]):
        trial = A[:, keep + [j]]
        s = np.linalg.svd(trial, compute_uv=False)
        if s.size and s[-1] > tol * max(1.0, s[0]):
            keep.append(j)
    return [terms[j] for j in keep]


def percentile_interval(boots: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Per-column percentile interval of bootstrap estimates (NaN-robust)."""
    a = (1.0 - level) / 2.0
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanquantile(boots, a, axis=0), np.nanquantile(boots, 1.0 - a, axis=0)
