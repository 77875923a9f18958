"""Open question 2: how S-TLLR scales with width, depth and T compared with BPTT.

The answer the report prints comes from :func:`q2_analysis` and :func:`q2_items` (DESIGN §8):

* **The accuracy gap per window.** S-TLLR − BPTT test accuracy per architecture and learning
  window (learn_steps / T): BPTT's best configuration (the matched table's) against S-TLLR's
  best *with that window*, both chosen by validation accuracy (:func:`window_gaps`). Its slope
  per doubling of each size is taken within one window and one value of the other sizes,
  never pooled over windows (a window's gap can fall with depth while another's is flat).
  The architectures are design points and the seeds the noise: each resample draws every
  gap from its seed standard error with Welch's degrees of freedom (Student t) and refits the
  slope; each slope is a :class:`~reports._claims.Claim` for the report's Holm correction.
* **Cost exponents from the formulas.** Learning memory and MACs are deterministic formulas
  (DESIGN §4, :func:`stllr_engine.costs.formula_costs`): their exponents in width, depth, T
  and learn_steps are stated from those formulas (:data:`FORMULA_POWERS`: memory ∝ T·N for
  BPTT and 2·N for S-TLLR; MACs = a·width + b·width², → width² for wide layers; affine in
  depth, → depth for deep networks; BPTT ∝ T, S-TLLR ∝ learn_steps and flat in T) and
  checked against the study's formula columns: the local exponent between neighbouring sizes
  and whether each column is exactly that sum of powers. Nothing is fitted across
  architectures.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from reports._claims import N_BOOT, Claim, bootstrap_p
from reports._matched import loss_of
from reports._configs import as_percent, ranked, seed_values
from reports._html import Bullets, Figure, Table, Text
from reports._stats import percentile_interval
from reports._frontier import rule_name

SIZES = ("width", "depth", "T")


def _varied(df: pd.DataFrame, cols: tuple[str, ...] | list[str]) -> list[str]:
    return [c for c in cols if df[c].astype(float).dropna().nunique() >= 2]


# ---- Q2 with its structure: per window, per architecture slice; cost exponents from the formulas ----------------

#: Exponent of a formula cost in a size, from DESIGN §4 (see :func:`stllr_engine.costs.formula_costs`):
#: (rule, cost, size) → (powers of the size in the formula, why). The cost is a sum of these powers of the
#: size with non-negative coefficients, so its exponent is the largest power for large sizes, and exactly it
#: when there is one power.
FORMULA_POWERS: dict[tuple[str, str, str], tuple[tuple[float, ...], str]] = {
    ("bptt", "memory", "width"): ((1,), "T·N values, N = neurons ∝ width"),
    ("bptt", "memory", "depth"): ((1,), "T·N values, N = width·depth (mlp, rsnn)"),
    ("bptt", "memory", "T"): ((1,), "T·N values: every step is kept"),
    ("stllr", "memory", "width"): ((1,), "2·N trace values, N ∝ width"),
    ("stllr", "memory", "depth"): ((1,), "2·N trace values, N = width·depth (mlp, rsnn)"),
    ("stllr", "memory", "T"): ((0,), "2·N trace values, whatever T"),
    ("stllr", "memory", "learn_steps"): ((0,), "2·N trace values, whatever the window"),
    ("bptt", "macs", "width"): ((1, 2), "2T·S = a·width + b·width²: input and readout synapses ∝ width, "
                                        "hidden-to-hidden and recurrent ones ∝ width²"),
    ("bptt", "macs", "depth"): ((0, 1), "2T·S = a + b·depth: every layer after the first adds the same synapses"),
    ("bptt", "macs", "T"): ((1,), "2T·S: the backward pass runs over all T steps"),
    ("stllr", "macs", "width"): ((1, 2), "(3|2)·learn_steps·S_hidden + 2·learn_steps·S_readout = a·width + "
                                         "b·width²"),
    ("stllr", "macs", "depth"): ((0, 1), "(3|2)·learn_steps·S_hidden + … = a + b·depth: every layer after the "
                                         "first adds the same synapses"),
    ("stllr", "macs", "T"): ((0,), "learns over learn_steps steps only, whatever T"),
    ("stllr", "macs", "learn_steps"): ((1,), "(3|2)·learn_steps·S_hidden + 2·learn_steps·S_readout"),
}
_COST_COLUMNS = {"memory": "learning_memory_bytes_{}_per_sample_mean", "macs": "learning_macs_{}_per_sample_mean"}
_COST_WORDS = {"memory": "Learning memory", "macs": "Learning MACs"}


@dataclass
class Q2Result:
    """What :func:`q2_analysis` found, before any sentence is written.

    Attributes:
        n_boot: resamples behind every interval and p-value.
        claims: one :class:`~reports._claims.Claim` per slope of the S-TLLR − BPTT gap, keyed
            ``q2:{dataset}:gap~{size}|window={learn_steps/T}[,{other size}={value}...]``: always
            within one window and one value of the other sizes (never pooled).
        tables: ``q2_gap_by_window.csv`` (the gap per architecture and window),
            ``q2_gap_slopes.csv`` (the slopes), ``q2_cost_exponents.csv`` (exponents stated from
            the formulas and checked against the formula columns).
        figures / figure_csv: the gap against each varied size, one panel per window.
    """

    n_boot: int
    claims: list[Claim] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, go.Figure] = field(default_factory=dict)
    figure_csv: dict[str, str] = field(default_factory=dict)


def _welch_df(s1: float, n1: float, s2: float, n2: float) -> float:
    a, b = s1**2 / n1, s2**2 / n2
    den = (a**2 / (n1 - 1) if n1 > 1 else np.inf) + (b**2 / (n2 - 1) if n2 > 1 else np.inf)
    return float((a + b) ** 2 / den) if den > 0 and np.isfinite(den) else np.nan


def own_objective(stllr: pd.DataFrame) -> pd.DataFrame:
    """S-TLLR's configurations on its own objective, ``per_step``: on CE(Σ_t o[t]) it holds its
    window (another memory formula) and learns another objective, so Q2 leaves those out."""
    if stllr.empty or "loss_kind" not in stllr.columns:
        return stllr
    return stllr[[loss_of(r) == "per_step" for _, r in stllr.iterrows()]]


def window_gaps(configs: pd.DataFrame, matched: pd.DataFrame) -> pd.DataFrame:
    """S-TLLR − BPTT test accuracy per (dataset, architecture, learn_steps, BPTT objective).

    BPTT is the matched table's (its best configuration by validation accuracy, per objective
    ``bptt_loss_kind`` when the table has several); S-TLLR is the best configuration *with that
    learn_steps* by validation accuracy, on its own objective (``per_step``) and out of its
    factor search where the study has one (the equal tuning ran at the chosen window only), so
    each window is compared on its own and alike. ``window`` =
    learn_steps / T. The gap is paired by seed where both configurations ran two or more of the
    same seeds (``test_accuracy_by_seed``; seed s of both rules shares split, order and
    initialisation): ``gap`` the mean difference, ``gap_se`` its standard error, ``gap_df`` =
    pairs − 1. Otherwise the difference of the means, with Welch's standard error and degrees
    of freedom.
    """
    cols = ["dataset", "arch_id", "width", "depth", "T", "learn_steps", "window", "bptt_loss_kind", "stllr_config_id",
            "bptt_config_id", "stllr_test_accuracy_mean", "stllr_test_accuracy_std", "stllr_seeds",
            "bptt_test_accuracy_mean", "bptt_test_accuracy_std", "bptt_seeds", "n_pairs", "gap", "gap_se", "gap_df"]
    if matched.empty or configs.empty:
        return pd.DataFrame(columns=cols)
    s = own_objective(configs[configs["rule"] == "stllr"])
    if "role" in s.columns and (s["role"] == "search").any():
        # every window as the factor search trained it: the equal tuning's extra learning-rate
        # trials ran at the chosen window only, and would favour it
        s = s[s["role"] == "search"]
    s = ranked(s).groupby(["dataset", "arch_id", "learn_steps"], sort=True).head(1)
    m = matched.copy()
    if "bptt_loss_kind" not in m.columns:
        m["bptt_loss_kind"] = "default"
    m = m[["dataset", "arch_id", "bptt_loss_kind", "bptt_config_id", "bptt_test_accuracy_mean",
           "bptt_test_accuracy_std", "bptt_seeds"]]
    d = s.merge(m, on=["dataset", "arch_id"], how="inner")
    if d.empty:
        return pd.DataFrame(columns=cols)
    d = d.rename(columns={"config_id": "stllr_config_id", "test_accuracy_mean": "stllr_test_accuracy_mean",
                          "test_accuracy_std": "stllr_test_accuracy_std", "n_seeds": "stllr_seeds"})
    d["window"] = d["learn_steps"].astype(float) / d["T"].astype(float)
    by_seed = _by_seed(configs)
    stats = [_gap(r, by_seed) for _, r in d.iterrows()]
    d["n_pairs"], d["gap"], d["gap_se"], d["gap_df"] = zip(*stats) if stats else ([], [], [], [])
    return d[cols].sort_values(["dataset", "bptt_loss_kind", "window", "depth", "width", "T"]).reset_index(drop=True)


def _by_seed(configs: pd.DataFrame) -> dict[tuple[str, str], dict[int, float]]:
    """(dataset, config_id) → {seed: test accuracy}; a config_id that two studies share is left out."""
    if "test_accuracy_by_seed" not in configs.columns:
        return {}
    keys = list(zip(configs["dataset"].astype(str), configs["config_id"].astype(str)))
    seen = pd.Series(keys).value_counts()
    return {k: seed_values(v) for k, v in zip(keys, configs["test_accuracy_by_seed"]) if seen[k] == 1}


def _gap(r: pd.Series, by_seed: dict[tuple[str, str], dict[int, float]]) -> tuple[int, float, float, float]:
    """(pairs, gap, its standard error, degrees of freedom) of one architecture and window."""
    sv = by_seed.get((str(r["dataset"]), str(r["stllr_config_id"])), {})
    bv = by_seed.get((str(r["dataset"]), str(r["bptt_config_id"])), {})
    diffs = np.array([sv[k] - bv[k] for k in sorted(set(sv) & set(bv))], dtype=float)
    diffs = diffs[np.isfinite(diffs)]
    if diffs.size >= 2:
        return diffs.size, float(diffs.mean()), float(diffs.std(ddof=1) / np.sqrt(diffs.size)), float(diffs.size - 1)
    s1, n1, s2, n2 = (float(r["stllr_test_accuracy_std"]), float(r["stllr_seeds"]),
                      float(r["bptt_test_accuracy_std"]), float(r["bptt_seeds"]))
    gap = float(r["stllr_test_accuracy_mean"] - r["bptt_test_accuracy_mean"])
    return int(diffs.size), gap, float(np.sqrt(s1**2 / n1 + s2**2 / n2)), _welch_df(s1, n1, s2, n2)


def gap_slopes(gaps: pd.DataFrame, *, n_boot: int = N_BOOT, seed: int = 0) -> tuple[pd.DataFrame, list[Claim]]:
    """Slope of the gap per doubling of each varied size, within each window and each value of the other sizes.

    The architectures are design points and the seeds the noise: resample ``b`` draws every
    architecture's gap as ``gap + gap_se · t_df`` (its Welch degrees of freedom) and refits the
    slope. An architecture with one seed per rule takes the dataset's root-mean-square
    ``gap_se``; with none, the slope has no interval and makes no claim.
    """
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    claims: list[Claim] = []
    for dataset, g in (gaps.groupby("dataset", sort=True) if len(gaps) else []):
        se_all = g["gap_se"].astype(float)
        rms = float(np.sqrt(np.mean(se_all[np.isfinite(se_all)] ** 2))) if np.isfinite(se_all).any() else np.nan
        sizes = _varied(g, SIZES)
        objectives = g["bptt_loss_kind"].nunique() > 1 if "bptt_loss_kind" in g.columns else False
        for size in sizes:
            others = [s for s in sizes if s != size]
            for key, h in g.groupby(["window", *others, *(["bptt_loss_kind"] if objectives else [])], sort=True):
                key = key if isinstance(key, tuple) else (key,)
                where: dict = dict(zip(["window", *others], (float(k) for k in key)))
                if objectives:
                    where["bptt"] = str(key[-1])
                x = np.log2(h[size].astype(float).to_numpy())
                y = h["gap"].astype(float).to_numpy()
                row = {"dataset": dataset, "size": size, **where, "learn_steps": ";".join(
                    f"{v:g}" for v in sorted(h["learn_steps"].unique())), "sizes": ";".join(
                    f"{v:g}" for v in sorted(h[size].unique())), "n_points": len(h),
                    "n_runs": int(h["stllr_seeds"].sum() + h["bptt_seeds"].sum()), "n_boot": n_boot}
                if len(np.unique(x)) < 2:
                    continue
                u = (x - x.mean()) / np.sum((x - x.mean()) ** 2)
                est = float(u @ y)
                se = h["gap_se"].astype(float).to_numpy()
                df = h["gap_df"].astype(float).to_numpy()
                se = np.where(np.isfinite(se) & (se > 0), se, rms)
                if not np.all(np.isfinite(se)):
                    rows.append({**row, "estimate": est, "ci_lo": np.nan, "ci_hi": np.nan, "p": np.nan, "key": "",
                                 "reason": "one seed per rule: no noise estimate"})
                    continue
                df = np.where(np.isfinite(df) & (df > 0), df, np.inf)
                noise = np.where(np.isfinite(df), rng.standard_t(np.where(np.isfinite(df), df, 1.0), (n_boot, len(y))),
                                 rng.standard_normal((n_boot, len(y))))
                boots = (y + se * noise) @ u
                cond = ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in where.items())
                text = (f"S-TLLR {'gains on' if est > 0 else 'loses ground to'} BPTT as {size} grows "
                        f"(learn_steps/T = {where['window']:g}" + "".join(
                            f", {k} {v:g}" if isinstance(v, float) else f", BPTT objective {v}"
                            for k, v in where.items() if k != "window") + ")")
                lo, hi = percentile_interval(boots[:, None])
                claim = Claim(f"q2:{dataset}:gap~{size}|{cond}", text, est, float(lo[0]), float(hi[0]),
                              bootstrap_p(boots), extra={"n_boot": n_boot, "dataset": dataset, "size": size, **where})
                claims.append(claim)
                rows.append({**row, "estimate": est, "ci_lo": claim.low, "ci_hi": claim.high, "p": claim.p,
                             "key": claim.key, "reason": ""})
    return pd.DataFrame(rows), claims


def cost_exponents(configs: pd.DataFrame) -> pd.DataFrame:
    """Exponents of learning memory and MACs in width, depth, T and learn_steps, stated from the formulas.

    ``exponent`` is the largest power of the size in the formula (:data:`FORMULA_POWERS`); ``exact``
    when it is the only one (then it holds at every size), else it is the limit for large sizes.
    It is checked against the study's own formula columns, never fitted across architectures:
    ``local_min`` / ``local_max`` are the exponents between neighbouring sizes with every other
    cost setting equal, and ``check`` says whether, at equal other settings, the formula column
    is exactly a sum of those powers with a positive leading coefficient ("agrees" /
    "DIFFERS"; "too few sizes" when there are no more sizes than powers). ``measured_min`` /
    ``measured_max`` are the local exponents of the measured columns (window mode keeps its
    records, so its measured memory grows with learn_steps where the formula's does not).
    """
    rows: list[dict] = []
    if configs.empty:
        return pd.DataFrame(rows)
    c = pd.concat([configs[configs["rule"] != "stllr"], own_objective(configs[configs["rule"] == "stllr"])])
    c["_no_post"] = c["alpha_post"].astype(float).fillna(1.0) == 0.0
    for (dataset, rule, model), g in c.groupby(["dataset", "rule", "model"], sort=True):
        for size in (*SIZES, "learn_steps"):
            if (size == "learn_steps" and rule != "stllr") or g[size].astype(float).nunique() < 2:
                continue
            keys = [k for k in ("width", "depth", "T", "learn_steps", "_no_post") if k != size
                    and not (rule == "bptt" and k == "learn_steps")]
            for cost in ("memory", "macs"):
                powers, why = FORMULA_POWERS.get((str(rule), cost, size), ((), "no formula"))
                if size == "depth" and model == "vgg":
                    powers, why = (), "vgg: depth adds pooling stages, not a power law"
                curves = {k: _curves(g, keys, size, _COST_COLUMNS[cost].format(k)) for k in ("formula", "measured")}
                lo, hi = _local(curves["formula"])
                rows.append({"dataset": dataset, "rule": rule, "model": model, "cost": cost, "size": size,
                             "exponent": float(max(powers)) if powers else np.nan, "exact": len(powers) == 1,
                             "powers": ", ".join(f"{p:g}" for p in powers), "formula": why, "local_min": lo,
                             "local_max": hi, "measured_min": _local(curves["measured"])[0],
                             "measured_max": _local(curves["measured"])[1],
                             "sizes": ";".join(f"{v:g}" for v in sorted(g[size].astype(float).dropna().unique())),
                             "check": _check(curves["formula"], powers)})
    return pd.DataFrame(rows)


def _curves(g: pd.DataFrame, keys: list[str], size: str, col: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(sizes, cost) at each combination of the other cost settings, sizes ascending."""
    if col not in g.columns:
        return []
    d = g[keys + [size]].astype(float).assign(_y=g[col].astype(float))
    d = d[np.isfinite(d["_y"]) & (d["_y"] > 0)]
    d = d.groupby(keys + [size], sort=True)["_y"].mean().reset_index()
    out = []
    for _, h in (d.groupby(keys, sort=True) if keys else [((), d)]):
        if len(h) >= 2:
            out.append((h[size].to_numpy(), h["_y"].to_numpy()))
    return out


def _local(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """Smallest and largest exponent between neighbouring sizes."""
    e = [v for x, y in curves for v in np.diff(np.log(y)) / np.diff(np.log(x))]
    return (float(min(e)), float(max(e))) if e else (np.nan, np.nan)


def _check(curves: list[tuple[np.ndarray, np.ndarray]], powers: tuple[float, ...]) -> str:
    """Is every curve exactly Σ c_k · size^k over ``powers``, with c_last > 0 (or constant for power 0)?"""
    if not powers:
        return "no stated exponent"
    tested = [(x, y) for x, y in curves if len(x) > len(powers)]
    if not tested:
        return "too few sizes"
    for x, y in tested:
        X = np.column_stack([x**p for p in powers])
        coef = np.linalg.lstsq(X, y, rcond=None)[0]
        if np.max(np.abs(X @ coef - y)) > 1e-9 * np.max(np.abs(y)) or (max(powers) > 0 and coef[-1] <= 0):
            return "DIFFERS"
    return "agrees"


def q2_analysis(configs: pd.DataFrame, matched: pd.DataFrame, *, n_boot: int = N_BOOT, seed: int = 0) -> Q2Result:
    """Open question 2 per window: the gap's slopes in each size within one window and one value of the
    other sizes (:func:`gap_slopes`), and cost exponents from the formulas (:func:`cost_exponents`).

    Args:
        configs: :func:`reports._configs.config_table` rows.
        matched: :func:`reports._matched.matched_table` of the same configurations.
        n_boot: resamples per slope (10,000 by default).
        seed: of the resamples.
    """
    result = Q2Result(n_boot)
    gaps = window_gaps(configs, matched)
    slopes, result.claims = gap_slopes(gaps, n_boot=n_boot, seed=seed)
    result.tables = {"q2_gap_by_window.csv": gaps, "q2_gap_slopes.csv": slopes,
                     "q2_cost_exponents.csv": cost_exponents(configs)}
    for dataset in (sorted(gaps["dataset"].unique()) if len(gaps) else []):
        g = gaps[gaps["dataset"] == dataset]
        for size in _varied(g, SIZES):
            name = f"q2_gap_{size}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', str(dataset))}"
            result.figures[name] = window_gap_figure(gaps, str(dataset), size)
            result.figure_csv[name] = "q2_gap_by_window.csv"
    return result


def window_gap_figure(gaps: pd.DataFrame, dataset: str, x: str = "width") -> go.Figure:
    """S-TLLR − BPTT test accuracy against one size, one panel per window (learn_steps / T), ± its standard error."""
    d = gaps[gaps["dataset"] == dataset]
    windows = sorted(d["window"].unique())
    fig = make_subplots(rows=1, cols=len(windows), shared_yaxes=True,
                        subplot_titles=[f"learn_steps/T = {w:g}" for w in windows])
    scale = as_percent(d[["stllr_test_accuracy_mean", "bptt_test_accuracy_mean"]].to_numpy())
    others = [s for s in SIZES if s != x and d[s].nunique() > 1]
    for k, w in enumerate(windows):
        h = d[d["window"] == w]
        for key, line in (h.groupby(others, sort=True) if others else [((), h)]):
            key = key if isinstance(key, tuple) else (key,)
            tag = ", ".join(f"{s} {v:g}" for s, v in zip(others, key)) or "all"
            line = line.sort_values(x)
            fig.add_trace(go.Scatter(x=line[x], y=scale * line["gap"], error_y={"array": scale * line["gap_se"].fillna(0.0)},
                                     mode="lines+markers", name=tag, legendgroup=tag, showlegend=k == 0),
                          row=1, col=k + 1)
    fig.update_xaxes(title_text=x, type="log")
    fig.update_yaxes(zeroline=True, zerolinecolor="#888")
    fig.update_yaxes(title_text="S-TLLR − BPTT test accuracy" + (" (points)" if scale == 100 else ""), col=1)
    fig.update_layout(title={"text": f"{html.escape(dataset)}: the gap against {x}, per learning window"},
                      height=420, margin={"l": 60, "r": 10, "t": 80, "b": 40})
    return fig


def q2_items(result: Q2Result) -> list:
    """Page items of open question 2: per dataset, cost exponents (stated) and the gap's slopes per window.

    Call after :func:`~reports._claims.holm`: a slope is given a direction only when its claim
    holds at the corrected level. Also writes ``p_adj`` and ``holds`` into ``q2_gap_slopes.csv``.
    """
    by_key = {c.key: c for c in result.claims}
    slopes = result.tables.get("q2_gap_slopes.csv", pd.DataFrame())
    if "key" in slopes.columns:
        slopes["p_adj"] = [by_key[k].p_adj if k in by_key else np.nan for k in slopes["key"]]
        slopes["holds"] = [by_key[k].holds() if k in by_key else False for k in slopes["key"]]
    gaps = result.tables.get("q2_gap_by_window.csv", pd.DataFrame())
    exps = result.tables.get("q2_cost_exponents.csv", pd.DataFrame())
    datasets = sorted(set(gaps["dataset"] if len(gaps) else []) | set(exps["dataset"] if len(exps) else []))
    items: list = []
    for dataset in datasets:
        bullets: list[str] = []
        e = exps[exps["dataset"] == dataset] if len(exps) else exps
        for (cost, size), h in (e.groupby(["cost", "size"], sort=False) if len(e) else []):
            bits = []
            for r in h.itertuples():
                if not np.isfinite(r.exponent):
                    bits.append(f"{rule_name(r.rule)}: {r.formula}")
                    continue
                law = f"∝ {size}^{r.exponent:g}" if r.exponent else f"independent of {size}"
                local = ("" if r.exact or not np.isfinite(r.local_min) else
                         f"; at the sizes studied ({r.sizes.replace(';', ', ')}) the formula's local exponent is "
                         f"{r.local_min:.2f}" + (f" to {r.local_max:.2f}" if r.local_max - r.local_min > 0.005 else ""))
                kind = "" if r.exact else f" for large {size}"
                bits.append(f"{rule_name(r.rule)} {law}{kind} ({r.formula}{local}; the study's formula columns: "
                            f"{r.check})")
            bullets.append(f"{_COST_WORDS[cost]} against {size}: " + "; ".join(bits) + ".")
        s = slopes[slopes["dataset"] == dataset] if len(slopes) else slopes
        scale = 100.0
        if len(gaps):
            gd = gaps[gaps["dataset"] == dataset]
            scale = as_percent(gd[["stllr_test_accuracy_mean", "bptt_test_accuracy_mean"]].to_numpy())
        unit = "points"  # accuracies shown in percent
        for r in s.itertuples():
            at = ", ".join(f"{k} {getattr(r, k):g}" for k in SIZES if k != r.size and k in s.columns
                           and np.isfinite(getattr(r, k, np.nan)))
            bptt = getattr(r, "bptt", None)
            obj = f", BPTT objective {bptt}" if isinstance(bptt, str) else ""
            head = (f"Gap (S-TLLR − BPTT) per doubling of {r.size}, learn_steps/T = {r.window:g} "
                    f"(learn_steps {r.learn_steps}){', ' + at if at else ''}{obj}; {r.size} {r.sizes.replace(';', ', ')}")
            if r.key not in by_key:
                bullets.append(f"{head}: {scale * r.estimate:+.2f} {unit}, no interval ({r.reason}).")
                continue
            c = by_key[r.key]
            verdict = (("S-TLLR gains on BPTT as it grows" if c.estimate > 0 else "S-TLLR loses ground to BPTT as it grows")
                       if c.holds() else "no difference at the corrected level")
            bullets.append(f"{head}: {scale * c.estimate:+.2f} {unit} (95% CI {scale * c.low:+.2f} to {scale * c.high:+.2f}, "
                           f"Holm-adjusted p = {c.p_adj:.2g}; {r.n_points} architectures, {r.n_runs} runs): {verdict}.")
        if len(s):
            paired = int((gd["n_pairs"] >= 2).sum()) if len(gaps) else 0
            bullets.append("Each slope is within one learning window and one value of the other sizes; none pools "
                           "windows (a window's gap can change with depth while another's stays flat). Gaps paired "
                           f"by seed in {paired} of {len(gd)} architecture-window pairs (the others: difference of "
                           "the means); intervals from the seeds' noise (Student t draws), 95%.")
        items += [Text(f"{dataset}:", summary=True), Bullets(bullets or ["Nothing to compare yet."], summary=True)]
    if len(exps):  # one number per cell: ranges as two columns
        items.append(Table(exps, "q2_cost_exponents.csv", {
            "dataset": "dataset", "rule": lambda r: rule_name(r["rule"]), "cost": "cost",
            "size": "size", "exponent (formula)": "exponent", "exact": "exact",
            "local, lowest": "local_min", "local, highest": "local_max",
            "measured, lowest": "measured_min", "measured, highest": "measured_max", "check": "check"},
            caption="Cost exponents stated from the DESIGN §4 formulas (q2_cost_exponents.csv has each formula), "
                    "checked between neighbouring sizes"))
    if len(slopes):
        items.append(Table(slopes, "q2_gap_slopes.csv", {
            "dataset": "dataset", "size": "size", "learn_steps/T": "window", "learn_steps": "learn_steps",
            "width": "width", "depth": "depth", "gap per doubling": "estimate", "95% low": "ci_lo",
            "95% high": "ci_hi", "Holm p": "p_adj", "holds": "holds", "architectures": "n_points", "runs": "n_runs"},
            caption="Slope of the S-TLLR − BPTT test accuracy gap per doubling, per window (seed-noise bootstrap; "
                    "q2_gap_slopes.csv has the raw p and notes)"))
    if len(gaps):
        cols = [c for c in ("dataset", "arch_id", "learn_steps", "window", "bptt_loss_kind", "stllr_test_accuracy_mean",
                            "bptt_test_accuracy_mean", "gap", "gap_se", "n_pairs") if c in gaps.columns]
        items.append(Table(gaps, "q2_gap_by_window.csv", {c: c for c in cols},
                           caption="The gap per architecture and window (all columns in the CSV)"))
    items += [Figure(fig, name, result.figure_csv[name]) for name, fig in result.figures.items()]
    return items
