"""Faults during a sweep, caused for real: a loss that turns NaN, a worker process killed
with SIGKILL in the middle of a run, a node without the dataset."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pandas as pd
import pytest

from study.runner import sweep
from study_cases import wait_for

pytestmark = pytest.mark.slow


def test_nan_loss_ends_the_run_as_failed_and_the_sweep_goes_on(study_file, tmp_path):
    # SGD at lr 1e38 overflows the weights: the loss is NaN within the first epoch
    path = study_file(search={"width": {"type": "categorical", "choices": [16]},
                              "lr": {"type": "categorical", "choices": [1e38, 3e-3]}},
                      fixed={"training": {"optimizer": "sgd"}, "stllr": {"learn_steps": 8},
                             "data": {"batch_size": 128, "val_fraction": 0.2}},
                      budget={"trials": 2, "epochs": 1, "seeds": [0]}, sampler={"name": "grid", "seed": 0},
                      rules=["stllr"], baseline=None)
    folder = tmp_path / "study"
    sweep(str(path), out=str(folder), quiet=True, report=False)
    df = pd.read_parquet(folder / "results.parquet")
    assert len(df) == 2
    bad = df[df.lr == 1e38].iloc[0]
    good = df[df.lr == 3e-3].iloc[0]
    assert bad.status == "failed" and "training diverged: the loss became" in bad.reason
    assert good.status == "complete" and good.val_accuracy > 0


def test_a_killed_worker_is_retried_from_its_last_checkpoint(study_file, tmp_path):
    path = study_file(search={"width": {"type": "categorical", "choices": [32]}},
                      budget={"trials": 1, "epochs": 6, "seeds": [0]}, rules=["stllr"], baseline=None,
                      sampler={"name": "random", "seed": 0})
    folder = tmp_path / "study"
    killed: dict[str, int] = {}

    def killer() -> None:
        def first_epoch_done():
            for name in os.listdir(folder / "runs") if (folder / "runs").exists() else []:
                curves = folder / "runs" / name / "curves.json"
                if curves.exists():
                    try:
                        epochs = [c["epoch"] for c in json.loads(curves.read_text())]
                    except ValueError:
                        return False
                    if epochs and max(epochs) >= 2:
                        killed["pid"] = int((folder / "runs" / name / "worker.pid").read_text())
                        return True
            return False

        wait_for(first_epoch_done, 240, "two epochs of the run", interval=0.05)
        os.kill(killed["pid"], signal.SIGKILL)  # the Ray worker running the trial dies mid-run

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    t0 = time.monotonic()
    sweep(str(path), out=str(folder), quiet=True, report=False)
    th.join(timeout=5)
    assert "pid" in killed, "the worker was never killed"
    df = pd.read_parquet(folder / "results.parquet")
    row = df.iloc[0]
    assert row.status == "complete", row.reason
    epochs = [c["epoch"] for c in json.loads(row.curves_json)]
    assert epochs == [1, 2, 3, 4, 5, 6]  # resumed: no epoch lost, none trained twice in the record
    assert int((folder / "runs" / row.trial_id / "worker.pid").read_text()) != killed["pid"]
    assert time.monotonic() - t0 < 400


def test_a_missing_dataset_on_the_worker_is_a_failed_run_with_the_reason(study_file, tmp_path):
    data = tmp_path / "data"
    (data / "SHD").mkdir(parents=True)  # the folder exists (the driver checks it) but holds no files
    path = study_file(dataset={"name": "shd", "data_dir": str(data), "options": {"T": 20}},
                      budget={"trials": 1, "epochs": 1, "seeds": [0]}, rules=["stllr"], baseline=None)
    from stllr_engine import StllrError

    with pytest.raises(StllrError) as err:
        sweep(str(path), out=str(tmp_path / "study"), quiet=True, report=False)
    assert "\n" not in str(err.value) and "SHD" in str(err.value)


def test_early_stopped_runs_are_pruned_and_never_complete(study_file, tmp_path):
    """Single objective with ASHA: runs stopped at a rung are recorded as pruned (rows and Optuna).

    One trial at a time, in the sampler's order (seed 4: lr 7e-3 first, then 5e-5, ...): the
    first one's values stand at every rung before a worse one reaches it, so ASHA's cutoff
    stops the worse ones whatever the machine's speed. (With two at a time, fast runs could
    end before another reported at their rung, and nothing was pruned.)"""
    import optuna

    from study_cases import open_storage

    path = study_file(search={"width": {"type": "categorical", "choices": [32]},
                              "lr": {"type": "float", "low": 1e-7, "high": 1e-2, "log": True}},
                      fixed={"stllr": {"learn_steps": 8, "lambda_pre": 1.0, "alpha_post": 1.0},
                             "data": {"batch_size": 128, "val_fraction": 0.2}},
                      objectives=[{"metric": "val_accuracy", "direction": "maximize"}],
                      scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2},
                      budget={"trials": 8, "epochs": 4, "seeds": [0]}, rules=["stllr"], baseline=None,
                      sampler={"name": "random", "seed": 4}, constraints=None,
                      resources={"cpu": 1, "gpu": 0, "concurrency": 1})
    folder = tmp_path / "study"
    sweep(str(path), out=str(folder), quiet=True, report=False)
    df = pd.read_parquet(folder / "results.parquet")
    # the three learning rates near 7e-3 train to the end; the ones too small to learn are stopped
    assert (df[df.lr > 5e-3].status == "complete").all() and (df.lr > 5e-3).sum() == 3
    pruned = df[df.status == "pruned"]
    assert (pruned.lr < 1e-3).all()
    assert len(pruned) >= 1, df[["lr", "status", "epochs_done"]]
    assert (pruned.epochs_done < 4).all()
    study = optuna.load_study(study_name="search", storage=open_storage(str(folder)))
    states = {t.state for t in study.trials}
    assert optuna.trial.TrialState.PRUNED in states
    complete = df[df.status == "complete"]
    assert (complete.epochs_done == 4).all()
