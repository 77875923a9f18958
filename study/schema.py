"""What a study stores, defined once: statuses, objectives, the results columns, one row.

``study`` writes these rows and ``reports`` reads them; both import this module (which
imports neither Ray nor Optuna nor torch). A study folder holds one row per run
(configuration × seed) in ``results.parquet``, readable with pandas alone::

    pandas.read_parquet("DIR/results.parquet")

Columns (:data:`COLUMNS`): identity (``study``, ``trial_id`` = ``<config_id>-s<seed>``,
``config_id``, ``arch_id``, ``rule``, ``role`` — ``search`` (S-TLLR's factor search),
``baseline`` (BPTT's tuning) or ``tuned`` (S-TLLR at its chosen factors, given BPTT's
tuning) — ``seed``), outcome
(``status``, ``reason``), accuracies (``val_accuracy`` is what studies select on,
``test_accuracy`` is reported, never optimised), the engine's named costs, the
configuration's settings, ``wall_time_s`` (training, summed over epochs), ``run_time_s``
(the whole run), the objective (``loss_kind``: ``per_step``, ``sum_output`` or
``per_step_all``; ``loss_steps``), how the run stopped (``stopped_by``: ``patience``,
``max_epochs`` or ``fixed``; ``epochs_trained``, ``best_epoch``, ``patience``), ``node``, ``config_json`` (the full
:class:`~stllr_engine.experiment.ExperimentConfig`), ``params_json`` (the searched
parameters) and ``curves_json`` (per-epoch metrics). Per-layer factors add
``layer{i}_{factor}`` columns.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Mapping

__all__ = ["STATUSES", "ENDED", "DEFAULT_OBJECTIVES", "COST_COLUMNS", "COLUMNS", "TEXT_COLUMNS", "run_row",
           "FACTORS", "read_results", "rows_from_files", "frame"]

#: Every status a run row can have.
#:
#: * ``complete``: trained for its epochs; ``failed``: ended by an error (e.g. its loss
#:   turned NaN; ``reason`` says which); ``pruned``: stopped early by a scheduler;
#: * ``infeasible``: priced by the formulas, broke a constraint, never trained;
#: * ``interrupted``: stopped by Ctrl-C / SIGTERM or a killed driver; ``--resume``
#:   continues it from its last checkpoint; ``running``: being trained now.
STATUSES = ("complete", "failed", "pruned", "infeasible", "interrupted", "running")

#: A run with one of these statuses is over: a resume never trains it again. A
#: configuration counts as trained once *every* seed's run has one of them.
ENDED = ("complete", "failed", "pruned")

#: A study file without ``objectives``: accuracy up, learning compute and memory down.
DEFAULT_OBJECTIVES: tuple[tuple[str, str], ...] = (
    ("val_accuracy", "maximize"),
    ("learning_macs_formula_per_sample", "minimize"),
    ("learning_memory_bytes_measured_per_sample", "minimize"),
)

COST_COLUMNS = (
    "forward_macs_formula_per_sample",
    "learning_macs_formula_per_sample",
    "learning_macs_measured_per_sample",
    "forward_macs_measured_per_sample",
    "learning_memory_values_formula_per_sample",
    "learning_memory_bytes_formula_per_sample",
    "learning_memory_bytes_measured_per_batch",
    "learning_memory_bytes_measured_per_sample",
    "peak_step_bytes_measured_per_batch",
    "cuda_peak_bytes_measured_per_batch",
)

_METRICS = ("val_accuracy", "test_accuracy", "val_loss", "test_loss", "train_accuracy", "train_loss",
            "val_aee", "test_aee", "val_outliers_pct", "test_outliers_pct", "test_zero_aee")

#: The measure a study ranks runs by, by task: ``(validation column, test column, direction)``.
#: Classifiers: accuracy, higher is better; flow networks (kind ``flownet``): AEE in pixels,
#: lower is better. Every row names its study's measure (column ``measure``).
MEASURES: dict[str, tuple[str, str, str]] = {
    "accuracy": ("val_accuracy", "test_accuracy", "maximize"),
    "aee": ("val_aee", "test_aee", "minimize"),
}


def measure_of(model_kind: str) -> str:
    """The measure of a study whose networks are of ``model_kind``: ``"aee"`` for ``flownet``.

    >>> measure_of("mlp"), measure_of("flownet")
    ('accuracy', 'aee')
    """
    return "aee" if model_kind == "flownet" else "accuracy"

COLUMNS = (
    "study", "trial_id", "config_id", "arch_id", "rule", "role", "seed", "status", "reason", "measure",
    *_METRICS,
    *COST_COLUMNS,
    "dataset", "model", "width", "depth", "T", "batch", "epochs", "epochs_done",
    "loss_kind", "loss_steps", "patience", "epochs_trained", "best_epoch", "stopped_by",
    "alpha_pre", "alpha_post", "lambda_pre", "lambda_post", "learn_steps", "learning_signal", "lr",
    "wall_time_s", "run_time_s", "samples_per_s", "node", "started_at", "ended_at", "counting", "bytes_per_value",
    "config_json", "params_json", "curves_json", "pack_id", "pack_size",
    "pack_peak_step_bytes_measured_per_batch",
)

#: Columns stored as text (the rest are numbers).
TEXT_COLUMNS = ("study", "trial_id", "config_id", "arch_id", "rule", "role", "status", "reason", "measure", "dataset",
                "loss_kind", "stopped_by",
                "model", "learning_signal", "node", "started_at", "ended_at", "counting", "config_json",
                "params_json", "curves_json", "pack_id")

FACTORS = ("alpha_pre", "alpha_post", "lambda_pre", "lambda_post")


def run_row(study: str, trial_id: str, config_id: str, arch_id: str, role: str, config: Mapping[str, Any],
            status: str, reason: str = "", metrics: list[dict[str, Any]] | None = None,
            costs: Mapping[str, Any] | None = None, node: str = "", started_at: str = "",
            ended_at: str = "", params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One results row: every column of :data:`COLUMNS` (``None`` where unknown).

    Args:
        study, trial_id, config_id, arch_id, role: the run's identity.
        config: its :class:`~stllr_engine.experiment.ExperimentConfig` as a dict.
        status: one of :data:`STATUSES`; ``reason`` says why for any but ``complete``.
        metrics: the per-epoch metrics the engine yielded (the last one fills the row).
        costs: formula costs for a run never trained (``infeasible``).
        params: the searched parameters of its configuration.

    >>> cfg = {"seed": 0, "network": {"kind": "mlp", "width": 8, "depth": 1},
    ...        "training": {"rule": "bptt", "epochs": 2, "lr": 0.01},
    ...        "data": {"dataset": "digits", "batch_size": 4, "options": {"T": 16}}}
    >>> row = run_row("s", "c-s0", "c", "mlp|8|1|16", "baseline", cfg, "complete",
    ...               metrics=[{"epoch": 1, "val_accuracy": 0.5}, {"epoch": 2, "val_accuracy": 0.75}])
    >>> row["val_accuracy"], row["epochs_done"], set(COLUMNS) <= set(row)
    (0.75, 2, True)
    """
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    net, train, data = config["network"], config["training"], config["data"]
    rule = train["rule"]
    T = data.get("options", {}).get("T")
    row: dict[str, Any] = {c: None for c in COLUMNS}
    row.update(study=study, trial_id=trial_id, config_id=config_id, arch_id=arch_id, rule=rule, role=role,
               seed=int(config["seed"]), status=status, reason=reason, measure=measure_of(net["kind"]),
               dataset=data["dataset"],
               model=net["kind"], width=net["width"], depth=net["depth"], T=T, batch=data["batch_size"],
               epochs=train["epochs"], lr=train["lr"], patience=train.get("patience"),
               loss_kind=train.get("loss") or ("per_step" if rule == "stllr" else "sum_output"), node=node, started_at=started_at, ended_at=ended_at,
               config_json=json.dumps(config, sort_keys=True),
               params_json=json.dumps(dict(params or {}), sort_keys=True, default=str))
    if rule == "stllr":
        st = train["stllr"]
        row.update({k: st[k] for k in FACTORS}, learn_steps=st["learn_steps"], learning_signal=st["learning_signal"])
        if st.get("layer_factors"):  # every layer's factors: the overrides, the defaults elsewhere
            layers = int(net["depth"]) * (2 if net["kind"] in ("vgg", "flownet") else 1)
            overrides = {int(i): v for i, v in st["layer_factors"].items()}
            for i in range(max(layers, max(overrides) + 1)):
                for k in FACTORS:
                    v = overrides.get(i, {}).get(k)
                    row[f"layer{i}_{k}"] = st[k] if v is None else v
    for k, v in (costs or {}).items():
        if k in row or k.endswith(("_per_sample", "_per_batch")):
            row[k] = v
    metrics = metrics or []
    row["epochs_done"] = 0
    if metrics:
        last = metrics[-1]
        for k in (*_METRICS, "samples_per_s", "counting", "bytes_per_value", *COST_COLUMNS,
                  "pack_peak_step_bytes_measured_per_batch"):
            if k in last:
                row[k] = last[k]
        if rule == "bptt":
            row["learn_steps"] = last.get("learn_steps", T)
        if T is None:
            row["T"] = last.get("T")
        row["epochs_done"] = int(last.get("epoch", len(metrics)))
        for k in ("loss_kind", "loss_steps", "epochs_trained", "best_epoch", "stopped_by"):
            if last.get(k) is not None:
                row[k] = last[k]
        row["wall_time_s"] = float(sum(m.get("wall_time_s", 0.0) for m in metrics))
        row["curves_json"] = json.dumps([{k: v for k, v in m.items() if isinstance(v, (int, float, str, bool))
                                          or v is None} for m in metrics])
    return row


# -- reading the store (pandas, no Ray) ---------------------------------------------------


def read_results(folder: str | os.PathLike[str]) -> Any:
    """The results table of a study folder as a DataFrame (empty if none yet).

    An unreadable ``results.parquet`` is rebuilt in memory from the runs' ``row.json``
    files (the sweep's ledger rewrites it on its next open); ``df.attrs["rebuilt"]`` then
    says so.
    """
    import pandas as pd

    folder = os.fspath(folder)
    path = os.path.join(folder, "results.parquet")
    if not os.path.exists(path):
        rows = rows_from_files(folder)
        return frame(rows.values()) if rows else pd.DataFrame(columns=list(COLUMNS))
    try:
        return pd.read_parquet(path)
    except Exception:  # pyarrow raises several types for a damaged file
        df = frame(rows_from_files(folder).values())
        df.attrs["rebuilt"] = f"{path} cannot be read: rebuilt from {len(df)} runs/*/row.json files"
        return df


def rows_from_files(folder: str) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    runs = os.path.join(folder, "runs")
    for name in sorted(os.listdir(runs)) if os.path.isdir(runs) else []:
        path = os.path.join(runs, name, "row.json")
        try:
            with open(path) as fh:
                row = json.load(fh)
        except (OSError, ValueError):
            continue
        if isinstance(row, dict) and row.get("trial_id"):
            rows[str(row["trial_id"])] = row
    return rows


def frame(rows: Iterable[dict[str, Any]]) -> Any:
    import pandas as pd

    rows = list(rows)
    columns = list(COLUMNS)
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    df = pd.DataFrame(rows, columns=columns)
    for c in TEXT_COLUMNS:
        df[c] = df[c].astype("string")
    return df
