"""``stllr bench learning``: both rules learn real and synthetic tasks on this CPU.

* ``digits``: scikit-learn's 8×8 handwritten digits, latency-coded into 16 steps
  (64 → 128 → 10 feed-forward SNN); target: each rule ≥ 90% test accuracy within 30 epochs.
* ``synthetic_temporal``: classes that differ only in spike timing/order (identical
  per-channel spike counts), a recurrent SNN; target: both rules well above chance.

Prints per dataset and rule: ``test_accuracy`` (best epoch and final), ``epochs``,
``wall_time_s`` (training only). ``--quick`` trains fewer epochs.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from torch.utils.data import DataLoader

from bench.common import add_output_arguments, report, target
from stllr_engine import NetworkSpec, STLLRConfig, TrainConfig, build_network, fit
from stllr_engine.datasets import FrameDataset, load_dataset

COLUMNS = ["dataset", "rule", "test_accuracy", "best_test_accuracy", "chance", "epochs", "wall_time_s", "samples_per_s"]

TASKS: dict[str, dict[str, Any]] = {
    "digits": {
        "data": {"T": 16},
        "net": dict(kind="mlp", width=128, depth=1, gamma=0.9, theta=0.5, surrogate="sigmoid", gamma_o=0.95),
        "stllr": STLLRConfig(learn_steps=8, lambda_pre=1.0, lambda_post=0.5, alpha_pre=1.0, alpha_post=1.0),
        "lr": 3e-3,
        "epochs": 30,
        "batch": 32,
        "target": 0.90,
    },
    "synthetic_temporal": {
        "data": {},
        "net": dict(kind="rsnn", width=64, depth=1, gamma=0.9, theta=0.5, surrogate="sigmoid", gamma_o=0.9),
        "stllr": STLLRConfig(learn_steps=20, lambda_pre=0.95, lambda_post=0.5, alpha_pre=1.0, alpha_post=1.0),
        "lr": 1e-3,
        "epochs": 30,
        "batch": 32,
        "target": None,  # "well above chance": 2× chance
    },
}


def train_task(name: str, rule: str, epochs: int | None = None, seed: int = 0) -> dict[str, Any]:
    task = TASKS[name]
    train, test = load_dataset(name, **task["data"])
    info = train.info
    spec = NetworkSpec(input_shape=info.input_shape, num_classes=info.num_classes, seed=seed, **task["net"])
    net = build_network(spec)
    n_epochs = epochs or task["epochs"]
    cfg = TrainConfig(rule=rule, stllr=task["stllr"], lr=task["lr"], epochs=n_epochs, seed=seed)
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(train, batch_size=task["batch"], shuffle=True, generator=g, collate_fn=FrameDataset.collate)
    test_loader = DataLoader(test, batch_size=256, collate_fn=FrameDataset.collate)
    t0 = time.perf_counter()
    history = list(fit(net, loader, cfg, test_loader=test_loader))
    total = time.perf_counter() - t0
    accs = [m["test_accuracy"] for m in history]
    return {
        "dataset": name, "rule": rule, "test_accuracy": accs[-1], "best_test_accuracy": max(accs),
        "chance": 1.0 / info.num_classes, "epochs": n_epochs,
        "epochs_to_target": next((i + 1 for i, a in enumerate(accs) if task["target"] and a >= task["target"]), None),
        "wall_time_s": sum(m["wall_time_s"] for m in history), "total_time_s": total,
        "samples_per_s": sum(m["samples_per_s"] for m in history) / len(history),
        "learning_macs_formula_per_sample": history[-1].get("learning_macs_formula_per_sample"),
        "learning_memory_bytes_measured_per_batch": history[-1].get("learning_memory_bytes_measured_per_batch"),
        "T": info.T, "train_samples": len(train), "test_samples": len(test),
    }


def run(quick: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    records, targets = [], []
    for name, task in TASKS.items():
        for rule in ("stllr", "bptt"):
            r = train_task(name, rule, epochs=10 if quick else None)
            records.append(r)
            if task["target"] is not None:
                targets.append(target(f"{name}, {rule}: test accuracy within {r['epochs']} epochs",
                                      r["test_accuracy"], ">=", task["target"]))
            else:
                targets.append(target(f"{name}, {rule}: test accuracy / chance", r["test_accuracy"] / r["chance"],
                                      ">=", 2.0))
    return records, targets


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--quick", action="store_true", help="10 epochs per task")
    add_output_arguments(ap)


def execute(args: argparse.Namespace) -> int:
    return report(*run(quick=args.quick), args, COLUMNS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="stllr bench learning", description=__doc__.split("\n")[0])
    add_arguments(ap)
    return execute(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
