"""Read study folders: ``results.parquet`` (one row per run) and the frozen ``study.yaml``.

Reports read only these two files, never Ray's internals. A study may still be running: its
``running`` rows are kept in the status counts and ignored everywhere else, and a
``results.parquet`` that the runner replaces atomically is read from one snapshot of bytes.
"""

from __future__ import annotations

import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from stllr_engine.errors import StllrError
from study.schema import DEFAULT_OBJECTIVES as _DEFAULT_OBJECTIVES
from study.schema import COLUMNS as _COLUMNS
from study.schema import STATUSES, rows_from_files
from study.schema import TEXT_COLUMNS as _TEXT_COLUMNS
from study.schema import frame as _frame

#: Text columns of the results table (study.schema), with the ones the report derives or that
#: newer sweeps write (an older table lacks them: they are derived or left empty).
TEXT_COLUMNS = tuple(dict.fromkeys(_TEXT_COLUMNS + ("stllr_mode", "loss_kind", "stopped_by", "measure")))
#: Numeric columns: the rest of the schema's, with the derived and the newer ones.
NUMERIC_COLUMNS = tuple(dict.fromkeys(tuple(c for c in _COLUMNS if c not in TEXT_COLUMNS)
                                      + ("late_train_gain", "epochs_trained", "best_epoch")))
#: Metric columns of a flow study (``measure == "aee"``), read as numbers where a table has them.
AEE_COLUMNS = ("val_aee", "test_aee", "test_outliers_pct", "test_zero_aee")
REQUIRED_COLUMNS = ("trial_id", "config_id", "rule", "status")
#: The objective each rule minimises when a row does not say (the engine's defaults, DESIGN §8).
DEFAULT_LOSS = {"stllr": "per_step", "bptt": "sum_output"}
#: What the sweep measures per task beside the runs (chance, a linear read-out; DESIGN §8).
FLOORS_FILE = "floors.json"


@dataclass(frozen=True)
class Objective:
    """One objective of a study: a results column and whether it is maximised."""

    metric: str
    direction: str  # "maximize" | "minimize"

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"


DEFAULT_OBJECTIVES = tuple(Objective(m, d) for m, d in _DEFAULT_OBJECTIVES)


@dataclass(frozen=True)
class Study:
    """One study folder as the report sees it."""

    dir: Path
    name: str
    dataset: str | None
    objectives: tuple[Objective, ...]
    runs: pd.DataFrame  # every row of results.parquet, statuses included
    description: str = ""
    floors: dict | None = None  # floors.json (chance, linear read-out), None when not measured


def _read_parquet(path: Path, folder: Path) -> pd.DataFrame:
    last: Exception | None = None
    for attempt in range(3):  # a non-atomic writer may be mid-write: read again shortly after
        try:
            return pd.read_parquet(io.BytesIO(path.read_bytes()))
        except FileNotFoundError:
            raise StllrError(f"report: {folder} has no results.parquet; pass a study folder written by "
                             f"`stllr sweep` (or wait until its first run has finished)") from None
        except Exception as exc:  # pyarrow raises several types for a damaged file
            last = exc
            time.sleep(0.2 * (attempt + 1))
    rows = rows_from_files(str(folder))
    if rows:  # every run keeps its own row.json: the table is rebuilt from them
        df = _frame(rows.values())
        df.attrs["rebuilt"] = (f"{path.name} could not be read; the {len(df)} runs' row.json files were read "
                               "instead (the next `stllr sweep --resume` rewrites it)")
        return df
    first = str(last).strip().splitlines()[0] if str(last).strip() else type(last).__name__
    raise StllrError(f"report: {path} cannot be read as parquet ({first[:160]}); the file is damaged: "
                     f"re-run the study or restore the file")


_DIRECTIONS = {"maximize": "maximize", "max": "maximize", "minimize": "minimize", "min": "minimize"}


def _objectives(raw: Any, path: Path) -> tuple[Objective, ...]:
    if not isinstance(raw, list) or not raw:
        return DEFAULT_OBJECTIVES
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("metric"), str):
            raise StllrError(f"report: {path}: objectives[{i}] must be a mapping with a 'metric' name "
                             f"and a 'direction' (maximize|minimize)")
        direction = _DIRECTIONS.get(str(item.get("direction", "")).lower())
        if direction is None:
            raise StllrError(f"report: {path}: objectives[{i}].direction is {item.get('direction')!r}; "
                             f"use maximize or minimize")
        out.append(Objective(item["metric"], direction))
    return tuple(out)


def _read_study_yaml(folder: Path) -> tuple[str | None, str | None, tuple[Objective, ...], str]:
    path = folder / "study.yaml"
    if not path.is_file():
        return None, None, DEFAULT_OBJECTIVES, ""
    try:
        doc = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise StllrError(f"report: {path} is not valid YAML ({str(exc).splitlines()[0]}); "
                         f"restore the frozen study file") from None
    if not isinstance(doc, dict):
        return None, None, DEFAULT_OBJECTIVES, ""
    name = doc.get("name")
    data = doc.get("dataset")
    dataset = data.get("name") if isinstance(data, dict) else (data if isinstance(data, str) else None)
    description = doc.get("description")
    return (str(name) if name is not None else None, str(dataset) if dataset is not None else None,
            _objectives(doc.get("objectives"), path), description if isinstance(description, str) else "")


def _stllr_mode(config_json: Any, rule: Any) -> str | None:
    """S-TLLR's implementation mode (``window`` / ``streaming``) from a row's ``config_json``."""
    if str(rule).lower() != "stllr":
        return None
    try:
        stllr = json.loads(config_json)["training"].get("stllr")
    except (TypeError, ValueError, KeyError, AttributeError):
        return None
    mode = stllr.get("mode", "window") if isinstance(stllr, dict) else None
    return mode if isinstance(mode, str) else None


#: Epochs over which :func:`late_gain` looks for a run that is still learning.
LATE_EPOCHS = 2


def late_gain(curves_json: Any, key: str = "train_accuracy", epochs: int = LATE_EPOCHS) -> float:
    """How much ``key`` rose over a run's last ``epochs`` epochs (NaN without such a curve).

    A run whose training accuracy still climbs at its last epoch was stopped by the budget,
    not by convergence: a comparison between rules at that budget is about learning speed.
    """
    try:
        curve = [float(m[key]) for m in json.loads(curves_json) if m.get(key) is not None]
    except (TypeError, ValueError, KeyError, AttributeError):
        return float("nan")
    return curve[-1] - curve[-1 - epochs] if len(curve) > epochs else float("nan")


def _loss_kind(config_json: Any, rule: Any) -> str | None:
    """The objective a run minimised, from its ``config_json`` (``training.loss``; unset is the rule's own)."""
    rule = str(rule).lower()
    try:
        loss = json.loads(config_json)["training"].get("loss")
    except (TypeError, ValueError, KeyError, AttributeError):
        loss = None
    return loss if isinstance(loss, str) else DEFAULT_LOSS.get(rule)


def last_epoch(curves_json: Any, key: str) -> Any:
    """``key`` of a run's last epoch in ``curves_json`` (None without it)."""
    try:
        curve = json.loads(curves_json)
        return curve[-1].get(key) if curve else None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError):
        return None


def _fill_from_curves(df: pd.DataFrame, col: str) -> None:
    """A column newer sweeps write, filled from the last epoch of ``curves_json`` where missing."""
    have = df[col] if col in df.columns else pd.Series([None] * len(df), index=df.index, dtype=object)
    if "curves_json" in df.columns:
        missing = have.isna()
        if missing.any():
            have = have.astype(object)
            have[missing] = [last_epoch(c, col) for c in df.loc[missing, "curves_json"]]
    df[col] = have


def _normalise(df: pd.DataFrame, name: str, dataset: str | None, path: Path) -> pd.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise StllrError(f"report: {path} lacks column(s) {', '.join(missing)}; it was not written by "
                         f"`stllr sweep` (see the results table in the contract)")
    df = df.copy()
    if "stllr_mode" not in df.columns and "config_json" in df.columns:
        df["stllr_mode"] = [_stllr_mode(c, r) for c, r in zip(df["config_json"], df["rule"])]
    if "late_train_gain" not in df.columns:
        df["late_train_gain"] = [late_gain(c) for c in df["curves_json"]] if "curves_json" in df.columns else np.nan
    for col in ("loss_kind", "stopped_by", "epochs_trained", "best_epoch"):
        _fill_from_curves(df, col)
    if df["loss_kind"].isna().any():  # older tables: from the config, else the rule's own objective
        missing = df["loss_kind"].isna()
        cfgs = df["config_json"] if "config_json" in df.columns else pd.Series([None] * len(df), index=df.index)
        df.loc[missing, "loss_kind"] = [_loss_kind(c, r) for c, r in zip(cfgs[missing], df.loc[missing, "rule"])]
    for col in NUMERIC_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce") if col in df.columns else np.nan
    for col in AEE_COLUMNS:
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    if "measure" not in df.columns and "val_aee" in df.columns and df["val_aee"].notna().any() \
            and not df["val_accuracy"].notna().any():
        df["measure"] = "aee"  # a flow table written before the measure column: its AEE columns say so
    for col in df.columns:
        if col.startswith("layer") and col not in TEXT_COLUMNS:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    for col in TEXT_COLUMNS:
        if col not in df.columns:
            df[col] = None
        df[col] = df[col].astype(object).where(df[col].notna(), None)
    df["study"] = name  # one label per folder, as the study file names it
    if dataset is not None:
        df["dataset"] = df["dataset"].where(df["dataset"].notna(), dataset)
    df["dataset"] = df["dataset"].where(df["dataset"].notna(), "unknown")
    for col in ("trial_id", "config_id", "arch_id", "rule", "status", "role"):
        df[col] = df[col].map(lambda v: None if v is None else str(v))
    df["rule"] = df["rule"].str.lower()
    df["status"] = df["status"].str.lower()
    df["arch_id"] = df["arch_id"].where(df["arch_id"].notna(), df["config_id"])
    done = df["epochs_done"].where(df["epochs_done"] > 0)
    df["time_per_epoch_s"] = df["wall_time_s"] / done
    return df.reset_index(drop=True)


def load_study(folder: str | Path) -> Study:
    """Load one study folder.

    Raises:
        StllrError: the folder, its ``results.parquet`` or its ``study.yaml`` is missing or damaged
            (one line naming the folder).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise StllrError(f"report: study folder {folder} does not exist; pass the folder given to `stllr sweep --out`")
    name, dataset, objectives, description = _read_study_yaml(folder)
    path = folder / "results.parquet"
    df = _read_parquet(path, folder)
    rebuilt = df.attrs.get("rebuilt")
    label = name or (str(df["study"].dropna().iloc[0]) if "study" in df.columns and df["study"].notna().any()
                     else folder.resolve().name)
    df = _normalise(df, label, dataset, path)
    for obj in objectives:
        if obj.metric not in df.columns:
            raise StllrError(f"report: {folder / 'study.yaml'}: objective metric {obj.metric!r} is not a column "
                             f"of results.parquet; use one of the contract's metric columns")
    if rebuilt:
        df.attrs["rebuilt"] = rebuilt
    return Study(folder, label, dataset, objectives, df, description, read_floors(folder))


def read_floors(folder: str | Path) -> dict | None:
    """``floors.json`` of a study folder, or None when it is absent or unreadable (older studies).

    Kept: ``dataset``, ``chance``, ``linear_readout`` (``val_accuracy``, ``test_accuracy``), and
    when present ``count_readout``, ``features``, ``method``. A value that is not a number is NaN.
    """
    try:
        doc = json.loads((Path(folder) / FLOORS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or "chance" not in doc or not isinstance(doc.get("linear_readout"), dict):
        return None

    def num(x: Any) -> float:
        return float(x) if is_finite(x) else float("nan")

    out: dict[str, Any] = {"dataset": str(doc["dataset"]) if doc.get("dataset") is not None else None,
                           "chance": num(doc["chance"]),
                           "features": str(doc.get("features") or ""), "method": str(doc.get("method") or "")}
    for key in ("linear_readout", "count_readout"):
        r = doc.get(key)
        if isinstance(r, dict):
            out[key] = {"val_accuracy": num(r.get("val_accuracy")), "test_accuracy": num(r.get("test_accuracy"))}
    return out


def floors_by_dataset(studies: list[Study]) -> dict[str, dict]:
    """The floors of each dataset: those of the first study that measured them."""
    out: dict[str, dict] = {}
    for s in studies:
        if s.floors is None:
            continue
        names = {s.floors.get("dataset") or s.dataset}
        names |= set(s.runs["dataset"].unique()) if len(s.runs) and not s.floors.get("dataset") else set()
        for d in names:
            if d is not None:
                out.setdefault(str(d), s.floors)
    return out


def load_studies(folders: list[str | Path] | tuple[str | Path, ...]) -> list[Study]:
    """Load several study folders; two folders with the same study name get distinct labels."""
    if not folders:
        raise StllrError("report: no study folder given; pass at least one DIR")
    studies = [load_study(f) for f in folders]
    seen: dict[str, int] = {}
    out = []
    for s in studies:
        n = seen.get(s.name, 0)
        seen[s.name] = n + 1
        if n:
            label = f"{s.name} ({n + 1})"
            runs = s.runs.assign(study=label)
            s = Study(s.dir, label, s.dataset, s.objectives, runs, s.description, s.floors)
        out.append(s)
    return out


def all_runs(studies: list[Study]) -> pd.DataFrame:
    """Every row of every study (for status counts)."""
    frames = [s.runs for s in studies]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def complete_runs(studies: list[Study]) -> pd.DataFrame:
    """Only the finished runs: pruned, infeasible, failed and running rows never reach an analysis."""
    runs = all_runs(studies)
    return runs[runs["status"] == "complete"].reset_index(drop=True)


def status_counts(studies: list[Study]) -> pd.DataFrame:
    """Runs per study and status, with the number of configurations that have a complete run."""
    rows = []
    for s in studies:
        r = s.runs
        row: dict[str, Any] = {"study": s.name, "folder": str(s.dir), "dataset": ", ".join(sorted(r["dataset"].unique()))
                               if len(r) else (s.dataset or "unknown")}
        for st in STATUSES:
            row[st] = int((r["status"] == st).sum())
        row["other"] = int((~r["status"].isin(STATUSES)).sum())
        row["runs"] = len(r)
        row["configurations_complete"] = int(r.loc[r["status"] == "complete", "config_id"].nunique())
        rows.append(row)
    return pd.DataFrame(rows)


def objectives_by_dataset(studies: list[Study]) -> dict[str, tuple[Objective, ...]]:
    """The objectives to rank each dataset's runs by: those of the first study that ran it."""
    out: dict[str, tuple[Objective, ...]] = {}
    for s in studies:
        for d in s.runs["dataset"].unique() if len(s.runs) else [s.dataset or "unknown"]:
            out.setdefault(str(d), s.objectives)
    return out


def is_finite(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False
