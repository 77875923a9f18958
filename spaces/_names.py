"""The names a study file may use: search parameters, metrics and quantities.

Search parameters are flat names (``lr``, ``width``, ``alpha_post``); each belongs to one
section of :class:`~stllr_engine.experiment.ExperimentConfig`, read off the engine's own
dataclasses so that a field the engine adds becomes searchable without a change here.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Iterable

from stllr_engine.network import NetworkSpec
from stllr_engine.stllr import STLLRConfig
from stllr_engine.train import TrainConfig

__all__ = ["SECTIONS", "KINDS", "ARCH", "STLLR_FACTORS", "METRICS", "FORMULA_METRICS", "ALIASES", "metric_name",
           "parse_quantity", "closest"]


def _fields(cls: type, exclude: Iterable[str]) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in set(exclude))


# Where each searchable name goes. Left out on purpose: what the study file sets elsewhere
# (model.kind, budget.epochs, budget.seeds, the rule), what the dataset fixes
# (input_shape, num_classes) and per-layer overrides (``per_layer``).
SECTIONS: dict[str, str] = {}
for _name in _fields(NetworkSpec, ("kind", "input_shape", "num_classes", "seed")):
    SECTIONS[_name] = "network"
for _name in _fields(STLLRConfig, ("layer_factors",)):
    SECTIONS[_name] = "stllr"
for _name in _fields(TrainConfig, ("rule", "stllr", "epochs", "seed", "device", "measure_costs", "fused")):
    SECTIONS[_name] = "training"
SECTIONS["batch_size"] = "data"
SECTIONS["T"] = "dataset"  # a dataset option; part of the architecture key
del _name

# The value kind of each searchable name ("int", "float", "str", "bool"): an int field is
# searched with type int (or categorical), a str or bool field only as a categorical.
KINDS: dict[str, str] = {"batch_size": "int", "T": "int"}
for _cls in (NetworkSpec, STLLRConfig, TrainConfig):
    for _f in dataclasses.fields(_cls):
        if SECTIONS.get(_f.name) and _f.name not in KINDS:
            KINDS[_f.name] = str(_f.type).split("|")[0].strip()
del _cls, _f

ARCH = ("T", "width", "depth")  # with model.kind: the architecture a BPTT baseline copies
STLLR_FACTORS = ("lambda_pre", "lambda_post", "alpha_pre", "alpha_post")  # per-layer capable

# Metric -> the direction that improves it (results columns, study/schema.py).
METRICS: dict[str, str] = {
    "val_accuracy": "maximize", "val_loss": "minimize",
    "val_aee": "minimize",  # optical flow: average end-point error (px), lower is better
    "train_accuracy": "maximize", "train_loss": "minimize",
    "forward_macs_formula_per_sample": "minimize",
    "learning_macs_formula_per_sample": "minimize",
    "learning_memory_values_formula_per_sample": "minimize",
    "learning_memory_bytes_formula_per_sample": "minimize",
    "forward_macs_measured_per_sample": "minimize",
    "learning_macs_measured_per_sample": "minimize",
    "learning_memory_bytes_measured_per_batch": "minimize",
    "learning_memory_bytes_measured_per_sample": "minimize",
    "peak_step_bytes_measured_per_batch": "minimize",
    "wall_time_s": "minimize", "run_time_s": "minimize", "samples_per_s": "maximize",
}
# Only these are known before training (stllr_engine.costs.formula_costs).
FORMULA_METRICS = tuple(m for m in METRICS if m.endswith("_formula_per_sample"))
ALIASES: dict[str, str] = {
    "accuracy": "val_accuracy",
    "aee": "val_aee",
    "learning_macs": "learning_macs_formula_per_sample",
    "forward_macs": "forward_macs_formula_per_sample",
    # the memory objective is what the rule measurably keeps (DESIGN §8); the formula sits beside it
    "learning_memory": "learning_memory_bytes_measured_per_sample",
    "learning_memory_formula": "learning_memory_bytes_formula_per_sample",
    "learning_memory_bytes": "learning_memory_bytes_formula_per_sample",
    "learning_memory_values": "learning_memory_values_formula_per_sample",
    "learning_macs_measured": "learning_macs_measured_per_sample",
    "learning_memory_measured": "learning_memory_bytes_measured_per_sample",
    "peak_step_bytes": "peak_step_bytes_measured_per_batch",
}
# The engine's short formula names (before the named-cost rename) -> results columns.
ENGINE_NAMES = {
    "forward_macs": "forward_macs_formula_per_sample",
    "learning_macs": "learning_macs_formula_per_sample",
    "learning_memory_values": "learning_memory_values_formula_per_sample",
}


def metric_name(name: str) -> str | None:
    """The results column ``name`` stands for (an alias or the column itself), or ``None``."""
    full = ALIASES.get(name, name)
    return full if full in METRICS else None


def closest(name: str, options: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the nearest option, or ``""``."""
    match = difflib.get_close_matches(str(name), list(options), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


_UNITS = {
    "": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
    "B": 1.0, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
    "KiB": 2.0**10, "MiB": 2.0**20, "GiB": 2.0**30, "TiB": 2.0**40,
}
_QUANTITY = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-z]*)\s*$")


def parse_quantity(value: object) -> tuple[float, bool] | None:
    """``(number, is_bytes)`` from ``8``, ``"2e9"``, ``"1.5 GB"``, ``"8 MiB"`` or ``"500 M"``; else ``None``.

    >>> parse_quantity("8 MiB"), parse_quantity("2e9"), parse_quantity("1.5 G")
    ((8388608.0, True), (2000000000.0, False), (1500000000.0, False))
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value), False
    if not isinstance(value, str):
        return None
    m = _QUANTITY.match(value)
    if m is None or m.group(2) not in _UNITS:
        return None
    return float(m.group(1)) * _UNITS[m.group(2)], m.group(2).endswith("B")
