"""Reports: accuracy-compute-memory frontiers against BPTT and answers to the open questions.

Reads only a study's ``results.parquet`` and ``study.yaml``. Each analysis returns a
DataFrame (written beside the page as a CSV) and each figure is drawn from one:

>>> from reports import build_report            # doctest: +SKIP
>>> build_report(["runs/shd"], out="runs/shd/report")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reports._claims import Claim, holm
    from reports._configs import best_per_arch, config_table
    from reports._load import DEFAULT_OBJECTIVES, Objective, Study, complete_runs, load_studies, load_study
    from reports._frontier import (frontier, frontier_figure, hypervolume, hypervolume_table, pareto_mask, projection_figure,
                                  projections)
    from reports._measure import ACCURACY, AEE, Measure, measure_of, measure_of_studies
    from reports._matched import matched_table, still_learning_note, window_memory_note
    from reports._questions import param_importance, q1_analysis, q1_items
    from reports._report import build_report
    from reports._scaling import q2_analysis, q2_items
    from reports._window import window_figure, window_table

# Imported on first use, so `stllr --help` does not pay for plotly and optuna.
_WHERE = {
    "ACCURACY": "reports._measure",
    "AEE": "reports._measure",
    "Measure": "reports._measure",
    "measure_of": "reports._measure",
    "measure_of_studies": "reports._measure",
    "Claim": "reports._claims",
    "DEFAULT_OBJECTIVES": "reports._load",
    "Objective": "reports._load",
    "Study": "reports._load",
    "best_per_arch": "reports._configs",
    "build_report": "reports._report",
    "complete_runs": "reports._load",
    "config_table": "reports._configs",
    "frontier": "reports._frontier",
    "frontier_figure": "reports._frontier",
    "holm": "reports._claims",
    "hypervolume": "reports._frontier",
    "hypervolume_table": "reports._frontier",
    "load_studies": "reports._load",
    "load_study": "reports._load",
    "matched_table": "reports._matched",
    "window_memory_note": "reports._matched",
    "still_learning_note": "reports._matched",
    "param_importance": "reports._questions",
    "pareto_mask": "reports._frontier",
    "projection_figure": "reports._frontier",
    "projections": "reports._frontier",
    "q1_analysis": "reports._questions",
    "q1_items": "reports._questions",
    "q2_analysis": "reports._scaling",
    "q2_items": "reports._scaling",
    "window_figure": "reports._window",
    "window_table": "reports._window",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'reports' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "ACCURACY", "AEE", "Measure", "measure_of", "measure_of_studies",
    "Claim", "DEFAULT_OBJECTIVES", "Objective", "Study", "best_per_arch", "build_report", "complete_runs",
    "config_table", "frontier", "frontier_figure", "holm", "hypervolume", "hypervolume_table", "load_studies",
    "load_study", "matched_table", "pareto_mask", "param_importance", "projection_figure", "projections",
    "q1_analysis", "q1_items", "q2_analysis", "q2_items", "still_learning_note", "window_figure",
    "window_memory_note", "window_table",
]
