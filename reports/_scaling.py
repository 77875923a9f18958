"""Open question 2: how S-TLLR scales with width, depth and T compared with BPTT.

Costs follow power laws, so :func:`scaling_exponents` fits ``log y`` on ``log width``,
``log depth``, ``log T`` (and ``log learn_steps`` for S-TLLR), whichever the study varied,
over configurations, with bootstrap intervals. Accuracy is not a power law: it is fitted per
doubling of the size. The S-TLLR − BPTT accuracy gap comes from the matched table (best of
each rule by validation accuracy, per architecture).
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from reports._configs import as_percent, best_per_arch
from reports._stats import ols_bootstrap
from reports._frontier import RULE_STYLE, label, rule_name

SIZES = ("width", "depth", "T")
COST_METRICS = ("learning_memory_bytes_formula_per_sample", "learning_memory_bytes_measured_per_sample",
                "learning_macs_formula_per_sample", "learning_macs_measured_per_sample", "time_per_epoch_s")
PANELS = ("test_accuracy", "learning_memory_bytes_formula_per_sample", "learning_macs_formula_per_sample",
          "time_per_epoch_s")
MIN_POINTS = 4


def _varied(df: pd.DataFrame, cols: tuple[str, ...] | list[str]) -> list[str]:
    return [c for c in cols if df[c].astype(float).dropna().nunique() >= 2]


def scaling_table(configs: pd.DataFrame) -> pd.DataFrame:
    """The best configuration of each rule per architecture (by validation accuracy), with its size and costs."""
    keep = ["dataset", "rule", "arch_id", "model", "width", "depth", "T", "learn_steps", "config_id", "study",
            "n_seeds", "trial_ids"]
    keep += [f"{m}_{s}" for m in ("val_accuracy", "test_accuracy", *COST_METRICS) for s in ("mean", "std")]
    best = best_per_arch(configs)
    return best[[c for c in keep if c in best.columns]].sort_values(["dataset", "rule", "width", "depth", "T"]).reset_index(drop=True)


def _fit_rows(d: pd.DataFrame, y: np.ndarray, sizes: list[str], log_y: bool, extra: dict, n_boot: int) -> list[dict]:
    n = len(d)
    if not sizes:
        return []
    X = np.column_stack([np.log2(d[s].astype(float).to_numpy()) for s in sizes])
    ok = np.all(np.isfinite(X), axis=1) & np.isfinite(y) & ((y > 0) if log_y else True)
    X, yy = X[ok], (np.log2(y[ok]) if log_y else y[ok])
    n = int(ok.sum())
    enough = n >= max(MIN_POINTS, len(sizes) + 3)
    fit = ols_bootstrap(X, yy, n_boot=n_boot) if enough else None
    rows = []
    for i, s in enumerate(sizes):
        row = {**extra, "size": s, "n_points": n, "covariates": ";".join(x for x in sizes if x != s)}
        if fit is None:
            row.update(estimate=np.nan, ci_lo=np.nan, ci_hi=np.nan, verdict="inconclusive", reason=f"too few points ({n})")
        else:
            conclusive = np.isfinite(fit.lo[i]) and np.isfinite(fit.hi[i]) and not fit.lo[i] <= 0 <= fit.hi[i]
            row.update(estimate=fit.coef[i], ci_lo=fit.lo[i], ci_hi=fit.hi[i],
                       verdict=("increases" if fit.coef[i] > 0 else "decreases") if conclusive else "inconclusive",
                       reason="" if conclusive else "the interval contains zero")
        rows.append(row)
    return rows


def scaling_exponents(configs: pd.DataFrame, *, n_boot: int = 1000) -> pd.DataFrame:
    """Fitted size dependence per dataset, rule and metric, over configurations.

    Costs: ``estimate`` is the log-log exponent (y ∝ size^estimate; S-TLLR also controls for
    learn_steps). Accuracy (``val_accuracy``, ``test_accuracy``): ``estimate`` is the change
    per doubling of the size, over every configuration the study ran at that size.
    """
    rows: list[dict] = []
    for (dataset, rule), g in configs.groupby(["dataset", "rule"], sort=True):
        sizes = _varied(g, SIZES)
        ctrl = ["learn_steps"] if rule == "stllr" and g["learn_steps"].astype(float).nunique() >= 2 else []
        for metric in (*COST_METRICS, "val_accuracy", "test_accuracy"):
            y = g[f"{metric}_mean"].astype(float).to_numpy()
            if not np.isfinite(y).any():
                continue
            log_y = metric in COST_METRICS
            extra = {"dataset": dataset, "rule": rule, "metric": metric,
                     "kind": "log-log exponent" if log_y else "change per doubling",
                     "n_runs": int(g.loc[np.isfinite(y), "n_seeds"].sum())}
            fitted = _fit_rows(g, y, sizes + ctrl, log_y, extra, n_boot)
            rows += [r for r in fitted if r["size"] in sizes]
    return pd.DataFrame(rows)


def gap_scaling(matched: pd.DataFrame, *, n_boot: int = 1000) -> pd.DataFrame:
    """The S-TLLR − BPTT test accuracy gap (matched table) per doubling of width, depth and T."""
    rows: list[dict] = []
    for dataset, g in (matched.groupby("dataset", sort=True) if len(matched) else []):
        extra = {"dataset": dataset, "rule": "stllr-bptt", "metric": "accuracy_diff", "kind": "change per doubling",
                 "n_runs": int(g["stllr_seeds"].sum() + g["bptt_seeds"].sum())}
        rows += _fit_rows(g, g["accuracy_diff"].astype(float).to_numpy(), _varied(g, SIZES), False, extra, n_boot)
    return pd.DataFrame(rows)


def memory_vs_T(configs: pd.DataFrame) -> pd.DataFrame:
    """Learning memory per sample (formula and measured) by rule and T, averaged over configurations."""
    cols = ["learning_memory_bytes_formula_per_sample_mean", "learning_memory_bytes_measured_per_sample_mean"]
    if configs.empty:
        return pd.DataFrame(columns=["dataset", "rule", "width", "depth", "T", *cols, "n_configs"])
    g = configs.groupby(["dataset", "rule", "width", "depth", "T"], sort=True, dropna=False)
    out = g[cols].mean().reset_index()
    out["n_configs"] = g.size().to_numpy()
    return out


def _lines(df: pd.DataFrame, x: str) -> list[tuple[str, str, pd.DataFrame]]:
    """One line per rule and per value of the other sizes."""
    others = [s for s in SIZES if s != x and df[s].nunique() > 1]
    out = []
    for rule in RULE_STYLE:
        r = df[df["rule"] == rule]
        for key, h in (r.groupby(others, sort=True) if others else [((), r)]):
            key = key if isinstance(key, tuple) else (key,)
            tag = ", ".join(f"{s} {v:g}" for s, v in zip(others, key))
            out.append((rule, f"{rule_name(rule)}{' (' + tag + ')' if tag else ''}", h.sort_values(x)))
    return out


def scaling_figure(table: pd.DataFrame, dataset: str, x: str = "width") -> go.Figure:
    """Accuracy, learning memory, learning MACs and time per epoch against one size, both rules."""
    d = table[table["dataset"] == dataset]
    fig = make_subplots(rows=2, cols=2, subplot_titles=[label(m) for m in PANELS], horizontal_spacing=0.12)
    scale = as_percent(d["test_accuracy_mean"]) if len(d) else 100.0
    dashes = ["solid", "dash", "dot", "dashdot", "longdash"]
    for j, (rule, name, h) in enumerate(_lines(d, x)):
        color, symbol = RULE_STYLE[rule][1], RULE_STYLE[rule][2]
        for k, m in enumerate(PANELS):
            f = scale if m == "test_accuracy" else 1.0
            fig.add_trace(go.Scatter(x=h[x], y=f * h[f"{m}_mean"], error_y={"array": f * h[f"{m}_std"].fillna(0.0)},
                                     mode="lines+markers", name=html.escape(name), legendgroup=name, showlegend=k == 0,
                                     line={"color": color, "dash": dashes[j % len(dashes)]}, marker={"symbol": symbol}),
                          row=k // 2 + 1, col=k % 2 + 1)
    fig.update_xaxes(title_text=x, type="log")
    for k, m in enumerate(PANELS):
        if m != "test_accuracy":
            fig.update_yaxes(type="log", row=k // 2 + 1, col=k % 2 + 1)
    fig.update_layout(title={"text": f"{html.escape(dataset)}: against {x} (best configuration per architecture, "
                                     f"selected by validation accuracy; bars: seed std)"},
                      height=680, margin={"l": 60, "r": 10, "t": 80, "b": 40})
    return fig


def gap_figure(matched: pd.DataFrame, dataset: str) -> go.Figure:
    """S-TLLR − BPTT test accuracy (± standard error over seeds) against width, one line per depth and T."""
    d = matched[matched["dataset"] == dataset].copy()
    scale = as_percent(d[["stllr_test_accuracy_mean", "bptt_test_accuracy_mean"]].to_numpy()) if len(d) else 100.0
    fig = go.Figure()
    for key, h in d.groupby(["depth", "T"], sort=True):
        h = h.sort_values("width")
        fig.add_trace(go.Scatter(x=h["width"], y=scale * h["accuracy_diff"],
                                 error_y={"array": scale * h["accuracy_diff_se"].fillna(0.0)}, mode="lines+markers",
                                 name=f"depth {key[0]:g}, T {key[1]:g}"))
    fig.add_hline(y=0, line={"color": "#888", "dash": "dot"})
    fig.update_layout(title={"text": f"{html.escape(dataset)}: S-TLLR − BPTT test accuracy at matched architecture"},
                      xaxis={"title": {"text": "width"}, "type": "log"},
                      yaxis={"title": {"text": "accuracy difference" + (" (points)" if scale == 100 else "")}},
                      height=400, margin={"l": 60, "r": 10, "t": 50, "b": 40})
    return fig


def memory_T_figure(mem: pd.DataFrame, dataset: str) -> go.Figure:
    """Learning memory per sample against T, formula (solid) and measured (dashed), both rules."""
    d = mem[mem["dataset"] == dataset]
    fig = go.Figure()
    for (rule, width, depth), h in d.groupby(["rule", "width", "depth"], sort=True):
        h = h.sort_values("T")
        name, color, symbol = RULE_STYLE.get(str(rule), (str(rule), "#555", "circle"))
        for col, dash, tag in (("formula", "solid", "formula"), ("measured", "dash", "measured")):
            fig.add_trace(go.Scatter(x=h["T"], y=h[f"learning_memory_bytes_{col}_per_sample_mean"], mode="lines+markers",
                                     line={"color": color, "dash": dash}, marker={"symbol": symbol},
                                     name=f"{name} w{width:g} d{depth:g} ({tag})"))
    fig.update_layout(title={"text": f"{html.escape(dataset)}: learning memory against T"},
                      xaxis={"title": {"text": "T (time steps)"}, "type": "log"},
                      yaxis={"title": {"text": label("learning_memory_bytes_formula_per_sample").replace(" (formula)", "")},
                             "type": "log"}, height=420, margin={"l": 60, "r": 10, "t": 50, "b": 40})
    return fig


def answer_q2(exponents: pd.DataFrame, gaps: pd.DataFrame, configs: pd.DataFrame) -> dict[str, list[str]]:
    """Sentences per dataset: cost exponents of both rules, accuracy per doubling, the gap."""
    out = {}
    scale = as_percent(configs["val_accuracy_mean"]) if len(configs) else 100.0
    unit = "percentage points" if scale == 100.0 else "points"
    for dataset in sorted(set(exponents.get("dataset", [])) | set(gaps.get("dataset", []))):
        e = exponents[exponents["dataset"] == dataset] if len(exponents) else exponents
        parts = []
        for size in SIZES:
            s = e[e["size"] == size] if len(e) else e
            if s.empty:
                continue
            for metric in ("learning_memory_bytes_formula_per_sample", "learning_macs_formula_per_sample",
                           "learning_memory_bytes_measured_per_sample", "time_per_epoch_s"):
                bits = []
                for _, r in s[s["metric"] == metric].iterrows():
                    if np.isfinite(r["estimate"]):
                        bits.append(f"{rule_name(r['rule'])} ∝ {size}^{r['estimate']:.2f} (95% CI {r['ci_lo']:.2f} to "
                                    f"{r['ci_hi']:.2f}; {r['n_points']} configurations)")
                    else:
                        bits.append(f"{rule_name(r['rule'])}: inconclusive ({r['reason']})")
                if bits:
                    parts.append(f"{label(metric)}: " + "; ".join(bits) + ".")
            for _, r in s[s["metric"] == "test_accuracy"].iterrows():
                if np.isfinite(r["estimate"]):
                    parts.append(f"{rule_name(r['rule'])} test accuracy per doubling of {size}: "
                                 f"{scale * r['estimate']:+.2f} {unit} (95% CI {scale * r['ci_lo']:+.2f} to "
                                 f"{scale * r['ci_hi']:+.2f}; {r['n_points']} configurations, {r['n_runs']} runs)"
                                 f"{'' if r['verdict'] != 'inconclusive' else ', inconclusive'}.")
        g = gaps[gaps["dataset"] == dataset] if len(gaps) else gaps
        for _, r in g.iterrows():
            if np.isfinite(r["estimate"]):
                verdict = ("inconclusive" if r["verdict"] == "inconclusive" else
                           ("S-TLLR gains on BPTT as it grows" if r["estimate"] > 0 else "S-TLLR loses ground to BPTT as it grows"))
                parts.append(f"S-TLLR − BPTT gap per doubling of {r['size']}: {scale * r['estimate']:+.2f} {unit} "
                             f"(95% CI {scale * r['ci_lo']:+.2f} to {scale * r['ci_hi']:+.2f}; {r['n_points']} matched "
                             f"architectures, {r['n_runs']} runs): {verdict}.")
            else:
                parts.append(f"S-TLLR − BPTT gap against {r['size']}: inconclusive ({r['reason']}).")
        out[str(dataset)] = parts or ["inconclusive: the study did not vary width, depth or T."]
    return out
