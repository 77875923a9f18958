"""The study's results table: ``DIR/results.parquet``, one row per run (configuration × seed).

Readable with pandas alone (no Ray): ``pandas.read_parquet("DIR/results.parquet")``.
Rows are keyed by ``trial_id``; a later row for the same run replaces the earlier one
(``running`` → ``complete``). Every write goes to a temporary file that is fsynced and
renamed over the table, so a reader — or a killed writer — never sees a torn file.

Columns (see ``COLUMNS``): identity (``study``, ``trial_id``, ``config_id``, ``arch_id``,
``rule``, ``role``, ``seed``), outcome (``status`` — complete / pruned / infeasible /
failed / running — and ``reason``), accuracies (``val_accuracy`` is what studies select
on, ``test_accuracy`` is reported, never optimised), the engine's named costs, the
configuration's settings, ``wall_time_s`` (training, summed over epochs), ``run_time_s``
(the whole run: data, training, evaluation), ``node``, ``config_json`` (the full
:class:`~stllr_engine.experiment.ExperimentConfig`) and ``curves_json`` (per-epoch metrics).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Iterable, Mapping

from stllr_engine.errors import StllrError

__all__ = ["COLUMNS", "COST_COLUMNS", "ResultsStore", "run_row", "read_results", "STATUSES"]

STATUSES = ("complete", "pruned", "infeasible", "failed", "running")

COST_COLUMNS = [
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
]

COLUMNS = [
    "study", "trial_id", "config_id", "arch_id", "rule", "role", "seed", "status", "reason",
    "val_accuracy", "test_accuracy", "val_loss", "test_loss", "train_accuracy", "train_loss",
    *COST_COLUMNS,
    "dataset", "model", "width", "depth", "T", "batch", "epochs", "epochs_done",
    "alpha_pre", "alpha_post", "lambda_pre", "lambda_post", "learn_steps", "learning_signal", "lr",
    "wall_time_s", "run_time_s", "samples_per_s", "node", "started_at", "ended_at", "counting", "bytes_per_value",
    "config_json", "params_json", "curves_json",
]

_FACTORS = ("alpha_pre", "alpha_post", "lambda_pre", "lambda_post")


def run_row(study: str, trial_id: str, config_id: str, arch_id: str, role: str, config: Mapping[str, Any],
            status: str, reason: str = "", metrics: list[dict[str, Any]] | None = None,
            costs: Mapping[str, Any] | None = None, node: str = "", started_at: str = "",
            ended_at: str = "", wall_time_s: float | None = None,
            params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One results row from an experiment config (as a dict) and its per-epoch metrics.

    ``costs`` fills the cost columns when there are no metrics (an infeasible
    configuration is priced by the formulas but never trained).
    """
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    net, train, data = config["network"], config["training"], config["data"]
    rule = train["rule"]
    T = data.get("options", {}).get("T")
    row: dict[str, Any] = {c: None for c in COLUMNS}
    row.update(study=study, trial_id=trial_id, config_id=config_id, arch_id=arch_id, rule=rule, role=role,
               seed=int(config["seed"]), status=status, reason=reason, dataset=data["dataset"],
               model=net["kind"], width=net["width"], depth=net["depth"], T=T, batch=data["batch_size"],
               epochs=train["epochs"], lr=train["lr"], node=node, started_at=started_at, ended_at=ended_at,
               config_json=json.dumps(config, sort_keys=True),
               params_json=json.dumps(dict(params or {}), sort_keys=True, default=str))
    if rule == "stllr":
        st = train["stllr"]
        row.update({k: st[k] for k in _FACTORS}, learn_steps=st["learn_steps"],
                   learning_signal=st["learning_signal"])
        for idx, over in (st.get("layer_factors") or {}).items():
            for k, v in over.items():
                row[f"layer{idx}_{k}"] = v
        if st.get("layer_factors"):  # the layers without overrides take the defaults
            for i in range(int(net["depth"]) * (2 if net["kind"] == "vgg" else 1)):
                for k in _FACTORS:
                    row.setdefault(f"layer{i}_{k}", st[k])
                    if row[f"layer{i}_{k}"] is None:
                        row[f"layer{i}_{k}"] = st[k]
    for k, v in (costs or {}).items():
        if k in row or k.endswith(("_per_sample", "_per_batch")):
            row[k] = v
    metrics = metrics or []
    if metrics:
        last = metrics[-1]
        for k in ("val_accuracy", "test_accuracy", "val_loss", "test_loss", "train_accuracy", "train_loss",
                  "samples_per_s", "counting", "bytes_per_value", *COST_COLUMNS):
            if k in last:
                row[k] = last[k]
        if rule == "bptt":
            row["learn_steps"] = last.get("learn_steps", T)
        if T is None:
            row["T"] = last.get("T")
        row["epochs_done"] = int(last.get("epoch", len(metrics)))
        row["wall_time_s"] = float(sum(m.get("wall_time_s", 0.0) for m in metrics))
        row["curves_json"] = json.dumps([{k: v for k, v in m.items() if isinstance(v, (int, float, str, bool))
                                          or v is None} for m in metrics])
    else:
        row["epochs_done"] = 0
    if wall_time_s is not None:
        row["wall_time_s"] = wall_time_s
    return row


def read_results(folder: str | os.PathLike[str]) -> Any:
    """The results table of a study folder as a pandas DataFrame (empty if none yet)."""
    import pandas as pd

    path = os.path.join(os.fspath(folder), "results.parquet")
    if not os.path.exists(path):
        return pd.DataFrame(columns=COLUMNS)
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise StllrError(f"{path} cannot be read ({type(exc).__name__}): it is damaged; "
                         "the runs' checkpoints under runs/ are intact") from None


class ResultsStore:
    """Rows keyed by ``trial_id``, written atomically to ``DIR/results.parquet``."""

    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = os.fspath(folder)
        self.path = os.path.join(self.folder, "results.parquet")
        df = read_results(self.folder)
        self.rows: dict[str, dict[str, Any]] = {}
        for rec in df.to_dict("records"):
            self.rows[str(rec["trial_id"])] = {k: _clean(v) for k, v in rec.items()}

    def upsert(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self.rows[str(row["trial_id"])] = dict(row)
        self.write()

    def write(self) -> None:
        import pandas as pd

        columns = list(COLUMNS)
        for row in self.rows.values():
            for k in row:
                if k not in columns:
                    columns.append(k)
        df = pd.DataFrame(list(self.rows.values()), columns=columns)
        for c in ("config_json", "params_json", "curves_json", "reason", "node", "counting"):
            df[c] = df[c].astype("string")
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".results-", suffix=".parquet")
        os.close(fd)
        try:
            df.to_parquet(tmp, index=False)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def by_status(self, status: str) -> list[dict[str, Any]]:
        return [r for r in self.rows.values() if r.get("status") == status]

    def export_csv(self, path: str | os.PathLike[str]) -> str:
        import pandas as pd

        df = pd.DataFrame(list(self.rows.values()))
        df.to_csv(path, index=False)
        return os.fspath(path)


def _clean(v: Any) -> Any:
    try:
        import pandas as pd

        if v is pd.NA or (isinstance(v, float) and v != v):
            return None
    except ImportError:
        pass
    if hasattr(v, "item"):
        return v.item()
    return v
