"""Best S-TLLR against BPTT at a matched architecture, in the layout of the paper's Table 2.

For every (dataset, arch_id) that both rules trained, the best configuration of each rule is
chosen by mean validation accuracy (the test split never chooses): S-TLLR at its tuned factors
(the same learning-rate search as BPTT) where the study ran that, BPTT once per objective it
was trained with (DESIGN §8). The table then shows test accuracy (mean ± std over seeds), the
difference paired by seed with its bootstrap interval, learning MACs and learning memory of
both, and the ratios BPTT / S-TLLR three ways: from the engine's formula counts, from the
measured counts, and from the closed forms of DESIGN §4 (memory T/2, or T/(2·learn_steps) for
S-TLLR on CE(Σ_t o[t]), which holds its window; MACs 2T/(3·learn_steps), or T/learn_steps when
α_post = 0).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from scipy import stats

from reports._claims import N_BOOT, bootstrap_p
from reports._configs import STOPPED_BY, ranked, seed_values
from reports._html import fmt
from reports._load import DEFAULT_LOSS, LATE_EPOCHS
from reports._measure import ACCURACY, Measure, measure_of

#: The paper's Table 2 (TMLR version, mean ± std over 5 seeds), for datasets a study may share.
PAPER_TABLE2 = pd.DataFrame([
    {"dataset": "dvs_gesture", "model": "VGG-9, bs 16", "T": 20, "learn_steps": 5,
     "bptt_accuracy": "95.58 ± 1.08", "stllr_accuracy": "97.72 ± 0.38",
     "bptt_learning_macs": 6.06e9, "stllr_learning_macs": 2.27e9, "bptt_memory_MB": 16.13, "stllr_memory_MB": 1.61},
    {"dataset": "cifar10_dvs", "model": "VGG-9, bs 48", "T": 10, "learn_steps": 5,
     "bptt_accuracy": "75.44 ± 0.76", "stllr_accuracy": "73.93 ± 0.62",
     "bptt_learning_macs": 6.82e9, "stllr_learning_macs": 5.12e9, "bptt_memory_MB": 18.12, "stllr_memory_MB": 3.62},
    {"dataset": "shd", "model": "RSNN 450 rec, bs 128", "T": 100, "learn_steps": 90,
     "bptt_accuracy": "70.57 ± 0.96", "stllr_accuracy": "78.24 ± 1.84",
     "bptt_learning_macs": 0.054e9, "stllr_learning_macs": 0.096e9, "bptt_memory_MB": 0.961, "stllr_memory_MB": 0.019},
])
PAPER_TABLE2["mac_ratio"] = PAPER_TABLE2["bptt_learning_macs"] / PAPER_TABLE2["stllr_learning_macs"]
PAPER_TABLE2["memory_ratio"] = PAPER_TABLE2["bptt_memory_MB"] / PAPER_TABLE2["stllr_memory_MB"]

_COSTS = {
    "learning_macs_formula": "learning_macs_formula_per_sample_mean",
    "learning_macs_measured": "learning_macs_measured_per_sample_mean",
    "memory_bytes_formula": "learning_memory_bytes_formula_per_sample_mean",
    "memory_bytes_measured": "learning_memory_bytes_measured_per_sample_mean",
}
#: Objectives in the order the table lists them: S-TLLR's own first (the same objective, DESIGN §8).
LOSS_ORDER = ("per_step", "per_step_all", "sum_output")


def _ratio(a: float, b: float) -> float:
    return float(a) / float(b) if np.isfinite(a) and np.isfinite(b) and b > 0 else np.nan


def paired_stats(diffs: np.ndarray | list[float], *, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, float]:
    """Mean of paired differences, its 95% percentile bootstrap interval and two p-values of "no difference".

    ``p_bootstrap`` comes from the resampled means (:func:`reports._claims.bootstrap_p`);
    ``p_t`` from the paired t-test. With a handful of seeds the bootstrap alone is
    over-confident (two differences of one sign give p = 1/(n_boot+1), and an interval no
    wider than their range), so ``p`` — what a claim uses — is the larger of the two, and
    ``low``/``high`` the wider of the percentile and the t interval (the interval then
    excludes 0 only where ``p`` < 0.05). Fewer than two differences: no interval, no p; two or
    more that are all equal: no p (no spread to test against).

    >>> r = paired_stats([0.02, 0.03, 0.01, 0.04, 0.02])
    >>> round(r["mean"], 3), r["n"], bool(r["low"] > 0), bool(r["p"] >= r["p_bootstrap"])
    (0.024, 5, True, True)
    """
    d = np.asarray(diffs, dtype=float)
    d = d[np.isfinite(d)]
    out = {"n": int(d.size), "mean": float(d.mean()) if d.size else np.nan, "se": np.nan, "low": np.nan,
           "high": np.nan, "p_bootstrap": np.nan, "p_t": np.nan, "p": np.nan}
    if d.size < 2:
        return out
    out["se"] = float(d.std(ddof=1) / np.sqrt(d.size))
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, d.size, (n_boot, d.size))].mean(axis=1)
    lo, hi = (float(v) for v in np.quantile(boots, [0.025, 0.975]))
    out["p_bootstrap"] = bootstrap_p(boots)
    if d.std(ddof=1) > 0:
        out["p_t"] = float(stats.ttest_1samp(d, 0.0).pvalue)
        half = float(stats.t.ppf(0.975, d.size - 1)) * out["se"]
        lo, hi = min(lo, out["mean"] - half), max(hi, out["mean"] + half)
    out["low"], out["high"] = lo, hi
    # every seed the same difference (accuracies move in steps of 1/n_test: with two seeds it
    # happens): no spread to test against, no p-value
    out["p"] = max(out["p_bootstrap"], out["p_t"]) if np.isfinite(out["p_t"]) else np.nan
    return out


def loss_of(r: pd.Series) -> str:
    """The objective a configuration row trained on (its rule's own where the row does not say)."""
    v = r.get("loss_kind")
    return v if isinstance(v, str) and v else DEFAULT_LOSS.get(str(r["rule"]), "unknown")


def _sum(values: pd.Series) -> int:
    return int(pd.to_numeric(values, errors="coerce").fillna(0).sum())


def _count(g: pd.DataFrame, col: str) -> int:
    return int(pd.to_numeric(g[col], errors="coerce").fillna(0).sum()) if col in g.columns else 0


def matched_table(configs: pd.DataFrame, floors: dict[str, dict] | None = None,
                  measure: Measure | None = None) -> pd.DataFrame:
    """S-TLLR against BPTT at each architecture both rules trained, per BPTT objective.

    Per (dataset, arch_id): S-TLLR's configuration is the best (by mean validation accuracy)
    of role ``tuned`` — its chosen factors with the same learning-rate search BPTT got — or,
    when the study has none at that architecture, the best of its factor search
    (``stllr_tuned`` False). BPTT's is the best of its configurations there, separately for
    each objective (``loss_kind``) the study trained it with: one row per BPTT objective.
    S-TLLR's tuned runs are those on that row's objective where the study trained S-TLLR on
    it too (``baseline.stllr_loss``), else those on its own ``per_step``.

    Columns: dataset, model, arch_id, width, depth, T, learn_steps (S-TLLR's), both
    config_ids, trial_ids and objectives (``*_loss_kind``); test and validation accuracy
    (mean, std, seeds) of each rule; ``accuracy_diff``: the mean over the seeds both ran of
    S-TLLR − BPTT test accuracy (seed s of each rule shares split, data order and
    initialisation), ``n_pairs``, ``paired_seeds``, ``accuracy_diff_lo``/``_hi`` (95%
    bootstrap over the paired differences), ``accuracy_diff_se``, ``accuracy_diff_p``
    (:func:`paired_stats`); without a common seed the difference of the means, unpaired, with
    no interval. Each rule's costs and ``mac_ratio_*`` / ``memory_ratio_*`` (BPTT / S-TLLR;
    > 1 means S-TLLR needs less) for ``formula``, ``measured`` and ``paper`` (DESIGN §4 closed
    form). The tuning each side got at that architecture: ``stllr_search_configs``/``_runs``
    (S-TLLR's factor search), ``stllr_tuning_trials``/``_runs`` (its learning-rate tuning) and
    ``bptt_tuning_trials``/``_runs``. How the chosen runs stopped: ``{rule}_stopped_{how}``.
    The floors of the task (``chance_accuracy``, ``linear_readout_{val,test}_accuracy``;
    NaN when not measured).

    A flow study (``measure`` AEE, lower is better; default :func:`reports._measure.measure_of`
    ``configs``) gets the same table with its measure's names: best = lowest mean validation
    AEE, ``{rule}_{test,val}_aee_mean``/``_std``, ``aee_diff`` (S-TLLR − BPTT test AEE in px,
    paired by seed: > 0 means S-TLLR is worse) with ``aee_diff_lo``/``_hi``/``_se``/``_p``,
    ``aee_diff_says`` (the difference in words), ``measure`` and, as its floor,
    ``no_motion_test_aee`` (the no-motion AEE of the task, from the runs); no chance or read-out.
    """
    floors = floors or {}
    measure = measure or measure_of(configs)
    rows: list[dict] = []
    if configs.empty:
        return pd.DataFrame(rows)
    for (dataset, arch), g in configs.groupby(["dataset", "arch_id"], sort=True):
        st, bp = g[g["rule"] == "stllr"], g[g["rule"] == "bptt"]
        role = st["role"].astype(object) if "role" in st.columns else pd.Series([None] * len(st), index=st.index)
        tuned_all, search = st[role == "tuned"], st[role != "tuned"]
        tuned_loss = pd.Series([loss_of(r) for _, r in tuned_all.iterrows()], index=tuned_all.index, dtype=object)
        if ranked(bp).empty or (ranked(tuned_all).empty and ranked(search).empty):
            continue
        fl = floors.get(str(dataset)) or {}
        lin = fl.get("linear_readout") or {}
        bp = bp.assign(_loss=[loss_of(r) for _, r in bp.iterrows()])
        kinds = sorted(bp["_loss"].unique(), key=lambda k: (LOSS_ORDER.index(k) if k in LOSS_ORDER else 9, k))
        for kind in kinds:
            cand = ranked(bp[bp["_loss"] == kind])
            if cand.empty:
                continue
            # S-TLLR on BPTT's objective where the study tuned it on that one too, else on its own
            tuned = tuned_all[tuned_loss == kind]
            if ranked(tuned).empty:
                tuned = tuned_all[tuned_loss == "per_step"]
            pick = ranked(tuned if len(ranked(tuned)) else search)
            rows.append(_row(dataset, arch, pick.iloc[0], cand.iloc[0], kind, tuned, search, bp[bp["_loss"] == kind],
                             fl, lin, measure))
    out = pd.DataFrame(rows)
    return out.sort_values(["dataset", "width", "depth", "T", "arch_id", "_order"]).drop(columns="_order").reset_index(
        drop=True) if rows else out


def _row(dataset: str, arch: str, s: pd.Series, b: pd.Series, kind: str, tuned: pd.DataFrame, search: pd.DataFrame,
         bptt: pd.DataFrame, fl: dict, lin: dict, measure: Measure = ACCURACY) -> dict:
    T, ls = float(s["T"]), float(s["learn_steps"])
    name, test = measure.name, measure.test_col
    row = {"dataset": dataset, "model": s["model"], "arch_id": arch, "width": s["width"], "depth": s["depth"],
           "T": T, "learn_steps": ls, "alpha_post": s["alpha_post"], "stllr_mode": s.get("stllr_mode"),
           "stllr_loss_kind": loss_of(s), "bptt_loss_kind": kind,
           "_order": LOSS_ORDER.index(kind) if kind in LOSS_ORDER else 9,
           "stllr_tuned": bool(len(tuned)), "stllr_role": s.get("role"),
           "stllr_config_id": s["config_id"], "bptt_config_id": b["config_id"],
           "stllr_trial_ids": s["trial_ids"], "bptt_trial_ids": b["trial_ids"]}
    if measure is not ACCURACY:
        row["measure"] = name
    for tag, r in (("bptt", b), ("stllr", s)):
        for split in ("test", "val"):
            row[f"{tag}_{split}_{name}_mean"] = r[f"{split}_{name}_mean"]
            row[f"{tag}_{split}_{name}_std"] = r[f"{split}_{name}_std"]
        row[f"{tag}_seeds"] = int(r["n_seeds"])
        row[f"{tag}_late_train_gain"] = r.get("late_train_gain_mean", np.nan)
        for how in STOPPED_BY:  # NaN: the runs do not say how they stopped (an older study)
            row[f"{tag}_stopped_{how}"] = float(r.get(f"n_stopped_{how}", np.nan))
        row[f"{tag}_best_at_last_epoch"] = float(r.get("n_best_at_last_epoch", np.nan))
    sv, bv = seed_values(s.get(measure.by_seed_col)), seed_values(b.get(measure.by_seed_col))
    common = sorted(set(sv) & set(bv))
    diffs = [sv[k] - bv[k] for k in common]
    ps = paired_stats(diffs)
    row["n_pairs"], row["paired_seeds"] = len(common), ";".join(str(k) for k in common)
    row["paired_diffs"] = json.dumps({str(k): d for k, d in zip(common, diffs)})
    if common:
        row[f"{name}_diff"], row[f"{name}_diff_se"] = ps["mean"], ps["se"]
    else:  # no seed in common (an older study): the difference of the means, unpaired
        row[f"{name}_diff"] = s[f"{test}_mean"] - b[f"{test}_mean"]
        var = sum((r[f"{test}_std"] ** 2) / r["n_seeds"] for r in (s, b) if np.isfinite(r[f"{test}_std"]))
        row[f"{name}_diff_se"] = float(np.sqrt(var)) if (s["n_seeds"] > 1 and b["n_seeds"] > 1) else np.nan
    row[f"{name}_diff_lo"], row[f"{name}_diff_hi"] = ps["low"], ps["high"]
    row[f"{name}_diff_p_bootstrap"], row[f"{name}_diff_p_t"], row[f"{name}_diff_p"] = (
        ps["p_bootstrap"], ps["p_t"], ps["p"])
    if measure is not ACCURACY:
        row[f"{name}_diff_says"] = measure.diff_sentence(row[f"{name}_diff"])
    for name, col in _COSTS.items():
        row[f"bptt_{name}"], row[f"stllr_{name}"] = b.get(col, np.nan), s.get(col, np.nan)
    for kind_, which in (("mac", "learning_macs"), ("memory", "memory_bytes")):
        for how in ("formula", "measured"):
            row[f"{kind_}_ratio_{how}"] = _ratio(row[f"bptt_{which}_{how}"], row[f"stllr_{which}_{how}"])
    no_post = np.isfinite(s["alpha_post"]) and s["alpha_post"] == 0
    row["mac_ratio_paper"] = _ratio(2 * T, (2 if no_post else 3) * ls)
    # T·N against 2·N; S-TLLR on CE(Σ_t o[t]) holds 2·N per window step: T / (2·learn_steps)
    row["memory_ratio_paper"] = T / (2.0 * ls) if loss_of(s) == "sum_output" else T / 2.0
    row["stllr_search_configs"], row["stllr_search_runs"] = len(search), _count(search, "n_seeds")
    row["stllr_tuning_trials"], row["stllr_tuning_runs"] = len(tuned), _count(tuned, "n_seeds")
    row["bptt_tuning_trials"], row["bptt_tuning_runs"] = len(bptt), _count(bptt, "n_seeds")
    if measure is not ACCURACY:  # the floor of a flow task: predicting no motion (the same for every run)
        floor = pd.to_numeric(pd.Series([b.get(f"{measure.floor_col}_mean"), s.get(f"{measure.floor_col}_mean")]),
                              errors="coerce").dropna()
        row[f"no_motion_{test}"] = float(floor.iloc[0]) if len(floor) else np.nan
        return row
    row["chance_accuracy"] = fl.get("chance", np.nan)
    row["linear_readout_val_accuracy"] = lin.get("val_accuracy", np.nan)
    row["linear_readout_test_accuracy"] = lin.get("test_accuracy", np.nan)
    return row


def _span(values: pd.Series) -> str:
    """``"lo to hi"`` of a column, or the one value when they are equal."""
    lo, hi = values.min(), values.max()
    return fmt(lo) if lo == hi else f"{fmt(lo)} to {fmt(hi)}"


def window_memory_note(matched: pd.DataFrame) -> str | None:
    """A sentence when S-TLLR, run in window mode, *measured* more learning memory than BPTT.

    The formula counts the O(n) state of a streaming implementation; window mode runs the
    window's steps as one batch and keeps their records for one update, O(learn_steps·n), so
    its measured memory can exceed BPTT's. The reader needs to know which one a ratio is.
    """
    if matched.empty or "stllr_mode" not in matched.columns:
        return None
    m = matched[(matched["stllr_mode"] == "window") & (matched["memory_ratio_measured"] < 1.0)]
    if m.empty:
        return None
    span = _span(m["memory_ratio_measured"])
    formula = m["memory_ratio_formula"].min()
    by_formula = f", formula {fmt(formula)} or more" if np.isfinite(formula) else ""
    return (f"In {len(m)} of {len(matched)} matched architectures S-TLLR measured more learning memory than BPTT "
            f"(memory ratio measured {span}{by_formula}). These runs used "
            "S-TLLR's window mode, which runs the learning window as one batch and keeps its records for one update "
            "(memory grows with learn_steps); the formula counts the streaming implementation's state, which does "
            "not grow with T. The default mode, `chunked`, learns the window in chunks of c steps and keeps memory "
            "far below BPTT's at nearly window-mode speed: remove `fixed.stllr.mode: window` from the study file.")


def still_learning_note(matched: pd.DataFrame, threshold: float = 0.02) -> str | None:
    """A sentence when a rule's chosen runs were still learning at their last epoch.

    ``*_late_train_gain`` is the rise of training accuracy over the last
    :data:`reports._load.LATE_EPOCHS` epochs (mean over seeds); above ``threshold`` the run
    stopped because the epoch budget ran out, so the accuracy difference at that budget is
    partly a difference in learning speed. None for a flow study (its runs have no training accuracy).
    """
    if measure_of(matched) is not ACCURACY:
        return None
    parts = []
    for tag, rule in (("bptt", "BPTT"), ("stllr", "S-TLLR")):
        col = f"{tag}_late_train_gain"
        if col not in matched.columns:
            continue
        g = matched[col].astype(float)
        late = g[g > threshold]
        if len(late):
            parts.append(f"{rule} in {len(late)} of {len(matched)} matched architectures (training accuracy still rising by "
                         f"{_span(late)} over the last {LATE_EPOCHS} epochs)")
    if not parts:
        return None
    return ("Not converged at the end of the epoch budget: " + "; ".join(parts) + ". For these architectures "
            "the accuracy difference is measured at a fixed number of epochs and partly reflects learning speed; "
            "raise `budget.epochs` to compare converged accuracy.")


def tuning_note(matched: pd.DataFrame) -> str | None:
    """The tuning each side got: S-TLLR tuned or not per architecture, and its extra factor search.

    DESIGN §8: the same learning-rate search for both rules (sampler, trials, seeds); S-TLLR's
    factors are searched on top, and that extra search is reported, not hidden.
    """
    if matched.empty:
        return None
    per_arch = matched.drop_duplicates(["dataset", "arch_id"])
    untuned = per_arch[~per_arch["stllr_tuned"].astype(bool)]
    tuned = per_arch[per_arch["stllr_tuned"].astype(bool)]
    parts = []
    if len(untuned):
        parts.append(f"S-TLLR tuned: no — factor search only at {len(untuned)} of {len(per_arch)} architectures "
                     f"({', '.join(str(a) for a in untuned['arch_id'][:6])}{', …' if len(untuned) > 6 else ''}): "
                     "its best factor-search configuration is compared, without the learning-rate search BPTT got.")
    if len(tuned):
        parts.append(f"S-TLLR tuned at {len(tuned)} of {len(per_arch)} architectures: its chosen factors got "
                     f"{_span(tuned['stllr_tuning_trials'])} learning-rate trials per architecture against BPTT's "
                     f"{_span(matched.loc[matched['stllr_tuned'].astype(bool), 'bptt_tuning_trials'])}.")
    search, runs = int(per_arch["stllr_search_configs"].sum()), int(per_arch["stllr_search_runs"].sum())
    parts.append(f"On top, S-TLLR's factors were searched over {search} configurations ({runs} runs) at these "
                 f"architectures ({_span(per_arch['stllr_search_configs'])} per architecture), a search BPTT, which has "
                 "no such factors, did not get.")
    return " ".join(parts)


def stopping_note(configs: pd.DataFrame, matched: pd.DataFrame) -> str | None:
    """Runs that stopped at the epoch maximum (patience not exhausted: possibly still improving), per rule;
    the share stopped by patience.

    From ``stopped_by`` (``patience``, ``max_epochs``, or ``fixed`` without early stopping);
    None when no run says how it stopped (an older study: :func:`still_learning_note` then).
    """
    cols = [f"n_stopped_{h}" for h in STOPPED_BY]
    if configs.empty or not set(cols) <= set(configs.columns) or not configs[cols].notna().any().any():
        return None
    what = measure_of(configs).label
    parts = []
    for rule, name in (("stllr", "S-TLLR"), ("bptt", "BPTT")):
        c = configs[(configs["rule"] == rule) & configs[cols].notna().any(axis=1)]
        n, late = _sum(c["n_seeds"]), _sum(c["n_stopped_max_epochs"])
        if n:
            parts.append(f"{name} {late} of {n} runs")
    text = ("Stopped at the epoch maximum before patience ran out, possibly still improving (stopped_by = max_epochs): " + ", ".join(parts) + ".")
    if not matched.empty:
        # each chosen configuration once (S-TLLR's stands in one row per BPTT objective)
        st = matched.drop_duplicates(["dataset", "arch_id", "stllr_config_id"])
        bp = matched.drop_duplicates(["dataset", "arch_id", "bptt_config_id"])
        runs = _sum(st["stllr_seeds"]) + _sum(bp["bptt_seeds"])
        late = _sum(st["stllr_stopped_max_epochs"]) + _sum(bp["bptt_stopped_max_epochs"])
        pat = _sum(st["stllr_stopped_patience"]) + _sum(bp["bptt_stopped_patience"])
        fixed = _sum(st["stllr_stopped_fixed"]) + _sum(bp["bptt_stopped_fixed"])
        text += (f" Of the {runs} runs in the matched table, {pat} ({100 * pat / max(runs, 1):.0f}%) stopped by "
                 f"patience (converged on validation), {late} at the epoch maximum (possibly still improving)")
        best_last = _sum(st.get("stllr_best_at_last_epoch", pd.Series(dtype=float))) + _sum(
            bp.get("bptt_best_at_last_epoch", pd.Series(dtype=float)))
        text += f" ({best_last} of them with their best validation {what} at the last epoch)" if late else ""
        text += f", {fixed} ran a fixed number of epochs (early stopping off)." if fixed else "."
        if late:
            text += (f" For those the {what} difference is measured before convergence: raise the epoch maximum "
                     "(`budget.epochs`).")
    return text


def paper_rows(datasets: list[str]) -> pd.DataFrame:
    """The paper's Table 2 rows for the datasets in a report (empty if none match)."""
    return PAPER_TABLE2[PAPER_TABLE2["dataset"].isin(datasets)].reset_index(drop=True)
