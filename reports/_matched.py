"""Best S-TLLR against BPTT at a matched architecture, in the layout of the paper's Table 2.

For every (dataset, arch_id) that both rules trained, the best configuration of each rule is
chosen by mean validation accuracy (the test split never chooses); the table then shows test
accuracy (mean ± std over seeds), learning MACs and learning memory of both, and the ratios
BPTT / S-TLLR three ways: from the engine's formula counts, from the measured counts, and
from the closed forms of DESIGN §4 (memory T/2; MACs 2T/(3·learn_steps), or T/learn_steps
when α_post = 0).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from reports._configs import best_per_arch
from reports._html import fmt
from reports._load import LATE_EPOCHS

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


def _ratio(a: float, b: float) -> float:
    return float(a) / float(b) if np.isfinite(a) and np.isfinite(b) and b > 0 else np.nan


def matched_table(configs: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, arch_id) with a complete S-TLLR and a complete BPTT configuration.

    Columns: dataset, model, arch_id, width, depth, T, learn_steps (S-TLLR's), both
    config_ids and trial_ids, test and validation accuracy (mean, std, seeds) of each rule,
    ``accuracy_diff`` = S-TLLR − BPTT test accuracy and its standard error, each rule's
    costs, and ``mac_ratio_*`` / ``memory_ratio_*`` (BPTT / S-TLLR; > 1 means S-TLLR needs less)
    for ``formula``, ``measured`` and ``paper`` (DESIGN §4 closed form).
    """
    best = best_per_arch(configs)
    rows = []
    for (dataset, arch), g in best.groupby(["dataset", "arch_id"], sort=True):
        s, b = g[g["rule"] == "stllr"], g[g["rule"] == "bptt"]
        if s.empty or b.empty:
            continue
        s, b = s.iloc[0], b.iloc[0]
        T, ls = float(s["T"]), float(s["learn_steps"])
        row = {"dataset": dataset, "model": s["model"], "arch_id": arch, "width": s["width"], "depth": s["depth"],
               "T": T, "learn_steps": ls, "alpha_post": s["alpha_post"], "stllr_mode": s.get("stllr_mode"),
               "stllr_config_id": s["config_id"], "bptt_config_id": b["config_id"],
               "stllr_trial_ids": s["trial_ids"], "bptt_trial_ids": b["trial_ids"]}
        for tag, r in (("bptt", b), ("stllr", s)):
            for split in ("test", "val"):
                row[f"{tag}_{split}_accuracy_mean"] = r[f"{split}_accuracy_mean"]
                row[f"{tag}_{split}_accuracy_std"] = r[f"{split}_accuracy_std"]
            row[f"{tag}_seeds"] = int(r["n_seeds"])
            row[f"{tag}_late_train_gain"] = r.get("late_train_gain_mean", np.nan)
        row["accuracy_diff"] = s["test_accuracy_mean"] - b["test_accuracy_mean"]
        var = sum((r["test_accuracy_std"] ** 2) / r["n_seeds"] for r in (s, b) if np.isfinite(r["test_accuracy_std"]))
        row["accuracy_diff_se"] = float(np.sqrt(var)) if (s["n_seeds"] > 1 and b["n_seeds"] > 1) else np.nan
        for name, col in _COSTS.items():
            row[f"bptt_{name}"], row[f"stllr_{name}"] = b[col], s[col]
        row["mac_ratio_formula"] = _ratio(b[_COSTS["learning_macs_formula"]], s[_COSTS["learning_macs_formula"]])
        row["mac_ratio_measured"] = _ratio(b[_COSTS["learning_macs_measured"]], s[_COSTS["learning_macs_measured"]])
        no_post = np.isfinite(s["alpha_post"]) and s["alpha_post"] == 0
        row["mac_ratio_paper"] = _ratio(2 * T, (2 if no_post else 3) * ls)
        row["memory_ratio_formula"] = _ratio(b[_COSTS["memory_bytes_formula"]], s[_COSTS["memory_bytes_formula"]])
        row["memory_ratio_measured"] = _ratio(b[_COSTS["memory_bytes_measured"]], s[_COSTS["memory_bytes_measured"]])
        row["memory_ratio_paper"] = T / 2.0
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.sort_values(["dataset", "width", "depth", "T", "arch_id"]).reset_index(drop=True) if rows else out


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
            "not grow with T. Set `fixed.stllr.mode: streaming` in the study file to measure that (slower on CPU).")


def still_learning_note(matched: pd.DataFrame, threshold: float = 0.02) -> str | None:
    """A sentence when a rule's chosen runs were still learning at their last epoch.

    ``*_late_train_gain`` is the rise of training accuracy over the last
    :data:`reports._load.LATE_EPOCHS` epochs (mean over seeds); above ``threshold`` the run
    stopped because the epoch budget ran out, so the accuracy difference at that budget is
    partly a difference in learning speed.
    """
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


def paper_rows(datasets: list[str]) -> pd.DataFrame:
    """The paper's Table 2 rows for the datasets in a report (empty if none match)."""
    return PAPER_TABLE2[PAPER_TABLE2["dataset"].isin(datasets)].reset_index(drop=True)
