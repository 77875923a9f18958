"""One row per configuration: its seeds' mean and standard deviation.

A configuration (``config_id`` within a study) is one point of every figure; its complete
seeds give its error bars. Settings are constant across the seeds of a configuration, so
the first value stands for all.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from reports._measure import ACCURACY, MEASURES, Measure, measure_of

#: Measured or counted quantities: averaged over seeds (``<name>_mean``, ``<name>_std``).
METRICS = (
    "val_accuracy", "test_accuracy", "val_loss", "test_loss", "train_accuracy",
    "forward_macs_formula_per_sample", "learning_macs_formula_per_sample",
    "learning_macs_measured_per_sample", "learning_memory_values_formula_per_sample",
    "learning_memory_bytes_formula_per_sample", "learning_memory_bytes_measured_per_sample",
    "learning_memory_bytes_measured_per_batch", "peak_step_bytes_measured_per_batch",
    "wall_time_s", "time_per_epoch_s", "samples_per_s", "late_train_gain", "epochs_trained", "best_epoch",
)
#: How a run ended its training (``stopped_by``): counted per configuration as ``n_stopped_<value>``.
STOPPED_BY = ("patience", "max_epochs", "fixed")
#: Settings of a configuration (the same for all its seeds).
SETTINGS = (
    "dataset", "rule", "role", "arch_id", "model", "width", "depth", "T", "batch", "epochs",
    "learn_steps", "learning_signal", "stllr_mode", "loss_kind", "alpha_pre", "alpha_post", "lambda_pre", "lambda_post", "lr",
)


def layer_columns(df: pd.DataFrame) -> list[str]:
    """Per-layer S-TLLR factor columns present in ``df`` (``layer{i}_alpha_post``, ...)."""
    cols = [c for c in df.columns if c.startswith("layer") and c.split("_", 1)[-1] in
            ("alpha_post", "lambda_pre", "lambda_post", "alpha_pre")]
    return sorted(cols, key=lambda c: (int("".join(ch for ch in c.split("_")[0] if ch.isdigit()) or 0), c))


def config_table(runs: pd.DataFrame, measure: Measure | None = None) -> pd.DataFrame:
    """Aggregate complete runs to one row per (study, config_id).

    Args:
        runs: complete runs (see :func:`reports._load.complete_runs`).
        measure: what the runs measure (default: :func:`reports._measure.measure_of` the runs). For
            a measure other than accuracy (AEE) the table also has its metrics (``val_aee_mean``, ...),
            a ``measure`` column and its by-seed column (``test_aee_by_seed``) beside the accuracy one.

    Returns:
        Settings, ``n_seeds``, ``seeds``, ``trial_ids`` (``;``-joined, traceable to runs),
        ``<metric>_mean`` / ``<metric>_std`` (sample std over seeds; NaN with one seed),
        ``test_accuracy_by_seed`` (JSON ``{seed: accuracy}``, for differences paired by seed;
        ``test_aee_by_seed`` and no accuracy columns for a flow study)
        ``n_stopped_<how>`` for each of :data:`STOPPED_BY` (runs that ended that way; NaN
        when none of the configuration's runs says how it stopped) and ``n_best_at_last_epoch``
        (runs whose best validation accuracy came at their last epoch).
    """
    measure = measure or measure_of(runs)
    runs = runs.copy()
    if "time_per_epoch_s" not in runs.columns and {"wall_time_s", "epochs_done"} <= set(runs.columns):
        runs["time_per_epoch_s"] = runs["wall_time_s"] / runs["epochs_done"].where(runs["epochs_done"] > 0)
    other = measure is not ACCURACY
    for c in (*SETTINGS, *METRICS, *measure.extra_metrics, "seed"):
        if c not in runs.columns:
            runs[c] = np.nan
    settings = list(SETTINGS) + layer_columns(runs)
    # a flow study's table has no accuracy columns (its runs' are NaN): its measure's stand in their place
    metric_cols = list(dict.fromkeys([*(m for m in METRICS if not (other and "accuracy" in m)),
                                      *measure.extra_metrics]))
    columns = ["study", "config_id", *settings, *(["measure"] if other else []), "n_seeds", "seeds", "trial_ids"]
    columns += [f"{m}_{s}" for m in metric_cols for s in ("mean", "std")]
    columns += [measure.by_seed_col,
                *(f"n_stopped_{how}" for how in STOPPED_BY), "n_best_at_last_epoch"]
    if "stopped_by" not in runs.columns:
        runs["stopped_by"] = None
    if runs.empty:
        return pd.DataFrame(columns=columns)
    runs = runs.sort_values("trial_id", kind="stable")
    runs[metric_cols] = runs[metric_cols].apply(pd.to_numeric, errors="coerce")
    g = runs.groupby(["study", "config_id"], sort=True, dropna=False)
    out = g[settings].first()
    out["n_seeds"] = g.size()
    out["seeds"] = g["seed"].agg(lambda s: ";".join(str(int(v)) if np.isfinite(v) else "?" for v in s.astype(float)))
    out["trial_ids"] = g["trial_id"].agg(lambda s: ";".join(str(t) for t in s))
    means, stds = g[metric_cols].mean(), g[metric_cols].std(ddof=1)
    for m in metric_cols:
        out[f"{m}_mean"], out[f"{m}_std"] = means[m], stds[m]
    out[measure.by_seed_col] = g[["seed", measure.test_col]].apply(_by_seed)
    if other:
        out["measure"] = measure.name
    last = (runs["best_epoch"] >= runs["epochs_trained"]) if {"best_epoch", "epochs_trained"} <= set(runs.columns) \
        else pd.Series(False, index=runs.index)
    out["n_best_at_last_epoch"] = last.groupby([runs["study"], runs["config_id"]], sort=True, dropna=False).sum()
    known = g["stopped_by"].agg(lambda s: int(s.notna().sum()))
    for how in STOPPED_BY:  # NaN where no seed says how it stopped (older studies)
        n = g["stopped_by"].agg(lambda s, h=how: int((s.astype(object) == h).sum()))
        out[f"n_stopped_{how}"] = n.where(known > 0)
    return out.reset_index()[columns]


def _by_seed(g: pd.DataFrame) -> str:
    """``{"seed": value}`` as JSON (value: the frame's second column), over the seeds with a finite seed
    number and value."""
    pairs = {str(int(s)): float(v) for s, v in zip(g["seed"].astype(float), g[g.columns[1]].astype(float))
             if np.isfinite(s) and np.isfinite(v)}
    return json.dumps(pairs, sort_keys=True)


def seed_values(cell: object) -> dict[int, float]:
    """``test_accuracy_by_seed`` back as ``{seed: value}`` (empty for a missing or odd cell).

    >>> seed_values('{"0": 0.5, "1": 0.75}'), seed_values(None)
    ({0: 0.5, 1: 0.75}, {})
    """
    try:
        return {int(k): float(v) for k, v in json.loads(str(cell)).items()}
    except (TypeError, ValueError, AttributeError):
        return {}


def _direction(configs: pd.DataFrame, metric: str | None) -> tuple[str, bool]:
    """The metric to rank by (default: the table's measure's validation column) and whether higher is better."""
    if metric is None:
        m = measure_of(configs)
        return m.val_col, m.higher_is_better
    for m in MEASURES.values():
        if metric in (m.val_col, m.test_col):
            return metric, m.higher_is_better
    return metric, True


def ranked(configs: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    """Configurations with a finite mean ``metric``, best first: the best mean (the highest
    accuracy, the lowest AEE), then fewer learning MACs, then the lower config_id. Every "best
    configuration" in a report comes from this order, so the sections name the same one when
    two tie. ``metric`` defaults to the validation column of the table's measure
    (:func:`reports._measure.measure_of`): ``val_accuracy``, or ``val_aee`` for a flow study."""
    metric, higher = _direction(configs, metric)
    if f"{metric}_mean" not in configs.columns:
        return configs.iloc[0:0].copy()
    c = configs[np.isfinite(configs[f"{metric}_mean"].astype(float))].copy()
    macs = c["learning_macs_formula_per_sample_mean"] if "learning_macs_formula_per_sample_mean" in c else np.nan
    c["_macs"] = pd.to_numeric(macs, errors="coerce")
    c["_macs"] = c["_macs"].fillna(np.inf)
    c = c.sort_values([f"{metric}_mean", "_macs", "config_id"], ascending=[not higher, True, True],
                      kind="stable")
    return c.drop(columns="_macs")


def best_per_arch(configs: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    """The configuration with the best mean ``metric`` (default: the measure's validation column, see
    :func:`ranked`) for each (dataset, rule, arch_id).

    Selection reads the validation metric only; ties go to fewer learning MACs, then to the
    lower config_id, so the choice is reproducible.
    """
    if configs.empty:
        return configs.copy()
    best = ranked(configs, metric).groupby(["dataset", "rule", "arch_id"], sort=True).head(1)
    return best.sort_values(["dataset", "arch_id", "rule"]).reset_index(drop=True)


def as_percent(values: pd.Series | np.ndarray) -> float:
    """The factor that turns accuracies into percent: 100 for fractions, 1 if already percent."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return 100.0 if (v.size == 0 or np.nanmax(np.abs(v)) <= 1.0) else 1.0
