"""Helpers for the study tests: tiny real studies on the embedded digits task, and the
real ``stllr`` command line run in its own process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]

NET_FIXED = {"gamma": 0.9, "theta": 0.5, "surrogate": "sigmoid", "gamma_o": 0.95}


def tiny_study(folder: Path, name: str = "tiny", **changes: Any) -> Path:
    """Write a small real study file (digits, T=16, mlp) and return its path."""
    d: dict[str, Any] = {
        "name": name,
        "dataset": {"name": "digits", "options": {"T": 16}},
        "model": {"kind": "mlp", "fixed": dict(NET_FIXED)},
        "rules": ["stllr", "bptt"],
        "search": {
            "width": {"type": "categorical", "choices": [16, 32, 64]},
            "alpha_post": {"type": "float", "low": -1.0, "high": 1.0},
            "learn_steps": {"type": "int", "low": 2, "high": 16},
        },
        "fixed": {"training": {"lr": 3e-3}, "stllr": {"lambda_pre": 1.0},
                  "data": {"batch_size": 128, "val_fraction": 0.2}},
        "baseline": {"search": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}, "trials": 1},
        "objectives": [{"metric": "val_accuracy", "direction": "maximize"},
                       {"metric": "learning_macs", "direction": "minimize"},
                       {"metric": "learning_memory", "direction": "minimize"}],
        "budget": {"trials": 4, "epochs": 1, "seeds": [0, 1]},
        "sampler": {"name": "nsga2", "seed": 0},
        "resources": {"cpu": 1, "gpu": 0},
    }
    for key, value in changes.items():
        if value is None:
            d.pop(key, None)
        else:
            d[key] = value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def open_storage(folder: str) -> Any:
    """The study's Optuna journal, opened as optuna-dashboard would (read-only use in tests)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(os.path.join(folder, "optuna.journal")))


def stllr_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "study.cli", *args]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def start(*args: str, log: Path) -> subprocess.Popen:
    """The real ``stllr`` command in a new process group (so that a test can kill it all)."""
    fh = open(log, "w")
    return subprocess.Popen(stllr_cmd(*args), cwd=ROOT, env=env(), stdout=fh, stderr=subprocess.STDOUT,
                            start_new_session=True)


def run(*args: str, timeout: float = 300, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(stllr_cmd(*args), cwd=ROOT, env={**env(), **(extra_env or {})}, capture_output=True,
                          text=True, timeout=timeout)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


