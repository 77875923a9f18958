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
