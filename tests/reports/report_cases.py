"""Synthetic study folders shaped like the runner's output (contract: results table, study.yaml).

Several architectures (width x depth) x S-TLLR configurations x seeds, a BPTT baseline per
architecture with the same arch_id, costs from the DESIGN §4 formulas, and rows that must
never reach an analysis: pruned runs with tempting half-trained accuracies, infeasible and
failed runs, and running rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml


def synthetic_runs(*, study: str = "synthetic", dataset: str = "shd", T: int = 20, widths=(64, 128, 256),
                   depths=(1, 2), stllr_configs: int = 4, seeds: int = 3, alpha_effect: float = 0.0,
                   width_effect: float = 0.01, noise: float = 0.01, learn_steps=(2, 5, 10, 20),
                   layer_factors: bool = False, seed: int = 0) -> pd.DataFrame:
    """Runs of one study. ``alpha_effect``: accuracy change per unit of alpha_post (S-TLLR)."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    n_in, classes = 70, 20
    k = 0
    for width in widths:
        for depth in depths:
            arch = f"rsnn|{width}|{depth}|{T}"
            neurons = width * depth
            syn = n_in * width + (depth - 1) * width * width + depth * width * width + width * classes
            configs: list[dict[str, Any]] = [{"rule": "bptt", "role": "baseline", "learn_steps": T}]
            for _ in range(stllr_configs):
                c: dict[str, Any] = {"rule": "stllr", "role": "search",
                                     "alpha_post": float(rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0])),
                                     "lambda_post": float(rng.uniform(0.1, 0.9)),
                                     "lambda_pre": float(rng.uniform(0.3, 1.0)),
                                     "alpha_pre": 1.0, "learn_steps": int(rng.choice(learn_steps))}
                if layer_factors:
                    for i in range(depth):
                        c[f"layer{i}_alpha_post"] = float(rng.uniform(-1, 1))
                configs.append(c)
            for c in configs:
                k += 1
                config_id = f"c{k:03d}"
                base = 0.70 + width_effect * np.log2(width / 64) + rng.normal(0, noise)
                if c["rule"] == "stllr":
                    base += alpha_effect * c["alpha_post"]
                    macs = (2 if c["alpha_post"] == 0 else 3) * c["learn_steps"] * syn
                    values = 2 * neurons
                else:
                    macs, values = 2 * T * syn, T * neurons
                for s in range(seeds):
                    acc = float(np.clip(base + rng.normal(0, noise), 0, 1))
                    row: dict[str, Any] = {
                        "study": study, "trial_id": f"{config_id}-s{s}", "config_id": config_id, "arch_id": arch,
                        "seed": s, "status": "complete", "reason": "", "dataset": dataset, "model": "rsnn",
                        "width": width, "depth": depth, "T": T, "batch": 32, "epochs": 5, "epochs_done": 5,
                        "val_accuracy": acc, "test_accuracy": float(np.clip(acc + rng.normal(-0.01, noise), 0, 1)),
                        "val_loss": 1.0 - acc, "test_loss": 1.0 - acc, "train_accuracy": acc + 0.05,
                        "forward_macs_formula_per_sample": T * syn,
                        "learning_macs_formula_per_sample": float(macs),
                        "learning_macs_measured_per_sample": float(macs) * 1.02,
                        "learning_memory_values_formula_per_sample": float(values),
                        "learning_memory_bytes_formula_per_sample": 4.0 * values,
                        "learning_memory_bytes_measured_per_sample": 4.0 * values * 1.1 + 64,
                        "learning_memory_bytes_measured_per_batch": 32 * (4.0 * values * 1.1 + 64),
                        "peak_step_bytes_measured_per_batch": 32 * 4.0 * values * 1.2,
                        "lr": 1e-3, "learning_signal": "bp" if c["rule"] == "stllr" else None,
                        "wall_time_s": 1e-7 * macs * (1 + 0.05 * rng.random()) + 2.0,
                        "samples_per_s": 1000.0, "node": "host", "config_json": json.dumps({"seed": s}),
                        "curves_json": "[]", "started_at": "2026-01-01T00:00:00", "ended_at": "2026-01-01T00:01:00",
                        **{key: c.get(key, np.nan) for key in ("rule", "role", "alpha_pre", "alpha_post",
                                                                 "lambda_pre", "lambda_post", "learn_steps")},
                        **{key: v for key, v in c.items() if key.startswith("layer")},
                    }
                    rows.append(row)
    good = pd.DataFrame(rows)
    # rows that must never reach the frontier: tempting accuracies, tiny costs
    bad = []
    for status in ("pruned", "infeasible", "failed", "running"):
        r = good.iloc[0].to_dict()
        r.update({"trial_id": f"{status}-0", "config_id": f"x-{status}", "status": status, "reason": status,
                  "val_accuracy": 0.999 if status != "infeasible" else np.nan, "test_accuracy": 0.999,
                  "learning_macs_formula_per_sample": 1.0, "learning_memory_bytes_formula_per_sample": 1.0})
        bad.append(r)
    return pd.concat([good, pd.DataFrame(bad)], ignore_index=True)


def write_study(folder: Path, runs: pd.DataFrame, *, name: str = "synthetic", dataset: str | None = "shd",
                objectives: list[dict[str, str]] | None = None, extra: dict[str, Any] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"name": name}
    if dataset is not None:
        doc["dataset"] = {"name": dataset, "T": 20}
    if objectives is not None:
        doc["objectives"] = objectives
    doc.update(extra or {})
    (folder / "study.yaml").write_text(yaml.safe_dump(doc))
    runs.to_parquet(folder / "results.parquet", index=False)
    return folder


def fair_runs(*, study: str = "fair", dataset: str = "digits", T: int = 16, widths=(64, 128), depths=(1, 2),
              seeds: int = 5, search_configs: int = 3, lr_trials: int = 2, tuned: bool = True,
              bptt_losses=("sum_output", "per_step"), stllr_losses=("per_step",),
              gain: dict[str, float] | None = None, seed_sd: float = 0.03,
              noise: float = 0.002, learn_steps: int = 4, max_epochs: int = 20, late: dict[str, int] | None = None,
              seed: int = 0) -> pd.DataFrame:
    """Complete runs of a study run as DESIGN §8 asks: per architecture S-TLLR's factor search (role
    ``search``), S-TLLR at its chosen factors with the same learning-rate search as BPTT (``tuned``,
    ``lr_trials`` configurations) and BPTT's learning-rate search per objective (``baseline``).

    Seed s shares its split across rules: a seed effect (sd ``seed_sd``) common to every run of
    seed s, so only a difference paired by seed sees a small rule effect. ``gain``: accuracy of
    each side over the architecture's base, keyed ``"stllr"`` and the BPTT objectives (default:
    S-TLLR +0.03, BPTT sum_output 0, per_step +0.03). Costs follow DESIGN §4; the measured counts
    differ from the formula ones (S-TLLR 0.8×, BPTT 0.9× MACs; memory measured 1.5× / 1.1× +64),
    so a ratio of measured counts is not the formula's. ``late``: how many runs of each side
    (``"stllr"``, ``"bptt"``) stopped at ``max_epochs`` (the others stopped by patience).
    ``stllr_losses``: the objectives S-TLLR's tuning runs on (``baseline.stllr_loss``); its gain
    on another than ``per_step`` is keyed ``"stllr_<loss>"`` (default: the same as ``"stllr"``).
    """
    rng = np.random.default_rng(seed)
    gain = {"stllr": 0.03, "sum_output": 0.0, "per_step": 0.03, "per_step_all": 0.01, **(gain or {})}
    late = dict(late or {"stllr": 1, "bptt": 3})
    seed_effect = rng.normal(0, seed_sd, seeds)
    rows: list[dict[str, Any]] = []
    k = 0
    n_in, classes = 64, 10
    for width in widths:
        for depth in depths:
            arch = f"mlp|{width}|{depth}|{T}"
            base = 0.80 + 0.02 * np.log2(width / 64) + 0.01 * (depth - 1)
            neurons = width * depth + classes
            syn = n_in * width + (depth - 1) * width * width + width * classes
            factors = {"alpha_pre": 1.0, "alpha_post": -0.5, "lambda_pre": 0.8, "lambda_post": 0.3}
            configs: list[dict[str, Any]] = []
            for i in range(search_configs):  # worse than the tuned ones: only its best is kept
                configs.append({"rule": "stllr", "role": "search", "loss_kind": "per_step", "lr": 1e-3,
                                "acc": base + gain["stllr"] - 0.05 - 0.01 * i, "alpha_post": float(rng.uniform(-1, 1))})
            for loss in stllr_losses:
                own = gain["stllr"] if loss == "per_step" else gain.get(f"stllr_{loss}", gain["stllr"])
                for i in range(lr_trials if tuned else 0):
                    configs.append({"rule": "stllr", "role": "tuned", "loss_kind": loss, "lr": 1e-3 * (3 ** i),
                                    "acc": base + own - 0.01 * i, **factors})
            for loss in bptt_losses:
                for i in range(lr_trials):
                    configs.append({"rule": "bptt", "role": "baseline", "loss_kind": loss, "lr": 1e-3 * (3 ** i),
                                    "acc": base + gain[loss] - 0.01 * i})
            for c in configs:
                k += 1
                config_id = f"{c['rule'][0]}{k:03d}"
                stllr = c["rule"] == "stllr"
                macs = 3 * learn_steps * syn if stllr else 2 * T * syn
                values = 2 * neurons if stllr else T * neurons
                for s in range(seeds):
                    acc = float(np.clip(c["acc"] + seed_effect[s] + rng.normal(0, noise), 0, 1))
                    rows.append({
                        "study": study, "trial_id": f"{config_id}-s{s}", "config_id": config_id, "arch_id": arch,
                        "seed": s, "status": "complete", "reason": "", "dataset": dataset, "model": "mlp",
                        "width": width, "depth": depth, "T": T, "batch": 64, "epochs": max_epochs,
                        "rule": c["rule"], "role": c["role"], "loss_kind": c["loss_kind"], "lr": c["lr"],
                        "learn_steps": learn_steps if stllr else T,
                        **{f: (c.get(f, factors[f]) if stllr else np.nan) for f in factors},
                        "val_accuracy": acc, "test_accuracy": float(np.clip(acc - 0.005, 0, 1)),
                        "val_loss": 1.0 - acc, "test_loss": 1.0 - acc, "train_accuracy": acc + 0.05,
                        "forward_macs_formula_per_sample": T * syn,
                        "learning_macs_formula_per_sample": float(macs),
                        "learning_macs_measured_per_sample": float(macs) * (0.8 if stllr else 0.9),
                        "learning_memory_values_formula_per_sample": float(values),
                        "learning_memory_bytes_formula_per_sample": 4.0 * values,
                        "learning_memory_bytes_measured_per_sample": 4.0 * values * (1.5 if stllr else 1.1) + 64,
                        "learning_memory_bytes_measured_per_batch": 64 * 4.0 * values,
                        "peak_step_bytes_measured_per_batch": 64 * 4.0 * values * 1.2,
                        "learning_signal": "bp" if stllr else None, "epochs_done": max_epochs,
                        "epochs_trained": max_epochs, "best_epoch": max_epochs - 3, "stopped_by": "patience",
                        "wall_time_s": 1e-7 * macs + 1.0, "samples_per_s": 1000.0, "node": "host",
                        "config_json": json.dumps({"seed": s, "training": {"rule": c["rule"], "loss": c["loss_kind"]}}),
                        "curves_json": "[]", "started_at": "2026-01-01T00:00:00", "ended_at": "2026-01-01T00:01:00"})
    df = pd.DataFrame(rows)
    for rule, n in late.items():  # the chosen (best) configurations' runs are the first to be flagged
        idx = df[(df["rule"] == rule) & df["role"].isin(["tuned", "baseline"])].sort_values(
            "val_accuracy", ascending=False).index[:n]
        df.loc[idx, "stopped_by"] = "max_epochs"
        df.loc[idx, "best_epoch"] = max_epochs
    return df


def write_floors(folder: Path, *, dataset: str = "digits", chance: float = 0.1, val: float = 0.93,
                 test: float = 0.94) -> Path:
    """``floors.json`` as the sweep writes it (chance, a linear read-out of the input frames)."""
    path = folder / "floors.json"
    path.write_text(json.dumps({"dataset": dataset, "chance": chance, "uniform_chance": chance,
                                "linear_readout": {"val_accuracy": val, "test_accuracy": test, "l2": 0.01},
                                "features": "input frames flattened (T x C = 16 x 64 = 1024)",
                                "method": "multinomial logistic regression"}))
    return path


def flow_runs(runs: pd.DataFrame, *, zero_aee: float = 2.0, scale: float = 5.0) -> pd.DataFrame:
    """A classification study's rows (e.g. :func:`fair_runs`) turned into a flow study's, as the
    study side writes them: ``measure == "aee"``, ``val_aee``/``test_aee`` = ``scale`` · (1 − accuracy)
    px (so the more accurate run has the lower AEE), ``test_outliers_pct``, the no-motion AEE
    ``test_zero_aee`` (the same for every run of the dataset), losses; the accuracy columns NaN.
    """
    df = runs.copy()
    df["measure"] = "aee"
    df["val_aee"] = scale * (1.0 - df["val_accuracy"].astype(float))
    df["test_aee"] = scale * (1.0 - df["test_accuracy"].astype(float))
    df["test_outliers_pct"] = 100.0 * (df["test_aee"] / (df["test_aee"] + 3.0))
    df["test_zero_aee"] = zero_aee
    df["val_loss"], df["test_loss"] = df["val_aee"], df["test_aee"]
    for col in ("val_accuracy", "test_accuracy", "train_accuracy"):
        df[col] = np.nan
    return df
