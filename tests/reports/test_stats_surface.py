"""The fast paths of reports._stats against naive, obviously-correct references."""

from __future__ import annotations

import numpy as np

from reports._stats import (best_ridge, cv_r2, design, independent_terms, resample_counts, ridge_fit, surface_terms,
                            weighted_lstsq)


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    Z = rng.uniform(-1, 1, (n, 3))
    terms = surface_terms(3, "quadratic", linear_only=1)
    A = design(Z, terms)
    y = 0.5 + Z[:, 0] - 0.7 * Z[:, 0] * Z[:, 1] + rng.normal(0, 0.1, n)
    return A, y, rng


def test_weighted_lstsq_is_a_refit_on_each_resample():
    A, y, rng = _data()
    w = resample_counts(len(y), 50, rng)
    fast = weighted_lstsq(A, y, w, chunk=7)
    for b in range(50):
        idx = np.repeat(np.arange(len(y)), w[b].astype(int))
        naive = np.linalg.lstsq(A[idx], y[idx], rcond=None)[0]
        assert np.allclose(fast[b], naive, atol=1e-6), b


def test_ridge_matches_the_penalised_normal_equations_and_its_loo_the_refits():
    A, y, rng = _data(n=25)
    lam = 0.1
    coef, loo = ridge_fit(A, y, lam)
    P = np.diag(np.r_[0.0, np.full(A.shape[1] - 1, lam * len(y))])
    assert np.allclose(coef, np.linalg.solve(A.T @ A + P, A.T @ y), atol=1e-7)
    for i in range(len(y)):  # leave-one-out by refitting (penalty scaled by the n of the full fit)
        keep = np.arange(len(y)) != i
        c = np.linalg.solve(A[keep].T @ A[keep] + P, A[keep].T @ y[keep])
        assert np.isclose(loo[i], y[i] - A[i] @ c, atol=1e-6)
    w = np.ones((1, len(y)))
    assert np.allclose(weighted_lstsq(A, y, w, ridge=lam)[0], coef, atol=1e-7)
    assert best_ridge(A, y) in (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


def test_cv_r2_is_one_minus_held_out_error_over_spread():
    A, y, _ = _data(n=30)
    folds, seed = 5, 3
    fold = np.random.default_rng(seed).permutation(np.arange(30) % folds)
    sse = sst = 0.0
    for f in range(folds):
        tr, te = fold != f, fold == f
        c = np.linalg.lstsq(A[tr], y[tr], rcond=None)[0]
        sse += np.sum((y[te] - A[te] @ c) ** 2)
        sst += np.sum((y[te] - y[tr].mean()) ** 2)
    assert np.isclose(cv_r2(A, y, folds=folds, repeats=1, seed=seed), 1 - sse / sst, atol=1e-6)


def test_resample_counts_are_multinomial_draws():
    c = resample_counts(10, 20000, np.random.default_rng(0))
    assert (c.sum(axis=1) == 10).all() and np.allclose(c.mean(axis=0), 1.0, atol=0.03)
    assert np.isclose(c.var(axis=0).mean(), 10 * 0.1 * 0.9, atol=0.03)


def test_a_two_level_factor_has_no_square_term():
    Z = np.column_stack([np.tile([-1.0, 1.0], 10), np.linspace(-1, 1, 20)])
    terms = independent_terms(Z, surface_terms(2, "quadratic"))
    assert (0, 0) not in terms and {(0, 1), (1, 1)} <= set(terms)
