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
from reports._html import byte_unit, mac_unit
from reports._load import DEFAULT_OBJECTIVES, Objective
from reports._measure import ACCURACY, AEE, Measure, measure_of

RULE_STYLE = {"stllr": ("S-TLLR", "#1f77b4", "circle"), "bptt": ("BPTT", "#d62728", "square")}
LABELS = {
    "val_accuracy": "validation accuracy",
    "test_accuracy": "test accuracy",
    "val_aee": "validation AEE",
    "test_aee": "test AEE",
    "test_zero_aee": "no-motion AEE (test)",
    "test_outliers_pct": "test outliers > 3 px (%)",
    "learning_macs_formula_per_sample": "learning MACs / sample (formula)",
    "learning_macs_measured_per_sample": "learning MACs / sample (measured)",
    "learning_memory_bytes_formula_per_sample": "learning memory bytes / sample (formula)",
    "learning_memory_bytes_measured_per_sample": "learning memory bytes / sample (measured)",
    "learning_memory_values_formula_per_sample": "learning memory values / sample (formula)",
    "time_per_epoch_s": "wall time per epoch (s)",
}


def label(metric: str) -> str:
    return LABELS.get(metric, metric.replace("_", " "))


def is_aee(metric: str) -> bool:
    """True for an AEE column (pixels, lower is better)."""
    return metric.endswith("_aee")


def is_score(metric: str) -> bool:
    """True for a column of a study's measure (accuracy or AEE), as against a cost."""
    return "accuracy" in metric or is_aee(metric)


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


def measure_objectives(objectives: tuple[Objective, ...], measure: Measure) -> tuple[Objective, ...]:
    """``objectives`` with the measure's columns: for AEE, an accuracy objective becomes the same split's
    AEE, minimised (a flow study's file may keep the classification defaults); every AEE objective is
    minimised. Unchanged for accuracy.

    >>> [(o.metric, o.direction) for o in measure_objectives(DEFAULT_OBJECTIVES, AEE)][0]
    ('val_aee', 'minimize')
    """
    if measure is ACCURACY:
        return objectives
    out = []
    for o in objectives:
        if "accuracy" in o.metric:
            o = Objective(measure.val_col if o.metric.startswith("val") else measure.test_col, measure.direction)
        elif is_aee(o.metric):
            o = Objective(o.metric, "minimize")
        out.append(o)
    return tuple(dict.fromkeys(out))


def frontier(configs: pd.DataFrame, objectives: tuple[Objective, ...] = DEFAULT_OBJECTIVES,
             measure: Measure | None = None) -> pd.DataFrame:
    """The non-dominated configurations of each dataset over the study's objectives.

    Args:
        configs: :func:`reports._configs.config_table` output (complete runs only).
        objectives: the objectives to rank by (for a flow study, see :func:`measure_objectives`:
            AEE is minimised).
        measure: what the study measures (default: :func:`reports._measure.measure_of` ``configs``).

    Returns:
        One row per frontier point: dataset, rule, config_id, n_seeds, each objective's mean
        and std, the test score's (accuracy or AEE) mean and std, the trial_ids behind it, then its settings.
    """
    measure = measure or measure_of(configs)
    objectives = measure_objectives(objectives, measure)
    metrics = [o.metric for o in objectives]
    lead = ["dataset", "study", "config_id", "rule", "arch_id", "n_seeds"]
    values = [f"{m}_{s}" for m in [*metrics, measure.test_col] for s in ("mean", "std")]
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


def hypervolume_table(configs: pd.DataFrame, objectives: tuple[Objective, ...],
                      measure: Measure | None = None) -> pd.DataFrame:
    """Normalised hypervolume of each dataset's frontier: all configurations, S-TLLR only, BPTT only.

    Each objective is scaled so that the best mean over the dataset's configurations is 0 and
    the worst is 1; the reference point is 1.1 on every axis, and the volume is divided by
    1.1^k so that 1 would be a single point at the ideal. The reference is the same for the
    three rows, so they compare.
    """
    objectives = measure_objectives(objectives, measure or measure_of(configs))
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


#: Costs shown beside every point, whichever the objectives are: both counts of each.
COSTS = ("learning_macs_formula_per_sample", "learning_macs_measured_per_sample",
         "learning_memory_bytes_measured_per_sample", "learning_memory_bytes_formula_per_sample")


def unit_of(metric: str, values: object) -> tuple[float, str]:
    """The factor that puts ``metric`` in units a person reads, and the unit: %, KiB/MiB, M MACs.

    >>> unit_of("val_accuracy", [0.5, 0.9]), unit_of("learning_memory_bytes_measured_per_sample", [34408.5])
    ((100.0, '%'), (0.0009765625, 'KiB'))
    """
    if "accuracy" in metric:
        s = as_percent(values)
        return s, "%" if s == 100.0 else ""
    if is_aee(metric):
        return 1.0, "px"
    if "bytes" in metric:
        div, name = byte_unit(values)
        return 1.0 / div, name
    if "macs" in metric:
        div, name = mac_unit(values)
        return 1.0 / div, name
    return 1.0, ""


def axis_title(metric: str, unit: str) -> str:
    """``label(metric)`` with its unit, e.g. ``learning memory / sample (measured) [KiB]``, or
    ``validation AEE (px), lower is better``."""
    if is_aee(metric):
        return f"{label(metric)} ({unit or 'px'}), lower is better"
    return label(metric).replace("memory bytes", "memory") + (f" [{unit}]" if unit else "")


def _units(df: pd.DataFrame, metrics: list[str] | tuple[str, ...]) -> dict[str, tuple[float, str]]:
    """One unit per metric over the whole figure (so every point of an axis reads alike)."""
    return {m: unit_of(m, df[f"{m}_mean"] if f"{m}_mean" in df else []) for m in metrics}


def _v(r: pd.Series, metric: str, units: dict[str, tuple[float, str]], std: bool = True) -> str:
    f, u = units[metric]
    m, s = r.get(f"{metric}_mean", np.nan), r.get(f"{metric}_std", np.nan)
    m = float(m) if m is not None else np.nan
    s = float(s) if s is not None else np.nan
    if not np.isfinite(m):
        return "–"
    num = "{:.1f}" if u == "%" else "{:.4g}"
    spread = f" ± {(num if u == '%' else '{:.3g}').format(f * s)}" if std and np.isfinite(s) and s > 0 else ""
    return f"{num.format(f * m)}{spread} {u}".rstrip()


def _hover(df: pd.DataFrame, objectives: tuple[Objective, ...], units: dict[str, tuple[float, str]],
           measure: Measure = ACCURACY) -> list[str]:
    """Hover text of each configuration; every user-supplied string is HTML-escaped (plotly renders tags)."""
    out = []
    for _, r in df.iterrows():
        loss = r.get("loss_kind")
        lines = [f"<b>{html.escape(rule_name(r['rule']))}</b> {html.escape(str(r['config_id']))}",
                 f"study {html.escape(str(r['study']))}, arch {html.escape(str(r['arch_id']))}"
                 + (f", objective {html.escape(str(loss))}" if isinstance(loss, str) else "")]
        for o in objectives:
            if o.metric not in COSTS:
                lines.append(f"{label(o.metric)}: {_v(r, o.metric, units)}")
        lines.append(f"{label(measure.test_col)}: {_v(r, measure.test_col, units)}")
        lines.append(f"learning MACs / sample: formula {_v(r, COSTS[0], units, False)}, "
                     f"measured {_v(r, COSTS[1], units, False)}")
        lines.append(f"learning memory / sample: measured {_v(r, COSTS[2], units, False)}, "
                     f"formula {_v(r, COSTS[3], units, False)}")
        lines.append(f"{int(r['n_seeds'])} seed(s): {html.escape(str(r['trial_ids'])[:120])}")
        out.append("<br>".join(lines))
    return out


def _bars(std: pd.Series, scale: float) -> list:
    """Error bar half-lengths; None where the seeds agree exactly (counted costs), so plotly draws no
    zero-length bar. The bars are drawn without caps: a short bar's caps frame a circle as a square,
    BPTT's symbol."""
    v = scale * std.astype(float)
    return [float(x) if np.isfinite(x) and x > 0 else None for x in v]


def _keys(df: pd.DataFrame) -> pd.Series:
    return df["study"].astype(str) + "\x1f" + df["config_id"].astype(str)


def _axis(metric: str, unit: str) -> dict:
    return {"title": {"text": axis_title(metric, unit)}, **({} if is_score(metric) else {"type": "log"})}


def add_floors(fig: go.Figure, floors: dict | None, metric: str, scale: float, axis: str = "y") -> None:
    """Chance and the linear read-out of the task as lines across an accuracy axis (``axis`` "y" or "x").

    The read-out's validation accuracy goes on a validation axis, its test accuracy on a test
    axis. Without floors (an older study) a note says they were not measured. On an AEE axis the
    floor is the no-motion AEE (``floors["no_motion_aee"]``, test split: predicting zero flow).
    """
    if is_aee(metric):
        v = (floors or {}).get("no_motion_aee")
        if v is not None and np.isfinite(float(v)):
            style = {"line": {"color": "#2a7a2a", "dash": "dash", "width": 1.5},
                     "annotation_text": f"no motion (test) {scale * float(v):.3g} px",
                     "annotation_font": {"size": 11, "color": "#2a7a2a"}}
            if axis == "y":
                fig.add_hline(y=scale * float(v), annotation_position="bottom right", **style)
            else:
                fig.add_vline(x=scale * float(v), annotation_position="top left", **style)
        return
    if "accuracy" not in metric:
        return
    if not floors:
        fig.add_annotation(text="floors not measured", xref="paper", yref="paper", x=0.0, y=1.0, xanchor="left",
                           yanchor="bottom", showarrow=False, font={"size": 11, "color": "#777"})
        return
    split = "test" if metric.startswith("test") else "val"
    lines = [("chance", floors.get("chance"), "dot", "#777"),
             (f"linear read-out ({split})", (floors.get("linear_readout") or {}).get(f"{split}_accuracy"),
              "dash", "#2a7a2a")]
    for name, value, dash, color in lines:
        try:
            v = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        if not np.isfinite(v):
            continue
        text = f"{name} {scale * v:.1f}{'%' if scale == 100 else ''}"
        style = {"line": {"color": color, "dash": dash, "width": 1.5}, "annotation_text": text,
                 "annotation_font": {"size": 11, "color": color}}
        if axis == "y":
            fig.add_hline(y=scale * v, annotation_position="bottom right", **style)
        else:
            fig.add_vline(x=scale * v, annotation_position="top left", **style)


def frontier_figure(frontier_df: pd.DataFrame, objectives: tuple[Objective, ...] = DEFAULT_OBJECTIVES,
                    configs: pd.DataFrame | None = None, title: str = "", floors: dict | None = None) -> go.Figure:
    """One dataset's frontier: first objective against the second; the others in the hover text.

    Points are coloured by rule (S-TLLR blue circles, BPTT red squares); frontier points are
    large and outlined with their seeds' standard deviation as error bars, dominated
    configurations (``configs``) small and faint. Axes in %, KiB/MiB and M MACs; the task's
    floors (chance, linear read-out) as horizontal lines. A plain 2-D chart (no WebGL), so it
    renders in any browser and exports to PDF. For a flow study (AEE, lower is better) the floor
    is the no-motion AEE (``floors["no_motion_aee"]``).
    """
    parts = [d for d in (configs, frontier_df) if d is not None and len(d)]
    everything = pd.concat(parts) if parts else frontier_df
    measure = measure_of(everything)
    objectives = measure_objectives(objectives, measure)
    y_obj, x_obj = objectives[0], objectives[min(1, len(objectives) - 1)]
    fig = go.Figure()
    units = _units(everything, list(dict.fromkeys([x_obj.metric, y_obj.metric, *(o.metric for o in objectives),
                                                   measure.test_col, *COSTS])))
    (xs, xu), (ys, yu) = units[x_obj.metric], units[y_obj.metric]
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
            marker: dict = {"symbol": symbol, "color": color, "size": 13 if on else 7, "opacity": 1.0 if on else 0.4,
                            "line": {"width": 1.5 if on else 0, "color": "#000"}}
            fig.add_trace(go.Scatter(
                x=xs * d[f"{x_obj.metric}_mean"].astype(float), y=ys * d[f"{y_obj.metric}_mean"].astype(float),
                mode="markers", name=f"{name} frontier" if on else f"{name} dominated", marker=marker,
                error_y={"array": _bars(d[f"{y_obj.metric}_std"], ys), "visible": on, "color": color, "width": 0},
                error_x={"array": _bars(d[f"{x_obj.metric}_std"], xs), "visible": on, "color": color, "width": 0},
                hovertext=_hover(d, objectives, units, measure), hoverinfo="text"))
    add_floors(fig, floors, y_obj.metric, ys, "y")
    add_floors(fig, floors if is_score(x_obj.metric) else None, x_obj.metric, xs, "x")
    fig.update_layout(title={"text": html.escape(title)}, xaxis=_axis(x_obj.metric, xu), yaxis=_axis(y_obj.metric, yu),
                      height=520, margin={"l": 60, "r": 10, "t": 50, "b": 50},
                      legend={"orientation": "h", "y": -0.18})
    return fig


def projections(configs: pd.DataFrame, objectives: tuple[Objective, ...], measure: Measure | None = None) -> pd.DataFrame:
    """For each pair of objectives, which configurations are non-dominated in that 2-D view.

    Returns one row per (pair, configuration): ``x``/``y`` metric names, their mean and std,
    rule, config_id and ``on_2d_front``; the 3-D frontier flag comes from :func:`frontier`. The
    score (accuracy, or AEE for a flow study) goes on y; beside it the test score
    (``test_accuracy_*`` or ``test_aee_*``, with a ``measure`` column for AEE).
    """
    measure = measure or measure_of(configs)
    objectives = measure_objectives(objectives, measure)
    test = measure.test_col
    extra = {} if measure is ACCURACY else {"measure": measure.name}
    rows = []
    for dataset, g in configs.groupby("dataset", sort=True):
        for a, b in itertools.combinations(objectives, 2):
            up = (a.maximize and not b.maximize) if measure is ACCURACY else (is_score(a.metric) and not is_score(b.metric))
            x, y = (b, a) if up else (a, b)
            sub = g[np.isfinite(g[f"{x.metric}_mean"].astype(float)) & np.isfinite(g[f"{y.metric}_mean"].astype(float))]
            if sub.empty:
                continue
            mask = pareto_mask(_losses(sub, (x, y)))
            for (_, r), m in zip(sub.iterrows(), mask):
                rows.append({"dataset": dataset, "x": x.metric, "y": y.metric, "study": r["study"],
                             "config_id": r["config_id"], "rule": r["rule"], "arch_id": r.get("arch_id"),
                             "loss_kind": r.get("loss_kind"), "n_seeds": r["n_seeds"], "trial_ids": r.get("trial_ids"),
                             "x_mean": r[f"{x.metric}_mean"], "x_std": r[f"{x.metric}_std"],
                             "y_mean": r[f"{y.metric}_mean"], "y_std": r[f"{y.metric}_std"],
                             f"{test}_mean": r[f"{test}_mean"], f"{test}_std": r[f"{test}_std"], **extra,
                             **{f"{c}_mean": r.get(f"{c}_mean", np.nan) for c in COSTS},
                             "on_2d_front": bool(m)})
    return pd.DataFrame(rows)


def projection_figure(proj: pd.DataFrame, x: str, y: str, title: str = "", floors: dict | None = None) -> go.Figure:
    """One 2-D projection: every configuration coloured by rule with seed error bars, its 2-D
    front as a step line, the task's floors across an accuracy axis."""
    d = proj[(proj["x"] == x) & (proj["y"] == y)]
    measure = measure_of(d)
    test = measure.test_col
    fig = go.Figure()
    (xs, xu), (ys, yu) = unit_of(x, d["x_mean"]), unit_of(y, d["y_mean"])
    cols = [c for c in (test, *COSTS) if f"{c}_mean" in d.columns]
    units = {c: unit_of(c, d[f"{c}_mean"]) for c in cols}
    axes = {y: (ys, yu), x: (xs, xu)}
    for rule, (name, color, symbol) in RULE_STYLE.items():
        r = d[d["rule"] == rule]
        if r.empty:
            continue
        text = []
        for _, row in r.iterrows():
            lines = [f"<b>{html.escape(name)}</b> {html.escape(str(row['config_id']))}",
                     f"study {html.escape(str(row['study']))}, arch {html.escape(str(row.get('arch_id')))}",
                     *(f"{label(m)}: {_v(pd.Series({f'{m}_mean': row[f'{k}_mean'], f'{m}_std': row[f'{k}_std']}), m, axes)}"
                       for m, k in ((y, "y"), (x, "x")) if m not in COSTS)]
            if test in units:
                lines.append(f"{label(test)}: {_v(row, test, units)}")
            if all(c in units for c in COSTS):
                lines.append(f"learning MACs / sample: formula {_v(row, COSTS[0], units, False)}, "
                             f"measured {_v(row, COSTS[1], units, False)}")
                lines.append(f"learning memory / sample: measured {_v(row, COSTS[2], units, False)}, "
                             f"formula {_v(row, COSTS[3], units, False)}")
            lines.append(f"{int(row['n_seeds'])} seed(s)")
            text.append("<br>".join(lines))
        fig.add_trace(go.Scatter(x=xs * r["x_mean"].astype(float), y=ys * r["y_mean"].astype(float), mode="markers",
                                 name=name, marker={"color": color, "symbol": symbol, "size": 8},
                                 error_x={"array": _bars(r["x_std"], xs), "color": color, "width": 0},
                                 error_y={"array": _bars(r["y_std"], ys), "color": color, "width": 0},
                                 hovertext=text, hoverinfo="text"))
    front = d[d["on_2d_front"].astype(bool)].sort_values("x_mean")
    if len(front):
        fig.add_trace(go.Scatter(x=xs * front["x_mean"].astype(float), y=ys * front["y_mean"].astype(float),
                                 mode="lines", name="2-D front", line={"shape": "hv", "color": "#444", "dash": "dot"},
                                 hoverinfo="skip"))
    add_floors(fig, floors, y, ys, "y")
    if is_score(x):
        add_floors(fig, floors, x, xs, "x")
    fig.update_layout(title={"text": html.escape(title)}, xaxis=_axis(x, xu), yaxis=_axis(y, yu), height=420,
                      margin={"l": 60, "r": 10, "t": 40, "b": 50})
    return fig
