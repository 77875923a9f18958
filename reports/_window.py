"""The learning window: accuracy and learning MACs against ``learn_steps`` (S-TLLR), BPTT beside.

Learning MACs are also shown as a fraction of BPTT's at the same architecture, which removes
the architecture mix from the average; the closed form of DESIGN §4 is 3·learn_steps / (2T)
(2·learn_steps / (2T) when α_post = 0).
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from reports._configs import as_percent, ranked
from reports._stats import mean_ci
from reports._frontier import RULE_STYLE, label

COLUMNS = ["dataset", "rule", "T", "learn_steps", "n_configs", "n_runs", "val_accuracy_mean", "val_accuracy_ci_lo",
           "val_accuracy_ci_hi", "best_config_id", "best_val_accuracy", "best_test_accuracy",
           "learning_macs_formula_mean", "learning_macs_measured_mean", "mac_fraction_of_bptt",
           "mac_fraction_of_bptt_paper"]


def window_table(configs: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, T, learn_steps): S-TLLR configurations summarised, and BPTT at learn_steps = T.

    ``val_accuracy_mean`` is the mean over configurations with a 95% bootstrap interval;
    ``best_*`` is the configuration with the best validation accuracy at that window, with its
    test accuracy beside; ``mac_fraction_of_bptt`` is the mean over configurations of their
    learning MACs (formula) divided by those of BPTT at the same arch_id.
    """
    if configs.empty:
        return pd.DataFrame(columns=COLUMNS)
    bptt_macs = (configs[configs["rule"] == "bptt"].groupby("arch_id")["learning_macs_formula_per_sample_mean"].mean())
    rows = []
    for (dataset, rule, T, ls), g in configs.groupby(["dataset", "rule", "T", "learn_steps"], sort=True):
        g = g[np.isfinite(g["val_accuracy_mean"].astype(float))]
        if g.empty:
            continue
        m, lo, hi = mean_ci(g["val_accuracy_mean"].to_numpy())
        best = ranked(g).iloc[0]
        ref = g["arch_id"].map(bptt_macs).astype(float)
        frac = (g["learning_macs_formula_per_sample_mean"].astype(float) / ref).to_numpy()
        no_post = (g["alpha_post"].astype(float) == 0).to_numpy()
        paper = 1.0 if rule == "bptt" else float(np.mean(np.where(no_post, 2.0, 3.0) * ls / (2.0 * T)))
        rows.append({"dataset": dataset, "rule": rule, "T": T, "learn_steps": ls, "n_configs": len(g),
                     "n_runs": int(g["n_seeds"].sum()), "val_accuracy_mean": m, "val_accuracy_ci_lo": lo,
                     "val_accuracy_ci_hi": hi, "best_config_id": best["config_id"],
                     "best_val_accuracy": best["val_accuracy_mean"], "best_test_accuracy": best["test_accuracy_mean"],
                     "learning_macs_formula_mean": float(g["learning_macs_formula_per_sample_mean"].mean()),
                     "learning_macs_measured_mean": float(g["learning_macs_measured_per_sample_mean"].mean()),
                     "mac_fraction_of_bptt": float(np.nanmean(frac)) if np.isfinite(frac).any() else np.nan,
                     "mac_fraction_of_bptt_paper": paper})
    return pd.DataFrame(rows, columns=COLUMNS)


def window_figure(table: pd.DataFrame, dataset: str) -> go.Figure:
    """Validation accuracy (mean over configurations, 95% CI; best configuration) and learning MACs against learn_steps."""
    d = table[table["dataset"] == dataset]
    scale = as_percent(d["val_accuracy_mean"]) if len(d) else 100.0
    fig = make_subplots(rows=1, cols=2, subplot_titles=[label("val_accuracy"), "learning MACs as a fraction of BPTT's"])
    for (rule, T), h in d.groupby(["rule", "T"], sort=True):
        name, color, symbol = RULE_STYLE.get(str(rule), (str(rule), "#555", "circle"))
        tag = f"{name}, T {T:g}"
        mode = "lines+markers" if len(h) > 1 else "markers"
        fig.add_trace(go.Scatter(x=h["learn_steps"], y=scale * h["val_accuracy_mean"], mode=mode, name=f"{tag}: mean",
                                 marker={"color": color, "symbol": symbol, "size": 8}, line={"color": color},
                                 error_y={"array": scale * (h["val_accuracy_ci_hi"] - h["val_accuracy_mean"]).fillna(0.0),
                                          "arrayminus": scale * (h["val_accuracy_mean"] - h["val_accuracy_ci_lo"]).fillna(0.0)}),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=h["learn_steps"], y=scale * h["best_val_accuracy"], mode=mode, name=f"{tag}: best",
                                 marker={"color": color, "symbol": f"{symbol}-open", "size": 9},
                                 line={"color": color, "dash": "dot"},
                                 hovertext=[html.escape(str(c)) for c in h["best_config_id"]]), row=1, col=1)
        fig.add_trace(go.Scatter(x=h["learn_steps"], y=h["mac_fraction_of_bptt"], mode=mode, name=f"{tag}: measured",
                                 marker={"color": color, "symbol": symbol, "size": 8}, line={"color": color},
                                 showlegend=False), row=1, col=2)
        if rule == "stllr":
            fig.add_trace(go.Scatter(x=h["learn_steps"], y=h["mac_fraction_of_bptt_paper"], mode="lines",
                                     name=f"3·learn_steps/(2T), T {T:g}", line={"color": "#444", "dash": "dash"}),
                          row=1, col=2)
    fig.update_xaxes(title_text="learn_steps")
    fig.update_yaxes(title_text="validation accuracy" + (" (%)" if scale == 100 else ""), row=1, col=1)
    fig.update_yaxes(title_text="S-TLLR / BPTT learning MACs", row=1, col=2)
    fig.update_layout(title={"text": f"{html.escape(dataset)}: the learning window"}, height=420,
                      margin={"l": 60, "r": 10, "t": 70, "b": 40})
    return fig
