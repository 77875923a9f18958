r"""Open question 1: the causal / non-causal balance of S-TLLR (α_post, λ_post, λ_pre, per layer).

The answer the report prints comes from :func:`q1_analysis` and :func:`q1_items` (DESIGN §8,
"effects with their structure"). The unit of evidence is a configuration (seeds averaged);
per dataset:

1. **Collapse apart.** A configuration whose mean validation accuracy is below
   chance + :data:`COLLAPSE_MARGIN` collapsed. The collapse rate is compared between the low and
   high slice of every varied factor and setting (α split at 0, anything else at its median),
   with a bootstrap over configurations; the accuracy surface never sees these runs, so a
   corner at chance cannot pass for an effect on accuracy.
2. **A response surface chosen by held-out fit.** Candidates, factors scaled to [−1, 1]
   over their observed range and the other varied settings (learn_steps, lr, width, depth,
   T) entering linearly:

   .. math:: \text{linear: } y = \beta_0 + \sum_i \beta_i z_i + \gamma^\top c, \qquad
             \text{quadratic: } + \sum_{i \le j} \beta_{ij} z_i z_j

   and the quadratic with a ridge penalty (chosen by leave-one-out inside each training
   fold). The one with the best 10-fold cross-validated R² (5 shuffles) is used, and every
   candidate's held-out and in-sample R² is reported. (A Gaussian process was left out: the
   10,000 refits of the bootstrap need a closed-form fit, and with a few factors and
   ≤ 150 configurations the quadratic is the surface the data can pin down.)
3. **Conditional effects.** A factor's effect is the change of the surface when it moves
   from its smallest to its largest value, the other factors uniform over their range; when
   the surface has interactions, also within each slice of every factor it interacts with
   (λ_post where α_post < 0 and where α_post > 0). Because the surface is quadratic these
   are linear in its coefficients, so all 10,000 bootstrap refits (weighted normal equations
   solved at once, :func:`reports._stats.weighted_lstsq`) give their intervals and p-values.
4. **The best region**: the surface's argmax on a grid over the observed box, with the spread
   of the resampled argmaxes per factor and the predicted accuracy there.
5. Per-layer factors (``layer{i}_*`` that do not restate the network-wide value) get a second
   surface over the configurations that set them.

Every statement is a :class:`~reports._claims.Claim` with a raw bootstrap p-value; the report
adjusts all its claims together (:func:`~reports._claims.holm`) before :func:`q1_items` writes
a direction, and only for a claim that holds.

:func:`param_importance` (Optuna PED-ANOVA importance) is printed beside the surface as a
description.
"""

from __future__ import annotations

import html
import re
import warnings
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import optuna
from optuna.trial import FrozenTrial
import pandas as pd
import plotly.graph_objects as go

from reports._claims import N_BOOT, Claim, bootstrap_p
from reports._configs import as_percent, layer_columns
from reports._html import Bullets, Figure, Table, Text
from reports._load import Objective
from reports._stats import (Term, best_ridge, cv_r2, design, independent_terms, percentile_interval, resample_counts,
                            ridge_fit, surface_terms, weighted_lstsq)
from reports._frontier import label

FACTORS = ("alpha_post", "lambda_post", "lambda_pre", "alpha_pre")
COVARIATES = ("learn_steps", "lr", "width", "depth", "T")
MIN_CONFIGS = 8
SYMBOLS = {"alpha_post": "α_post", "alpha_pre": "α_pre", "lambda_post": "λ_post", "lambda_pre": "λ_pre"}


def _name(factor: str) -> str:
    head, _, tail = factor.partition("_")
    if head.startswith("layer") and tail in SYMBOLS:
        return f"{SYMBOLS[tail]} (layer {head[5:]})"
    return SYMBOLS.get(factor, factor)


def _varied(df: pd.DataFrame, cols: list[str] | tuple[str, ...]) -> list[str]:
    return [c for c in cols if c in df.columns and df[c].astype(float).dropna().nunique() >= 2]


def _restates(df: pd.DataFrame, col: str) -> bool:
    """True if per-layer ``col`` equals its network-wide factor wherever it is set (layer 0 does)."""
    base = col.partition("_")[2]
    if base not in df.columns:
        return False
    d = df[[col, base]].astype(float).dropna()
    return len(d) > 0 and bool(np.allclose(d[col], d[base], rtol=0, atol=1e-12))


def _own_columns(df: pd.DataFrame) -> list[str]:
    """Varied factors, network-wide then per-layer, without per-layer columns that restate a network-wide one."""
    return _varied(df, FACTORS) + [c for c in _varied(df, layer_columns(df)) if not _restates(df, c)]


def _covariate(df: pd.DataFrame, c: str) -> np.ndarray:
    v = df[c].astype(float).to_numpy()
    return np.log2(v) if c in ("lr", "width") and np.all(v > 0) else v


def stllr_configs(configs: pd.DataFrame, metric: str = "val_accuracy") -> pd.DataFrame:
    """S-TLLR configurations of the factor search: the equal tuning's runs (``role`` tuned) repeat
    the chosen factors at other learning rates, and counting those winners again would bias a fit."""
    c = configs[(configs["rule"] == "stllr")]
    if "role" in c.columns:
        c = c[c["role"].fillna("search") != "tuned"]
    return c[np.isfinite(c[f"{metric}_mean"].astype(float))]


def _target(i: int, maximize: bool) -> Callable[[FrozenTrial], float]:
    """Objective ``i`` as PED-ANOVA wants it: lower is better, so a maximised value is negated."""
    sign = -1.0 if maximize else 1.0
    return lambda t: sign * t.values[i]


def param_importance(configs: pd.DataFrame, objectives: tuple[Objective, ...], *, min_configs: int = 10) -> pd.DataFrame:
    """Optuna PED-ANOVA importance of each varied setting for each objective, per dataset (S-TLLR).

    The study is rebuilt in memory from the table (one trial per configuration, its seed
    means as values). PED-ANOVA ranks low target values as good, so a maximised objective is
    passed as ``target=lambda t: -t.values[i]``. ``direction`` is the sign of the Spearman
    correlation oriented so that "+" means a higher setting goes with a *better* objective.
    """
    rows = []
    for dataset, g in stllr_configs(configs).groupby("dataset", sort=True):
        params = _own_columns(g) + _varied(g, COVARIATES)
        vals = [f"{o.metric}_mean" for o in objectives]
        g = g[np.all(np.isfinite(g[vals].astype(float).to_numpy()), axis=1)]
        if len(g) < min_configs or not params:
            continue
        dists = {}
        for p in params:
            v = g[p].astype(float).dropna()
            lo, hi = float(v.min()), float(v.max())
            dists[p] = optuna.distributions.FloatDistribution(lo, hi, log=bool(lo > 0 and hi / lo > 10))
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            study = optuna.create_study(directions=[optuna.study.StudyDirection.MAXIMIZE if o.maximize
                                                    else optuna.study.StudyDirection.MINIMIZE for o in objectives])
        finally:
            optuna.logging.set_verbosity(verbosity)
        study.add_trials([optuna.trial.create_trial(
            params={p: float(r[p]) for p in params if np.isfinite(r[p])},
            distributions={p: dists[p] for p in params if np.isfinite(r[p])},
            values=[float(r[v]) for v in vals]) for _, r in g.iterrows()])
        for i, o in enumerate(objectives):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                imp = optuna.importance.get_param_importances(study, target=_target(i, o.maximize), normalize=True)
            for p in params:
                rho = g[[p, vals[i]]].astype(float).corr(method="spearman").iloc[0, 1]
                better = rho * (1.0 if o.maximize else -1.0)
                rows.append({"dataset": dataset, "objective": o.metric, "param": p, "importance": imp.get(p, 0.0),
                             "spearman_rho": rho, "direction": "+" if better > 0 else ("-" if better < 0 else "0"),
                             "n_configs": len(g)})
    return pd.DataFrame(rows)


# ---- Q1 with its structure: collapse apart, a response surface chosen by held-out fit, conditional effects ------

#: Classes of the datasets the engine ships (chance = 1 / classes) when the caller gives no chance level.
KNOWN_CLASSES = {"shd": 20, "dvs_gesture": 11, "cifar10_dvs": 10, "nmnist": 10, "digits": 10,
                 "synthetic_temporal": 4}
#: A configuration "collapsed" when its mean validation accuracy is below chance + this (accuracy as a fraction).
COLLAPSE_MARGIN = 0.05
#: Fewest configurations in a slice for a conditional effect or a collapse rate.
MIN_SLICE = 3
MODEL_NAMES = {"linear": "additive linear", "quadratic": "quadratic (interactions and curvature)",
               "quadratic_ridge": "quadratic with ridge penalty"}


@dataclass
class Q1Result:
    """What :func:`q1_analysis` found, before any sentence is written.

    Attributes:
        metric: the accuracy analysed (``val_accuracy``: selection never reads test).
        n_boot: bootstrap resamples behind every interval and p-value.
        claims: one :class:`~reports._claims.Claim` per effect, conditional effect and collapse
            contrast (keys ``q1:{dataset}[:deep]:effect:{factor}[|{condition}]`` and
            ``q1:{dataset}:collapse:{variable}``); run :func:`~reports._claims.holm` over every
            claim of the report before :func:`q1_items`.
        tables: CSV name → frame (``q1_surface_models.csv``, ``q1_conditional_effects.csv``,
            ``q1_collapse.csv``, ``q1_best_region.csv``, ``q1_surface_grid.csv``).
        figures: figure name → plotly figure (the surface of the strongest interaction, and the
            effects with their intervals, per dataset); ``figure_csv`` names each one's CSV.
    """

    metric: str
    n_boot: int
    claims: list[Claim] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, go.Figure] = field(default_factory=dict)
    figure_csv: dict[str, str] = field(default_factory=dict)


def chance_level(dataset: str, configs: pd.DataFrame, chance: float | Mapping[str, float] | None = None) -> float:
    """Chance accuracy of ``dataset`` as a fraction: given, else 1 / ``num_classes`` (column or known dataset), else NaN."""
    if isinstance(chance, Mapping):
        chance = chance.get(dataset)
    if chance is not None:
        return float(chance)
    if "num_classes" in configs.columns:
        k = pd.to_numeric(configs["num_classes"], errors="coerce").dropna()
        if len(k):
            return 1.0 / float(k.iloc[0])
    return 1.0 / KNOWN_CLASSES[dataset] if dataset in KNOWN_CLASSES else float("nan")


def _slices(name: str, v: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
    """Two slices of a variable: its sign for an α that spans zero (causal / synchronous), else its median.

    Returns ``(key, words, mask)`` pairs, low side first.
    """
    v = np.asarray(v, dtype=float)
    sym = _name(name)
    if name.endswith(("alpha_post", "alpha_pre")) and np.nanmin(v) < 0 < np.nanmax(v):
        return [(f"{name}<0", f"{sym} < 0", v < 0), (f"{name}>0", f"{sym} > 0", v > 0)]
    m = float(np.nanmedian(v))
    lo, hi = v <= m, v > m
    if hi.sum() == 0:
        lo, hi = v < m, v >= m
    return [(f"{name}<={m:.3g}", f"{sym} ≤ {m:.3g}", lo), (f"{name}>{m:.3g}", f"{sym} > {m:.3g}", hi)]


@dataclass
class _Box:
    """Factors scaled to [−1, 1] over their observed range; covariates standardised (log2 for lr, width)."""

    factors: list[str]
    covariates: list[str]
    center: np.ndarray
    half: np.ndarray

    @classmethod
    def of(cls, d: pd.DataFrame, factors: list[str], covariates: list[str]) -> "_Box":
        raw = _raw(d, factors, covariates)
        p = len(factors)
        lo, hi = raw.min(axis=0), raw.max(axis=0)
        center = np.r_[(lo[:p] + hi[:p]) / 2, raw[:, p:].mean(axis=0)]
        half = np.r_[(hi[:p] - lo[:p]) / 2, raw[:, p:].std(axis=0)]
        return cls(factors, covariates, center, np.where(half > 0, half, 1.0))

    def scale(self, raw: np.ndarray) -> np.ndarray:
        return (raw - self.center) / self.half

    def unscale(self, z: np.ndarray | float, i: int) -> np.ndarray:
        return z * self.half[i] + self.center[i]


def _raw(d: pd.DataFrame, factors: list[str], covariates: list[str]) -> np.ndarray:
    cols = [d[f].astype(float).to_numpy() for f in factors] + [_covariate(d, c) for c in covariates]
    return np.column_stack(cols) if cols else np.zeros((len(d), 0))


def _bootstrap_claim(key: str, text: str, est: float, boots: np.ndarray, n_boot: int, **extra: object) -> Claim:
    lo, hi = percentile_interval(boots[:, None])
    return Claim(key, text, float(est), float(lo[0]), float(hi[0]), bootstrap_p(boots),
                 extra={"n_boot": n_boot, **extra})


def _collapse(dataset: str, g: pd.DataFrame, variables: list[str], collapsed: np.ndarray, n_boot: int,
              rng: np.random.Generator) -> tuple[list[dict], list[Claim]]:
    """Collapse rate in the low and high slice of each variable, and their difference with a bootstrap."""
    rows: list[dict] = []
    claims: list[Claim] = []
    if collapsed.sum() == 0 or len(g) < MIN_CONFIGS:
        return rows, claims
    for var in variables:
        v = g[var].astype(float).to_numpy()
        ok = np.isfinite(v)
        (klo, wlo, lo), (khi, whi, hi) = _slices(var, v[ok])
        c = collapsed[ok].astype(float)
        rate_low = float(c[lo].mean()) if lo.any() else np.nan
        rate_high = float(c[hi].mean()) if hi.any() else np.nan
        row = {"dataset": dataset, "variable": var, "low_slice": wlo, "high_slice": whi,
               "n_low": int(lo.sum()), "collapsed_low": int(c[lo].sum()), "n_high": int(hi.sum()),
               "collapsed_high": int(c[hi].sum()), "rate_low": rate_low, "rate_high": rate_high, "n_boot": n_boot}
        if min(lo.sum(), hi.sum()) < MIN_SLICE:
            rows.append({**row, "estimate": np.nan, "ci_lo": np.nan, "ci_hi": np.nan, "p": np.nan, "key": "",
                         "reason": f"a slice has fewer than {MIN_SLICE} configurations"})
            continue
        w = resample_counts(int(ok.sum()), n_boot, rng)
        with np.errstate(invalid="ignore", divide="ignore"):
            boots = (w[:, hi] @ c[hi]) / w[:, hi].sum(axis=1) - (w[:, lo] @ c[lo]) / w[:, lo].sum(axis=1)
        est = rate_high - rate_low
        where = whi if est > 0 else wlo
        claim = _bootstrap_claim(f"q1:{dataset}:collapse:{var}", f"collapse (near-chance runs) is more frequent where "
                                 f"{where}", est, boots, n_boot, dataset=dataset, kind="collapse", variable=var)
        claims.append(claim)
        rows.append({**row, "estimate": est, "ci_lo": claim.low, "ci_hi": claim.high, "p": claim.p, "key": claim.key,
                     "reason": ""})
    return rows, claims


def _candidates(Z: np.ndarray, p: int, q: int, curved: list[int], n: int) -> dict[str, tuple[list[Term], float | None]]:
    """Model name → (terms, ridge penalty or None = chosen by held-out fit), those this many configurations support."""
    out: dict[str, tuple[list[Term], float | None]] = {}
    lin = independent_terms(Z, surface_terms(p + q, "linear"))
    quad = independent_terms(Z, surface_terms(p + q, "quadratic", curved=curved, linear_only=q))
    if n < len(lin) + 5:  # not even the additive surface: no surface at all
        return out
    out["linear"] = (lin, 0.0)
    if p >= 1 and len(quad) > len(lin):
        if n >= len(quad) + 5:
            out["quadratic"] = (quad, 0.0)
        out["quadratic_ridge"] = (quad, None)
    return out


def _surface(dataset: str, subset: str, d: pd.DataFrame, factors: list[str], covariates: list[str], metric: str,
             n_boot: int, rng: np.random.Generator) -> tuple[dict, list[Claim]]:
    """Fit the candidate surfaces on ``d`` (non-collapsed configurations), pick one by held-out R², and
    derive conditional effects, the best region and a grid for the figure."""
    tag = f"q1:{dataset}:" + ("" if subset == "all" else f"{subset}:")
    y = d[f"{metric}_mean"].astype(float).to_numpy()
    n, p, q = len(d), len(factors), len(covariates)
    base = {"dataset": dataset, "subset": subset, "n_configs": n, "n_runs": int(d["n_seeds"].sum()),
            "factors": ";".join(factors), "covariates": ";".join(covariates)}
    out: dict = {"models": [], "effects": [], "best": [], "grid": [], "base": base}
    cands: dict = {}
    if n >= MIN_CONFIGS and p:  # (none at all when every configuration collapsed)
        box = _Box.of(d, factors, covariates)
        Z = box.scale(_raw(d, factors, covariates))
        curved = [i for i, f in enumerate(factors) if d[f].astype(float).nunique() >= 3]
        cands = _candidates(Z, p, q, curved, n)
    if not cands:
        need = max(MIN_CONFIGS, p + q + 6)  # the additive surface's terms + 5
        out["models"].append({**base, "model": "none", "chosen": False,
                              "reason": ("no configuration above the collapse level" if n == 0 else
                                         f"too few configurations ({n}; need {need})" if p else "no factor varied")})
        return out, []
    sst = float(np.sum((y - y.mean()) ** 2))
    for name, (terms, ridge) in cands.items():
        A = design(Z, terms)
        lam = best_ridge(A, y) if ridge is None else ridge
        coef = ridge_fit(A, y, lam)[0]
        fit_r2 = 1.0 - float(np.sum((y - A @ coef) ** 2)) / sst if sst > 0 else np.nan
        out["models"].append({**base, "model": name, "n_terms": len(terms), "ridge": lam,
                              "cv_r2": cv_r2(A, y, ridge=ridge, folds=10, repeats=5), "fit_r2": fit_r2,
                              "folds": min(10, n), "chosen": False, "reason": ""})
    scores = np.array([m["cv_r2"] for m in out["models"]], dtype=float)
    best = int(np.nanargmax(np.where(np.isfinite(scores), scores, -np.inf)))
    out["models"][best]["chosen"] = True
    chosen = out["models"][best]["model"]
    terms, lam = cands[chosen][0], out["models"][best]["ridge"]
    A = design(Z, terms)
    coef = ridge_fit(A, y, lam)[0]
    boots = weighted_lstsq(A, y, resample_counts(n, n_boot, rng), ridge=lam)
    claims: list[Claim] = []
    interacts = any(len(set(t)) == 2 for t in terms)
    for i, f in enumerate(factors):
        conditions: list[tuple[str, str, np.ndarray]] = [("", "", np.ones(n, bool))]
        if interacts:
            for j, other in enumerate(factors):
                if j != i and any(set(t) == {i, j} for t in terms):
                    conditions += _slices(other, d[other].astype(float).to_numpy())
        lo_x, hi_x = float(box.unscale(-1.0, i)), float(box.unscale(1.0, i))
        for key, words, mask in conditions:
            row = {**base, "factor": f, "condition": words or "all configurations", "from": lo_x, "to": hi_x,
                   "n_slice": int(mask.sum()), "model": chosen, "n_boot": n_boot}
            if mask.sum() < MIN_SLICE:
                out["effects"].append({**row, "estimate": np.nan, "ci_lo": np.nan, "ci_hi": np.nan, "p": np.nan,
                                       "key": "", "reason": f"fewer than {MIN_SLICE} configurations in the slice"})
                continue
            # balanced: the other factors uniform over their range (their centre, for a quadratic), the
            # slicing factor uniform over its slice; not the configurations' chance imbalances
            z = np.zeros((2, p + q))
            if key:
                j = factors.index(key.split("<")[0].split(">")[0])
                zj = Z[mask, j]
                z[:, j] = (zj.min() + zj.max()) / 2
            z[:, i] = (1.0, -1.0)
            c = design(z[:1], terms)[0] - design(z[1:], terms)[0]
            est = float(coef @ c)
            text = f"{_name(f)}: {'higher' if est > 0 else 'lower'} is better" + (f" where {words}" if words else "")
            claim = _bootstrap_claim(tag + f"effect:{f}" + (f"|{key}" if key else ""), text, est, boots @ c, n_boot,
                                     dataset=dataset, subset=subset, kind="effect", factor=f, condition=words,
                                     n_slice=int(mask.sum()), lo=lo_x, hi=hi_x)
            claims.append(claim)
            out["effects"].append({**row, "estimate": est, "ci_lo": claim.low, "ci_hi": claim.high, "p": claim.p,
                                   "key": claim.key, "reason": ""})
    # the best region: the surface's argmax over the observed box (covariates at their mean), and how it moves
    m = int(np.clip(round(1500 ** (1.0 / p)), 3, 21))
    axes = np.meshgrid(*[np.linspace(-1, 1, m)] * p, indexing="ij")
    grid = np.column_stack([a.ravel() for a in axes] + [np.zeros((m**p, q))])
    G = design(grid, terms)
    star = int(np.argmax(G @ coef))
    where = np.empty(len(boots), dtype=int)
    for s in range(0, len(boots), 500):
        where[s:s + 500] = np.argmax(boots[s:s + 500] @ G.T, axis=1)
    # an accuracy cannot leave [0, 1] (or [0, 100]): a surface extrapolating past it is capped there
    top = 1.0 if float(np.nanmax(y)) <= 1.0 else 100.0
    at_star = np.clip(boots @ G[star], 0.0, top)
    plo, phi = percentile_interval(at_star[:, None])
    # how firmly each coordinate is placed: resampled maxima within a quarter of the factor's range of it
    near = np.abs(grid[where, :p] - grid[star, :p]) <= 0.5 + 1e-9
    for i, f in enumerate(factors):
        xs = box.unscale(grid[where, i], i)
        lo, hi = percentile_interval(xs[:, None])
        out["best"].append({**base, "model": chosen, "factor": f, "best": float(box.unscale(grid[star, i], i)),
                            "ci_lo": float(lo[0]), "ci_hi": float(hi[0]), "min": float(box.unscale(-1.0, i)),
                            "max": float(box.unscale(1.0, i)), "predicted": float(np.clip(G[star] @ coef, 0.0, top)),
                            "predicted_lo": float(plo[0]), "predicted_hi": float(phi[0]), "share_near": float(near[:, i].mean()),
                            "n_boot": n_boot})
    # the figure's surface: the pair of factors with the strongest interaction, the others at their mean
    if p >= 2:
        pairs = [(abs(coef[k]), t) for k, t in enumerate(terms) if len(set(t)) == 2 and max(t) < p]
        i, j = max(pairs)[1] if pairs else (0, 1)
        lin = np.linspace(-1, 1, 30)
        gi, gj = np.meshgrid(lin, lin, indexing="ij")
        pts = np.tile(np.r_[Z[:, :p].mean(axis=0), np.zeros(q)], (gi.size, 1))
        pts[:, i], pts[:, j] = gi.ravel(), gj.ravel()
        pred = design(pts, terms) @ coef
        out["grid"] = [{"dataset": dataset, "subset": subset, "x_factor": factors[i], "y_factor": factors[j],
                        "x": float(box.unscale(a, i)), "y": float(box.unscale(b, j)), "predicted": float(v)}
                       for a, b, v in zip(pts[:, i], pts[:, j], pred)]
    return out, claims


def q1_analysis(configs: pd.DataFrame, metric: str = "val_accuracy", *, n_boot: int = N_BOOT,
                chance: float | Mapping[str, float] | None = None, collapse_margin: float = COLLAPSE_MARGIN,
                seed: int = 0) -> Q1Result:
    """Open question 1 with its structure, per dataset (S-TLLR configurations, seeds averaged).

    1. Collapse apart: a configuration whose mean ``metric`` is below chance + ``collapse_margin``
       collapsed. Its rate is compared between the low and high slice of every varied factor
       and covariate (bootstrap of configurations; one claim each). The surface is fitted on
       the others, so a corner of runs at chance does not pass for an effect on accuracy.
    2. Surfaces: additive linear, quadratic (interactions + squares of factors with ≥ 3
       values) and quadratic with a ridge penalty (chosen by leave-one-out within each
       training fold), factors scaled to [−1, 1] over their range, covariates (learn_steps, lr,
       width, depth, T; log2 for lr and width) linear. The one with the best 10-fold held-out R²
       is used; every candidate's held-out and in-sample R² are reported.
    3. Effects: moving a factor from its smallest to its largest value, averaged over the
       configurations (a claim), and, when the surface has its interactions, within each slice
       of every other factor it interacts with (α < 0 / > 0; otherwise at the median).
       Intervals and p-values: ``n_boot`` resamples of configurations, each refitted.
    4. Best region: the surface's argmax on a grid over the observed box, with the 95% range of
       the argmax over resamples per factor and the predicted accuracy there.
    5. Per-layer factors (``layer{i}_*`` that do not restate the network-wide value) form a
       second surface (``deep``) over the configurations that set them.

    Args:
        configs: :func:`reports._configs.config_table` rows (any rules; S-TLLR is used).
        metric: accuracy column stem (``{metric}_mean``).
        n_boot: bootstrap resamples (10,000 by default).
        chance: chance accuracy (fraction), or per dataset; default 1 / classes when known.
        collapse_margin: how far above chance a configuration still counts as collapsed.
        seed: of the bootstrap.

    Returns:
        :class:`Q1Result` (claims unadjusted: run :func:`~reports._claims.holm` over the whole report).
    """
    rng = np.random.default_rng(seed)
    result = Q1Result(metric, n_boot)
    parts: dict[str, list[dict]] = {"models": [], "effects": [], "best": [], "grid": [], "collapse": []}
    for dataset, g in stllr_configs(configs, metric).groupby("dataset", sort=True):
        dataset = str(dataset)
        y = g[f"{metric}_mean"].astype(float).to_numpy()
        scale = 100.0 if as_percent(y) == 1.0 else 1.0  # accuracies given in percent
        level = scale * (chance_level(dataset, g, chance) + collapse_margin)  # in the metric's own units
        collapsed = y < level if np.isfinite(level) else np.zeros(len(g), bool)
        network = _varied(g, FACTORS)
        layers = [c for c in _varied(g, layer_columns(g)) if not _restates(g, c)]
        covs = [c for c in _varied(g, COVARIATES) if c not in network]
        rows, claims = _collapse(dataset, g, network + layers + covs, collapsed, n_boot, rng)
        parts["collapse"] += rows
        result.claims += claims
        ok = g[~collapsed]
        for subset, factors in (("all", network), ("deep", network + layers)):
            if subset == "deep" and not layers:
                continue
            d = ok.dropna(subset=factors + covs)
            cv = [c for c in covs if d[c].astype(float).nunique() >= 2]
            out, claims = _surface(dataset, subset, d, [f for f in factors if d[f].astype(float).nunique() >= 2], cv,
                                   metric, n_boot, rng)
            for m in out["models"]:
                m.update(n_collapsed=int(collapsed.sum()), n_total=len(g), collapse_below=level, metric=metric,
                         scale=as_percent(y))
            for k in ("models", "effects", "best", "grid"):
                parts[k] += out[k]
            result.claims += claims
    result.tables = {"q1_surface_models.csv": pd.DataFrame(parts["models"]),
                     "q1_conditional_effects.csv": pd.DataFrame(parts["effects"]),
                     "q1_collapse.csv": pd.DataFrame(parts["collapse"]),
                     "q1_best_region.csv": pd.DataFrame(parts["best"]),
                     "q1_surface_grid.csv": pd.DataFrame(parts["grid"])}
    for dataset in sorted({str(m["dataset"]) for m in parts["models"]}):
        grid = result.tables["q1_surface_grid.csv"]
        if len(grid) and (grid["dataset"] == dataset).any():
            name = f"q1_surface_{_slug(dataset)}"
            result.figures[name] = surface_figure(grid, configs, dataset, metric, collapse_below=dict(
                (str(m["dataset"]), m["collapse_below"]) for m in parts["models"]).get(dataset))
            result.figure_csv[name] = "q1_surface_grid.csv"
        eff = result.tables["q1_conditional_effects.csv"]
        if len(eff) and (eff["dataset"] == dataset).any() and np.isfinite(eff["estimate"]).any():
            name = f"q1_effects_{_slug(dataset)}"
            result.figures[name] = effects_figure(eff, dataset, metric, scale=as_percent(
                stllr_configs(configs, metric).query("dataset == @dataset")[f"{metric}_mean"]))
            result.figure_csv[name] = "q1_conditional_effects.csv"
    return result


def _slug(s: object) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(s)).strip("_") or "x"


def surface_figure(grid: pd.DataFrame, configs: pd.DataFrame, dataset: str, metric: str = "val_accuracy",
                   *, collapse_below: float | None = None) -> go.Figure:
    """The fitted surface over its two most interacting factors (contours), with the configurations
    (circles; collapsed ones as crosses, which the surface did not see)."""
    gr = grid[(grid["dataset"] == dataset) & (grid["subset"] == "all")]
    if gr.empty:
        gr = grid[grid["dataset"] == dataset]
    xf, yf = str(gr["x_factor"].iloc[0]), str(gr["y_factor"].iloc[0])
    xs, ys = np.unique(gr["x"]), np.unique(gr["y"])
    z = gr.pivot_table(index="y", columns="x", values="predicted").reindex(index=ys, columns=xs).to_numpy()
    scale = as_percent(gr["predicted"])
    fig = go.Figure(go.Contour(x=xs, y=ys, z=scale * z, colorscale="Viridis", contours={"showlabels": True},
                               colorbar={"title": {"text": "predicted"}}, name="surface"))
    c = stllr_configs(configs, metric)
    c = c[(c["dataset"] == dataset)].dropna(subset=[xf, yf])
    low = c[f"{metric}_mean"].astype(float) < (collapse_below if collapse_below is not None else -np.inf)
    for mask, sym, nm in ((~low, "circle", "configuration"), (low, "x", "collapsed (near chance; not fitted)")):
        h = c[mask.to_numpy()]
        if len(h):
            fig.add_trace(go.Scatter(x=h[xf], y=h[yf], mode="markers", name=nm,
                                     marker={"symbol": sym, "color": "white" if sym == "circle" else "red", "size": 7,
                                             "line": {"color": "black", "width": 1}},
                                     hovertext=[html.escape(str(v)) for v in h["config_id"]], hoverinfo="text+x+y"))
    fig.update_layout(title={"text": f"{html.escape(dataset)}: {label(metric)} surface over {_name(xf)} × {_name(yf)} "
                                     "(other factors at their mean)"},
                      xaxis={"title": {"text": _name(xf)}}, yaxis={"title": {"text": _name(yf)}},
                      height=460, margin={"l": 60, "r": 10, "t": 60, "b": 40})
    return fig


def effects_figure(effects: pd.DataFrame, dataset: str, metric: str = "val_accuracy", *, scale: float = 100.0) -> go.Figure:
    """Each factor's effect across its range, overall and within slices, with its 95% interval
    (``scale`` 100 shows accuracies given as fractions in points)."""
    e = effects[(effects["dataset"] == dataset) & np.isfinite(effects["estimate"].astype(float))]
    names = [f"{_name(r.factor)}{'' if r.subset == 'all' else ' (deep)'} | {r.condition}" for r in e.itertuples()]
    fig = go.Figure(go.Scatter(x=scale * e["estimate"], y=names, mode="markers", marker={"color": "#222"},
                               error_x={"array": scale * (e["ci_hi"] - e["estimate"]),
                                        "arrayminus": scale * (e["estimate"] - e["ci_lo"])}, name="effect (95% CI)"))
    fig.add_vline(x=0, line={"color": "#888", "dash": "dot"})
    fig.update_layout(title={"text": f"{html.escape(dataset)}: change of {label(metric)} from a factor's smallest to "
                                     "its largest value (fitted surface; 95% bootstrap interval)"},
                      xaxis={"title": {"text": "effect" + (" (points)" if scale == 100 else "")}},
                      yaxis={"autorange": "reversed"}, height=max(300, 28 * len(e) + 120),
                      margin={"l": 260, "r": 10, "t": 60, "b": 40})
    return fig


def _adjusted(tables: dict[str, pd.DataFrame], claims: list[Claim]) -> None:
    """Copy each claim's Holm-adjusted p-value and verdict into the rows that carry its key."""
    by_key = {c.key: c for c in claims}
    for df in tables.values():
        if "key" in df.columns:
            df["p_adj"] = [by_key[k].p_adj if k in by_key else np.nan for k in df["key"]]
            df["holds"] = [by_key[k].holds() if k in by_key else False for k in df["key"]]


def _ci_text(est: float, lo: float, hi: float, scale: float, unit: str, p_adj: float) -> str:
    return (f"{scale * est:+.2f} {unit}, 95% CI {scale * lo:+.2f} to {scale * hi:+.2f}, "
            f"Holm-adjusted p = {p_adj:.2g}")


def _effect_clause(c: Claim, scale: float, unit: str) -> str:
    verdict = (("higher is better" if c.estimate > 0 else "lower is better") if c.holds()
               else "no difference at the corrected level")
    return f"{verdict} ({_ci_text(c.estimate, c.low, c.high, scale, unit, c.p_adj)})"


def q1_items(result: Q1Result) -> list:
    """Page items of open question 1: per dataset a list of sentences, then the tables and figures.

    Call after :func:`~reports._claims.holm` has adjusted every claim of the report: a
    direction is stated only for a claim that holds at the corrected level; any other reads
    "no difference at the corrected level" with its interval. Also writes ``p_adj`` and
    ``holds`` into the tables that carry claim keys (so the CSVs show them).
    """
    _adjusted(result.tables, result.claims)
    by_key = {c.key: c for c in result.claims}
    models = result.tables.get("q1_surface_models.csv", pd.DataFrame())
    effects = result.tables.get("q1_conditional_effects.csv", pd.DataFrame())
    collapse = result.tables.get("q1_collapse.csv", pd.DataFrame())
    best = result.tables.get("q1_best_region.csv", pd.DataFrame())
    items: list = []
    metric = label(result.metric)
    for dataset in (sorted(models["dataset"].unique()) if len(models) else []):
        m = models[models["dataset"] == dataset]
        scale = float(m["scale"].iloc[0])
        unit = "points"  # accuracies shown in percent, given as fractions (scale 100) or in percent (scale 1)
        bullets: list[str] = []
        first = m.iloc[0]
        below = (f"{metric} below {scale * first['collapse_below']:.3g}%"
                 if np.isfinite(first["collapse_below"]) else "")
        if not below:
            bullets.append("Collapse: chance level unknown for this dataset (pass chance=...), so no run is set apart.")
        elif first["n_collapsed"] == 0:
            bullets.append(f"Collapse: no configuration is near chance ({below}).")
        else:
            bullets.append(f"Collapse: {int(first['n_collapsed'])} of {int(first['n_total'])} configurations are near "
                           f"chance ({below}); "
                           "they are modelled apart and the accuracy surface is fitted without them.")
            col = collapse[collapse["dataset"] == dataset] if len(collapse) else collapse
            held = [r for r in col.itertuples() if r.key in by_key and by_key[r.key].holds()]
            for r in held:
                hi_side = r.estimate > 0
                bullets.append(f"Collapse is more frequent where {r.high_slice if hi_side else r.low_slice}: "
                               f"{r.collapsed_high} of {r.n_high} vs {r.collapsed_low} of {r.n_low} where "
                               f"{r.low_slice if hi_side else r.high_slice} (difference in rate "
                               f"{_ci_text(r.estimate, r.ci_lo, r.ci_hi, 100.0, 'points', r.p_adj)}).")
            if len(col) and not held:
                bullets.append("No factor or setting changes the collapse rate at the corrected level.")
        for r in m.itertuples():
            deep = " (deep networks, with the per-layer factors)" if r.subset == "deep" else ""
            if not r.chosen:
                if r.model == "none":
                    bullets.append(f"Accuracy surface{deep}: none — {r.reason}.")
                continue
            others = "; ".join(f"{MODEL_NAMES[o.model]} {o.cv_r2:.2f}" for o in m[m["subset"] == r.subset].itertuples())
            weak = (" It predicts held-out configurations no better than their mean: its effects are weak evidence."
                    if not r.cv_r2 > 0 else "")
            bullets.append(f"Accuracy surface{deep}: {MODEL_NAMES[r.model]}, chosen by held-out fit ({int(r.folds)}-fold "
                           f"cross-validated R²: {others}; in-sample R² {r.fit_r2:.2f}), over {r.n_configs} "
                           f"configurations ({r.n_runs} runs).{weak}")
            e = effects[(effects["dataset"] == dataset) & (effects["subset"] == r.subset)] if len(effects) else effects
            for factor, h in (e.groupby("factor", sort=False) if len(e) else []):
                parts = []
                signs = set()
                for x in h.itertuples():
                    where = "over all configurations" if x.condition == "all configurations" else f"where {x.condition}"
                    if x.key not in by_key:
                        parts.append(f"{where}: not estimated ({x.reason})")
                        continue
                    c = by_key[x.key]
                    parts.append(f"{where}: {_effect_clause(c, scale, unit)}")
                    if c.holds() and x.condition != "all configurations":
                        signs.add(np.sign(c.estimate))
                flip = " The effect reverses across the slices: an additive fit would average it away." if len(signs) == 2 else ""
                x0 = h.iloc[0]
                bullets.append(f"{_name(factor)}{deep}, from {x0['from']:.3g} to {x0['to']:.3g}: " + "; ".join(parts)
                               + "." + flip)
            b = best[(best["dataset"] == dataset) & (best["subset"] == r.subset)] if len(best) else best
            if len(b):
                at = ", ".join(f"{_name(x.factor)} = {x.best:.3g} (range {x.min:.3g} to {x.max:.3g}; resampled maxima: "
                               f"95% between {x.ci_lo:.3g} and {x.ci_hi:.3g}, {100 * x.share_near:.0f}% within a "
                               "quarter of the range of it)" for x in b.itertuples())
                x0 = b.iloc[0]
                bullets.append(f"Best region of the surface{deep}: {at}; predicted {metric} there "
                               f"{scale * x0['predicted']:.2f} (95% CI {scale * x0['predicted_lo']:.2f} to "
                               f"{scale * x0['predicted_hi']:.2f}; other settings at their mean; capped at 100%). A maximum chosen on "
                               "the same data: read its height as optimistic.")
        items += [Text(f"{dataset}:", summary=True), Bullets(bullets, summary=True)]
    if len(models):  # one number per cell; the long lists (factors, covariates) are in the CSV
        items.append(Table(models, "q1_surface_models.csv", {
            "dataset": "dataset", "subset": "subset", "model": "model", "terms": "n_terms",
            "held-out R²": "cv_r2", "in-sample R²": "fit_r2", "chosen": "chosen", "configs": "n_configs",
            "collapsed (apart)": "n_collapsed"},
            caption="Candidate response surfaces and their held-out fit (10-fold cross-validation, 5 shuffles)"))
    if len(effects):
        items.append(Table(effects, "q1_conditional_effects.csv", {
            "dataset": "dataset", "subset": "subset", "factor": lambda r: _name(r["factor"]), "where": "condition",
            "configs": "n_slice", "from": "from", "to": "to", "effect": "estimate", "95% low": "ci_lo",
            "95% high": "ci_hi", "Holm p": "p_adj", "holds": "holds"},
            caption=f"Change of {metric} from a factor's smallest to its largest value on the chosen surface "
                    f"({result.n_boot} bootstrap resamples of configurations; raw p and notes in the CSV)"))
    if len(collapse):
        items.append(Table(collapse, "q1_collapse.csv", {
            "dataset": "dataset", "variable": lambda r: _name(r["variable"]),
            "low slice": "low_slice", "collapsed (low)": "collapsed_low", "of (low)": "n_low",
            "high slice": "high_slice", "collapsed (high)": "collapsed_high", "of (high)": "n_high",
            "rate difference": "estimate", "95% low": "ci_lo", "95% high": "ci_hi", "Holm p": "p_adj",
            "holds": "holds"}, caption="Collapsed (near-chance) configurations per slice"))
    if len(best):
        items.append(Table(best, "q1_best_region.csv", {
            "dataset": "dataset", "subset": "subset", "factor": lambda r: _name(r["factor"]), "best": "best",
            "resampled maxima, 2.5%": "ci_lo", "resampled maxima, 97.5%": "ci_hi", "min": "min", "max": "max",
            "predicted there": "predicted", "95% low": "predicted_lo", "95% high": "predicted_hi",
            "maxima within ¼ range": "share_near"},
            caption="The surface's best region over the observed factor box"))
    items += [Figure(fig, name, result.figure_csv[name]) for name, fig in result.figures.items()]
    return items
