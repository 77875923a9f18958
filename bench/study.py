"""``stllr bench study``: what the platform costs on top of the runs it schedules.

A quickstart-sized sweep (12 S-TLLR configurations on the embedded digits task, one seed,
no baselines, 2 concurrent runs of one CPU each) whose runs last about ``--run-seconds``
each (the number of epochs is calibrated in-process first). It prints the sweep's wall
time (Ray start-up included), the summed run time (each run's own ``run_time_s``: data,
training and evaluation, measured inside the run) and

    overhead = 1 − (summed run time / concurrency) / wall time

(JSON field ``overhead``). Target: ≤ 15%.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

import yaml

from bench.common import add_output_arguments, report, target

TARGET_OVERHEAD = 0.15

NET = {"kind": "mlp", "depth": 1, "gamma": 0.9, "theta": 0.5, "surrogate": "sigmoid", "gamma_o": 0.95}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--configs", type=int, default=12, help="S-TLLR configurations (default 12)")
    p.add_argument("--run-seconds", type=float, default=20.0, help="target duration of one run (default 20)")
    p.add_argument("--concurrency", type=int, default=2, help="concurrent runs (default 2, one CPU each)")
    add_output_arguments(p)
    p.add_argument("--out", help="keep the study folder here (default: a temporary folder)")


def _epoch_seconds(width: int) -> float:
    """One epoch of the benchmark's network, measured in-process (2nd epoch: warm)."""
    import torch

    from stllr_engine.experiment import ExperimentConfig, run_experiment

    threads = torch.get_num_threads()
    cfg = ExperimentConfig.for_dataset(
        "digits", {"T": 16}, network={**NET, "width": width},
        training={"epochs": 2, "lr": 3e-3, "measure_costs": False,
                  "stllr": {"learn_steps": 8, "lambda_pre": 1.0, "alpha_post": 1.0}},
        data={"batch_size": 64, "val_fraction": 0.2}, runtime={"threads": 1})
    try:
        times = [time.perf_counter()]
        for _ in run_experiment(cfg):
            times.append(time.perf_counter())
    finally:
        torch.set_num_threads(threads)
    return times[2] - times[1]


def study_file(configs: int, epochs: int, concurrency: int) -> dict[str, Any]:
    return {
        "name": "bench_study",
        "dataset": {"name": "digits", "options": {"T": 16}},
        "model": {"kind": "mlp", "fixed": {k: v for k, v in NET.items() if k != "kind"}},
        "rules": ["stllr"],
        "search": {
            "width": {"type": "categorical", "choices": [128]},
            "alpha_post": {"type": "float", "low": -1.0, "high": 1.0},
            "lambda_post": {"type": "float", "low": 0.0, "high": 1.0},
            "learn_steps": {"type": "int", "low": 4, "high": 16},
        },
        "fixed": {"training": {"lr": 3e-3}, "stllr": {"lambda_pre": 1.0},
                  "data": {"batch_size": 64, "val_fraction": 0.2}},
        "budget": {"trials": configs, "epochs": epochs, "seeds": [0]},
        "sampler": {"name": "random", "seed": 0},
        "resources": {"cpu": 1, "gpu": 0, "concurrency": concurrency},
    }


def execute(args: argparse.Namespace) -> int:
    from study.schema import read_results
    from study.runner import sweep

    per_epoch = _epoch_seconds(128)
    epochs = max(1, round(args.run_seconds / per_epoch))
    spec = study_file(args.configs, epochs, args.concurrency)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench_study.yaml")
        with open(path, "w") as fh:
            yaml.safe_dump(spec, fh)
        folder = args.out or os.path.join(tmp, "study")
        t0 = time.perf_counter()
        sweep(path, out=folder, quiet=True, report=False)
        wall = time.perf_counter() - t0
        df = read_results(folder)
    runs = df[df["status"] == "complete"]
    summed = float(runs["run_time_s"].sum())
    overhead = 1.0 - (summed / args.concurrency) / wall
    record = {"case": "study", "configs": int(len(runs)), "epochs_per_run": epochs,
              "mean_run_s": summed / max(1, len(runs)), "concurrency": args.concurrency,
              "wall_s": wall, "summed_run_s": summed, "overhead": overhead}
    note = None if len(runs) == args.configs else f"only {len(runs)} of {args.configs} runs completed"
    return report([record], [target("platform overhead 1 - (summed run / concurrency) / wall", overhead, "<=",
                                    TARGET_OVERHEAD)], args, list(record), note)
