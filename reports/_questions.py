"""Open question 1: the causal / non-causal balance of S-TLLR (α_post, λ_post, λ_pre, per layer).

Evidence is per configuration (seeds averaged). :func:`factor_effects` fits validation accuracy
on every varied S-TLLR factor jointly, with the other varied settings (learn_steps, lr, width,
depth, T) as covariates, and bootstraps configurations for intervals; intervals are
Bonferroni-adjusted over all the factors of a dataset (network-wide and per-layer together),
so a verdict is a family-wise 95% claim per dataset.
:func:`answer_q1` turns the table into sentences and says "inconclusive" when the interval
contains zero or the configurations are too few; an interval wider than the whole spread of
the configurations' values is flagged ("uninformative" when it contains zero, "imprecise"
when it does not) so that a sentence never quotes a range beyond what the data span. Per-layer factors (``layer{i}_*``) are fit over the
configurations that set them (the deeper networks), where layer 0 takes the network-wide
value; elsewhere a per-layer column that only restates the network-wide factor is left out so
that no setting is counted twice. :func:`param_importance` adds Optuna's
importance (PED-ANOVA) on a study rebuilt in memory, with maximised objectives negated so
that importance is about reaching *high* accuracy.
"""

from __future__ import annotations

import html
import math
import warnings
from typing import Callable

import numpy as np
import optuna
from optuna.trial import FrozenTrial
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from reports._configs import as_percent, layer_columns, ranked
from reports._load import Objective
from reports._stats import mean_ci, ols_bootstrap
from reports._frontier import RULE_STYLE, label

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
    c = configs[(configs["rule"] == "stllr")]
    return c[np.isfinite(c[f"{metric}_mean"].astype(float))]


def factor_effects(configs: pd.DataFrame, metric: str = "val_accuracy", *, n_boot: int = 1000,
                   seed: int = 0) -> pd.DataFrame:
    """Joint effect of each varied S-TLLR factor on ``metric``, per dataset.

    Returns one row per (dataset, factor): n_configs, n_runs, the explored range, ``slope`` (per
    unit of the factor) with its interval, ``effect`` = slope × range (the change across the
    explored range, in the metric's units) with its interval, ``ci_width`` (effect_hi −
    effect_lo), ``spread`` (the largest minus the smallest configuration mean in the fit),
    ``ci_level`` and ``verdict`` ("higher is better", "lower is better" or "inconclusive") with
    ``reason``. An interval wider than ``spread`` is flagged in ``reason``: "uninformative"
    when it contains zero (the sentence then gives its width, not its absurd ends), "imprecise"
    when it excludes zero (the verdict stands; the size is poorly known).
    """
    rows = []
    for dataset, g in stllr_configs(configs, metric).groupby("dataset", sort=True):
        families = [f for f in (_varied(g, FACTORS), _varied(g, layer_columns(g))) if f]
        level = 1.0 - 0.05 / max(1, sum(len(f) for f in families))
        for family in families:
            covs = [c for c in _varied(g, COVARIATES) if c not in family]
            d = g.dropna(subset=family + covs)
            covs = [c for c in covs if d[c].nunique() >= 2]
            n = len(d)
            enough = n >= max(MIN_CONFIGS, len(family) + len(covs) + 5)
            y = d[f"{metric}_mean"].astype(float).to_numpy()
            spread = float(y.max() - y.min()) if n else np.nan
            if enough:
                X = np.column_stack([d[f].astype(float).to_numpy() for f in family] + [_covariate(d, c) for c in covs])
                fit = ols_bootstrap(X, y, n_boot=n_boot, level=level, seed=seed)
            for i, f in enumerate(family):
                lo_x, hi_x = (float(d[f].min()), float(d[f].max())) if n else (np.nan, np.nan)
                span = hi_x - lo_x
                row = {"dataset": dataset, "factor": f, "metric": metric, "n_configs": n,
                       "n_runs": int(d["n_seeds"].sum()) if n else 0, "min": lo_x, "max": hi_x,
                       "covariates": ";".join(covs), "ci_level": level, "spread": spread}
                if enough:
                    width = (fit.hi[i] - fit.lo[i]) * span
                    row.update(slope=fit.coef[i], slope_lo=fit.lo[i], slope_hi=fit.hi[i], effect=fit.coef[i] * span,
                               effect_lo=fit.lo[i] * span, effect_hi=fit.hi[i] * span, ci_width=width)
                    wide = (f"the interval is wider than the spread of the configurations "
                            f"({n} configurations for {len(family) + len(covs)} terms)")
                    if not (np.isfinite(fit.lo[i]) and np.isfinite(fit.hi[i])):
                        row.update(verdict="inconclusive", reason="no interval: the factor did not vary in resamples")
                    elif fit.lo[i] <= 0 <= fit.hi[i]:
                        row.update(verdict="inconclusive",
                                   reason=f"uninformative: {wide}" if width > spread else "the interval contains zero")
                    else:
                        row.update(verdict="higher is better" if fit.coef[i] > 0 else "lower is better",
                                   reason=f"imprecise: {wide}" if width > spread else "")
                else:
                    row.update(slope=np.nan, slope_lo=np.nan, slope_hi=np.nan, effect=np.nan, effect_lo=np.nan,
                               effect_hi=np.nan, ci_width=np.nan, verdict="inconclusive",
                               reason=f"too few configurations ({n}; need {max(MIN_CONFIGS, len(family) + len(covs) + 5)})")
                rows.append(row)
    return pd.DataFrame(rows)


def factor_levels(configs: pd.DataFrame, metric: str = "val_accuracy", *, bins: int = 4) -> pd.DataFrame:
    """Mean ``metric`` per level of each varied factor (its distinct values, or ``bins`` quantile bins).

    The interval is a 95% bootstrap over the configurations of the level.
    """
    rows = []
    for dataset, g in stllr_configs(configs, metric).groupby("dataset", sort=True):
        for f in _own_columns(g):
            d = g.dropna(subset=[f])
            x = d[f].astype(float)
            levels = x if x.nunique() <= 8 else pd.qcut(x, bins, duplicates="drop").map(lambda iv: iv.mid).astype(float)
            for level, h in d.groupby(levels.to_numpy(), sort=True):
                m, lo, hi = mean_ci(h[f"{metric}_mean"].to_numpy())
                rows.append({"dataset": dataset, "factor": f, "level": float(level), "x_min": float(h[f].min()),
                             "x_max": float(h[f].max()), "metric": metric, "mean": m, "ci_lo": lo, "ci_hi": hi,
                             "n_configs": len(h), "n_runs": int(h["n_seeds"].sum())})
    return pd.DataFrame(rows)


def factor_figure(configs: pd.DataFrame, levels: pd.DataFrame, dataset: str, metric: str = "val_accuracy") -> go.Figure:
    """Accuracy against each varied factor: configurations (seed std as error bars) and level means with CI."""
    lv = levels[levels["dataset"] == dataset]
    factors = list(dict.fromkeys(lv["factor"])) if len(lv) else []
    g = stllr_configs(configs, metric)
    g = g[g["dataset"] == dataset]
    ncols = min(3, max(1, len(factors)))
    nrows = max(1, math.ceil(len(factors) / ncols))
    fig = make_subplots(rows=nrows, cols=ncols, shared_yaxes=True, subplot_titles=[_name(f) for f in factors] or [""])
    color = RULE_STYLE["stllr"][1]
    for i, f in enumerate(factors):
        r, c = i // ncols + 1, i % ncols + 1
        d = g.dropna(subset=[f])
        fig.add_trace(go.Scatter(x=d[f], y=d[f"{metric}_mean"], error_y={"array": d[f"{metric}_std"].fillna(0.0)},
                                 mode="markers", marker={"color": color, "size": 5, "opacity": 0.5},
                                 name="configuration (± seed std)", showlegend=i == 0, legendgroup="cfg",
                                 hovertext=[html.escape(str(x)) for x in d["config_id"]], hoverinfo="text+x+y"),
                      row=r, col=c)
        m = lv[lv["factor"] == f]
        fig.add_trace(go.Scatter(x=m["level"], y=m["mean"], mode="lines+markers", line={"color": "#222"},
                                 error_y={"array": (m["ci_hi"] - m["mean"]).fillna(0.0),
                                          "arrayminus": (m["mean"] - m["ci_lo"]).fillna(0.0)},
                                 name="level mean (95% CI)", showlegend=i == 0, legendgroup="lvl"), row=r, col=c)
    fig.update_yaxes(title_text=label(metric), col=1)
    fig.update_layout(title={"text": f"{html.escape(dataset)}: {label(metric)} against the S-TLLR factors"},
                      height=320 * nrows + 60, margin={"l": 60, "r": 10, "t": 70, "b": 40})
    return fig


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


def answer_q1(effects: pd.DataFrame, configs: pd.DataFrame, metric: str = "val_accuracy") -> dict[str, list[str]]:
    """Plain-language sentences per dataset from :func:`factor_effects` (numbers, CI, counts)."""
    out: dict[str, list[str]] = {}
    if effects.empty:
        return out
    scale = as_percent(configs[f"{metric}_mean"]) if len(configs) else 100.0
    unit = "percentage points" if scale == 100.0 else "points"
    for dataset, e in effects.groupby("dataset", sort=True):
        parts = []
        for _, r in e.iterrows():
            counts = f"{r['n_configs']} configurations, {r['n_runs']} runs"
            if not np.isfinite(r["effect"]):
                parts.append(f"{_name(r['factor'])}: inconclusive — {r['reason']} ({counts}).")
                continue
            ci = f"{100 * r['ci_level']:.1f}% CI {scale * r['effect_lo']:+.2f} to {scale * r['effect_hi']:+.2f}"
            change = (f"moving it from {r['min']:.3g} to {r['max']:.3g} changes {label(metric)} by "
                      f"{scale * r['effect']:+.2f} {unit} ({ci}; {counts})")
            if r["verdict"] == "inconclusive" and str(r["reason"]).startswith("uninformative"):
                parts.append(f"{_name(r['factor'])}: inconclusive — uninformative: its {100 * r['ci_level']:.1f}% "
                             f"interval is {scale * r['ci_width']:.2f} {unit} wide, more than the whole spread of the "
                             f"configurations' {label(metric)} ({scale * r['spread']:.2f}; {counts}); the joint fit "
                             "needs more configurations per term (or factors that vary independently).")
            elif r["verdict"] == "inconclusive":
                parts.append(f"{_name(r['factor'])}: inconclusive — {change}; {r['reason']}.")
            else:
                hint = ""
                if r["factor"].endswith("alpha_post"):
                    hint = (" (the non-causal term helps: synchrony)" if r["verdict"] == "higher is better"
                            else " (causality helps: negative α_post favours causal order)")
                caveat = ("; imprecise: the interval is wider than the whole spread of the configurations "
                          f"({scale * r['spread']:.2f})" if str(r["reason"]).startswith("imprecise") else "")
                parts.append(f"{_name(r['factor'])}: {r['verdict']}{hint} — {change}{caveat}.")
        best = stllr_configs(configs, metric)
        best = ranked(best[best["dataset"] == dataset], metric).head(1)
        if len(best):
            b = best.iloc[0]
            setting = ", ".join(f"{_name(f)} = {b[f]:.3g}" for f in FACTORS if f in b and np.isfinite(b[f]))
            parts.append(f"Best S-TLLR configuration by {label(metric)}: {b['config_id']} ({setting}; "
                         f"validation {scale * b['val_accuracy_mean']:.2f} ± {scale * np.nan_to_num(b['val_accuracy_std']):.2f}, "
                         f"test {scale * b['test_accuracy_mean']:.2f} ± {scale * np.nan_to_num(b['test_accuracy_std']):.2f}, "
                         f"{int(b['n_seeds'])} seeds).")
        out[str(dataset)] = parts
    return out
