"""A small valid study file for the spaces tests; each test changes one key."""

from __future__ import annotations

from typing import Any


def small_study() -> dict[str, Any]:
    """A valid study file (digits, mlp) as a dict; tests change one key at a time."""
    return {
        "name": "small",
        "dataset": {"name": "digits", "options": {"T": 8}},
        "model": {"kind": "mlp", "fixed": {"gamma": 0.9, "theta": 0.5}},
        "rules": ["stllr", "bptt"],
        "search": {
            "width": {"type": "categorical", "choices": [16, 32]},
            "depth": {"type": "int", "low": 1, "high": 3},
            "lambda_pre": {"type": "float", "low": 0.0, "high": 1.0},
            "alpha_post": {"type": "float", "low": -1.0, "high": 1.0},
            "learn_steps": {"type": "int", "low": 1, "high": 8},
            "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        },
        "per_layer": ["alpha_post"],
        "fixed": {"stllr": {"lambda_post": 0.5}, "data": {"batch_size": 32}},
        "baseline": {"search": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}, "trials": 2},
        "budget": {"trials": 4, "epochs": 1, "seeds": [0, 1]},
        "sampler": {"name": "nsga2", "seed": 0, "population_size": 4},
    }
