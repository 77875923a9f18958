"""Accuracy-compute-memory frontiers: the non-dominated configurations and their hypervolume.

A configuration is one point at the mean of its seeds; its seeds' standard deviation gives
its error bars. Selection sees the study's objectives only (validation accuracy, never the
test split); test accuracy is shown beside each frontier point.

>>> import numpy as np
>>> pareto_mask(np.array([[1.0, 2.0], [2.0, 1.0], [2.0, 2.0]])).tolist()
[True, True, False]
>>> hypervolume(np.array([[1.0, 2.0], [2.0, 1.0]]), np.array([3.0, 3.0]))
3.0
"""

from __future__ import annotations

import html
import itertools

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from reports._configs import as_percent
from reports._load import DEFAULT_OBJECTIVES, Objective

RULE_STYLE = {"stllr": ("S-TLLR", "#1f77b4", "circle"), "bptt": ("BPTT", "#d62728", "square")}
LABELS = {
    "val_accuracy": "validation accuracy",
    "test_accuracy": "test accuracy",
    "learning_macs_formula_per_sample": "learning MACs / sample (formula)",
    "learning_macs_measured_per_sample": "learning MACs / sample (measured)",
    "learning_memory_bytes_formula_per_sample": "learning memory bytes / sample (formula)",
    "learning_memory_bytes_measured_per_sample": "learning memory bytes / sample (measured)",
    "learning_memory_values_formula_per_sample": "learning memory values / sample (formula)",
    "time_per_epoch_s": "wall time per epoch (s)",
}


def label(metric: str) -> str:
    return LABELS.get(metric, metric.replace("_", " "))


def rule_name(rule: object) -> str:
    return RULE_STYLE.get(str(rule), (str(rule), "", ""))[0]


def _losses(df: pd.DataFrame, objectives: tuple[Objective, ...]) -> np.ndarray:
    """Objective means as losses (maximised objectives negated), shape [n, k]."""
    cols = [(-1.0 if o.maximize else 1.0) * df[f"{o.metric}_mean"].astype(float).to_numpy() for o in objectives]
    return np.column_stack(cols) if cols else np.zeros((len(df), 0))


def pareto_mask(losses: np.ndarray) -> np.ndarray:
    """True for points no other point dominates (all objectives minimised; duplicates all kept)."""
    n = len(losses)
    keep = np.ones(n, dtype=bool)
    for i in range(n):
        le = np.all(losses <= losses[i], axis=1)
        lt = np.any(losses < losses[i], axis=1)
        keep[i] = not np.any(le & lt)
    return keep


def hypervolume(losses: np.ndarray, reference: np.ndarray) -> float:
    """Exact volume dominated by ``losses`` and bounded by ``reference`` (minimisation).

    Slices along the last objective and recurses, so it is exact in any dimension; frontier
    sizes of a sweep (hundreds of points) keep it fast.
    """
    losses = np.asarray(losses, dtype=float)
    reference = np.asarray(reference, dtype=float)
    if losses.size == 0:
        return 0.0
    losses = losses[np.all(losses <= reference, axis=1)]
    if len(losses) == 0:
        return 0.0
    losses = losses[pareto_mask(losses)]
    if losses.shape[1] == 1:
        return float(reference[0] - losses[:, 0].min())
    order = np.argsort(losses[:, -1], kind="stable")
    pts = losses[order]
    volume = 0.0
    for k in range(len(pts)):
        upper = pts[k + 1, -1] if k + 1 < len(pts) else reference[-1]
        height = upper - pts[k, -1]
        if height > 0:
            volume += height * hypervolume(pts[: k + 1, :-1], reference[:-1])
    return float(volume)


def frontier(configs: pd.DataFrame, objectives: tuple[Objective, ...] = DEFAULT_OBJECTIVES) -> pd.DataFrame:
    """The non-dominated configurations of each dataset over the study's objectives.

    Args:
        configs: :func:`reports._configs.config_table` output (complete runs only).
        objectives: the objectives to rank by.

    Returns:
        One row per frontier point: dataset, rule, config_id, n_seeds, each objective's mean
        and std, test accuracy mean and std, the trial_ids behind it, then its settings.
    """
    metrics = [o.metric for o in objectives]
    lead = ["dataset", "study", "config_id", "rule", "arch_id", "n_seeds"]
    values = [f"{m}_{s}" for m in [*metrics, "test_accuracy"] for s in ("mean", "std")]
    values = list(dict.fromkeys(values))
    rest = [c for c in configs.columns if c not in lead + values]
    cols = lead + values + rest
    parts = []
    for _, g in configs.groupby("dataset", sort=True):
        g = g[np.all(np.isfinite(_losses(g, objectives)), axis=1)]
        if g.empty:
            continue
        parts.append(g[pareto_mask(_losses(g, objectives))])
    if not parts:
        return pd.DataFrame(columns=cols)
    out = pd.concat(parts)[cols]
    first = f"{metrics[0]}_mean"
    return out.sort_values(["dataset", first], ascending=[True, not objectives[0].maximize]).reset_index(drop=True)


def hypervolume_table(configs: pd.DataFrame, objectives: tuple[Objective, ...]) -> pd.DataFrame:
    """Normalised hypervolume of each dataset's frontier: all configurations, S-TLLR only, BPTT only.

    Each objective is scaled so that the best mean over the dataset's configurations is 0 and
    the worst is 1; the reference point is 1.1 on every axis, and the volume is divided by
    1.1^k so that 1 would be a single point at the ideal. The reference is the same for the
    three rows, so they compare.
    """
    rows = []
    for dataset, g in configs.groupby("dataset", sort=True):
        losses = _losses(g, objectives)
        ok = np.all(np.isfinite(losses), axis=1)
        g, losses = g[ok], losses[ok]
        if g.empty:
            continue
        ideal, nadir = losses.min(axis=0), losses.max(axis=0)
        span = np.where(nadir > ideal, nadir - ideal, 1.0)
        ref = np.full(len(objectives), 1.1)
        for which in ("all", "stllr", "bptt"):
            sel = np.ones(len(g), bool) if which == "all" else (g["rule"] == which).to_numpy()
            scaled = (losses[sel] - ideal) / span
            row = {"dataset": dataset, "rules": which, "configurations": int(sel.sum()),
                   "frontier_points": int(pareto_mask(losses[sel]).sum()) if sel.any() else 0,
                   "hypervolume_normalised": hypervolume(scaled, ref) / float(np.prod(ref))}
            for o, r in zip(objectives, ideal + 1.1 * span):
                row[f"reference_{o.metric}"] = -r if o.maximize else r
            rows.append(row)
    return pd.DataFrame(rows)


def _hover(df: pd.DataFrame, objectives: tuple[Objective, ...], scale: float) -> list[str]:
    out = []
    for _, r in df.iterrows():
        lines = [f"<b>{html.escape(rule_name(r['rule']))}</b> {html.escape(str(r['config_id']))}",
                 f"study {html.escape(str(r['study']))}, arch {html.escape(str(r['arch_id']))}"]
        for o in objectives:
            lines.append(f"{label(o.metric)}: {r[f'{o.metric}_mean']:.4g} ± {r[f'{o.metric}_std']:.2g}")
        lines.append(f"test accuracy: {scale * r['test_accuracy_mean']:.2f} ± {scale * r['test_accuracy_std']:.2f}")
        lines.append(f"{int(r['n_seeds'])} seed(s): {html.escape(str(r['trial_ids']))[:120]}")
        out.append("<br>".join(lines))
    return out


def _keys(df: pd.DataFrame) -> pd.Series:
    return df["study"].astype(str) + "\x1f" + df["config_id"].astype(str)


def _axis(metric: str) -> dict:
    return {"title": {"text": label(metric)}, **({} if "accuracy" in metric else {"type": "log"})}


def frontier_figure(frontier_df: pd.DataFrame, objectives: tuple[Objective, ...] = DEFAULT_OBJECTIVES,
                    configs: pd.DataFrame | None = None, title: str = "") -> go.Figure:
    """One dataset's frontier: first objective against the second, the third as colour.

    S-TLLR and BPTT differ by symbol; frontier points are large and outlined with their
    seeds' standard deviation as error bars, dominated configurations (``configs``) faint.
    A plain 2-D chart (no WebGL), so it renders in any browser and exports to PDF.
    """
    y_obj, x_obj = objectives[0], objectives[min(1, len(objectives) - 1)]
    c_obj = objectives[2] if len(objectives) > 2 else None
    fig = go.Figure()
    scale = as_percent(frontier_df["test_accuracy_mean"]) if "test_accuracy_mean" in frontier_df else 100.0
    everything = pd.concat([d for d in (configs, frontier_df) if d is not None and len(d)]) if len(frontier_df) else frontier_df
    cvals = np.log10(everything[f"{c_obj.metric}_mean"].astype(float)) if c_obj is not None and len(everything) else None
    cmin, cmax = (float(np.nanmin(cvals)), float(np.nanmax(cvals))) if cvals is not None and np.isfinite(cvals).any() else (0.0, 1.0)
    for on in (False, True):
        for rule, (name, color, symbol) in RULE_STYLE.items():
            df = frontier_df if on else configs
            if df is None:
                continue
            d = df[df["rule"] == rule]
            if not on:
                d = d[~_keys(d).isin(set(_keys(frontier_df)))]
            if d.empty:
                continue
            marker: dict = {"symbol": symbol, "size": 12 if on else 6, "opacity": 1.0 if on else 0.35,
                            "line": {"width": 1.5 if on else 0, "color": "#000"}}
            if c_obj is not None:
                marker.update(color=np.log10(d[f"{c_obj.metric}_mean"].astype(float)), colorscale="Viridis",
                              cmin=cmin, cmax=cmax, showscale=on and rule == "stllr",
                              colorbar={"title": {"text": "log10 " + label(c_obj.metric)}})
            else:
                marker["color"] = color
            fig.add_trace(go.Scatter(
                x=d[f"{x_obj.metric}_mean"], y=d[f"{y_obj.metric}_mean"], mode="markers",
                name=f"{name} frontier" if on else f"{name} dominated", marker=marker,
                error_y={"array": d[f"{y_obj.metric}_std"].fillna(0.0), "visible": on, "color": color},
                error_x={"array": d[f"{x_obj.metric}_std"].fillna(0.0), "visible": on, "color": color},
                hovertext=_hover(d, objectives, scale), hoverinfo="text"))
    fig.update_layout(title={"text": html.escape(title)}, xaxis=_axis(x_obj.metric), yaxis=_axis(y_obj.metric),
                      height=520, margin={"l": 60, "r": 10, "t": 50, "b": 50},
                      legend={"orientation": "h", "y": -0.18})
    return fig


def projections(configs: pd.DataFrame, objectives: tuple[Objective, ...]) -> pd.DataFrame:
    """For each pair of objectives, which configurations are non-dominated in that 2-D view.

    Returns one row per (pair, configuration): ``x``/``y`` metric names, their mean and std,
    rule, config_id and ``on_2d_front``; the 3-D frontier flag comes from :func:`frontier`.
    """
    rows = []
    for dataset, g in configs.groupby("dataset", sort=True):
        for a, b in itertools.combinations(objectives, 2):
            x, y = (b, a) if a.maximize and not b.maximize else (a, b)
            sub = g[np.isfinite(g[f"{x.metric}_mean"].astype(float)) & np.isfinite(g[f"{y.metric}_mean"].astype(float))]
            if sub.empty:
                continue
            mask = pareto_mask(_losses(sub, (x, y)))
            for (_, r), m in zip(sub.iterrows(), mask):
                rows.append({"dataset": dataset, "x": x.metric, "y": y.metric, "study": r["study"],
                             "config_id": r["config_id"], "rule": r["rule"], "n_seeds": r["n_seeds"],
                             "x_mean": r[f"{x.metric}_mean"], "x_std": r[f"{x.metric}_std"],
                             "y_mean": r[f"{y.metric}_mean"], "y_std": r[f"{y.metric}_std"],
                             "test_accuracy_mean": r["test_accuracy_mean"], "test_accuracy_std": r["test_accuracy_std"],
                             "on_2d_front": bool(m)})
    return pd.DataFrame(rows)


def projection_figure(proj: pd.DataFrame, x: str, y: str, title: str = "") -> go.Figure:
    """One 2-D projection: every configuration with seed error bars, its 2-D front as a step line."""
    d = proj[(proj["x"] == x) & (proj["y"] == y)]
    fig = go.Figure()
    scale = as_percent(d["test_accuracy_mean"]) if len(d) else 100.0
    for rule, (name, color, symbol) in RULE_STYLE.items():
        r = d[d["rule"] == rule]
        if r.empty:
            continue
        text = [f"{html.escape(name)} {html.escape(str(c))} ({html.escape(str(s))})<br>test accuracy "
                f"{scale * t:.2f} ± {scale * ts:.2f}, {int(n)} seed(s)"
                for c, s, t, ts, n in zip(r["config_id"], r["study"], r["test_accuracy_mean"],
                                          r["test_accuracy_std"].fillna(0.0), r["n_seeds"])]
        fig.add_trace(go.Scatter(x=r["x_mean"], y=r["y_mean"], mode="markers", name=name,
                                 marker={"color": color, "symbol": symbol, "size": 7},
                                 error_x={"array": r["x_std"].fillna(0.0)}, error_y={"array": r["y_std"].fillna(0.0)},
                                 hovertext=text, hoverinfo="text"))
    front = d[d["on_2d_front"]].sort_values("x_mean")
    if len(front):
        fig.add_trace(go.Scatter(x=front["x_mean"], y=front["y_mean"], mode="lines", name="2-D front",
                                 line={"shape": "hv", "color": "#444", "dash": "dot"}, hoverinfo="skip"))
    fig.update_layout(title={"text": html.escape(title)}, xaxis=_axis(x), yaxis=_axis(y), height=420,
                      margin={"l": 60, "r": 10, "t": 40, "b": 50})
    return fig
