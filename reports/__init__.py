"""Reports: accuracy-compute-memory frontiers against BPTT and answers to the open questions.

Reads only a study's ``results.parquet`` and ``study.yaml``. Each analysis returns a
DataFrame (written beside the page as a CSV) and each figure is drawn from one:

>>> from reports import build_report            # doctest: +SKIP
>>> build_report(["runs/shd"], out="runs/shd/report")  # doctest: +SKIP
"""

from __future__ import annotations

from reports._configs import best_per_arch, config_table
from reports._load import DEFAULT_OBJECTIVES, Objective, Study, complete_runs, load_studies, load_study
from reports._frontier import (frontier, frontier_figure, hypervolume, hypervolume_table, pareto_mask, projection_figure,
                              projections)
from reports._matched import matched_table
from reports._questions import answer_q1, factor_effects, factor_figure, factor_levels, param_importance
from reports._report import build_report
from reports._scaling import (answer_q2, gap_figure, gap_scaling, memory_T_figure, memory_vs_T, scaling_exponents,
                             scaling_figure, scaling_table)
from reports._window import window_figure, window_table

__all__ = [
    "DEFAULT_OBJECTIVES", "Objective", "Study", "answer_q1", "answer_q2", "best_per_arch", "build_report",
    "complete_runs", "config_table", "factor_effects", "factor_figure", "factor_levels", "frontier",
    "frontier_figure", "gap_figure", "gap_scaling", "hypervolume", "hypervolume_table", "load_studies", "load_study",
    "matched_table", "memory_T_figure", "memory_vs_T", "pareto_mask", "param_importance", "projection_figure",
    "projections", "scaling_exponents", "scaling_figure", "scaling_table", "window_figure", "window_table",
]
