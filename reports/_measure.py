"""What a study measures: classification accuracy (higher is better) or optical-flow AEE (lower is better).

Every "best", "better", frontier and difference in a report reads the study's measure, so a
flow study (``measure == "aee"`` on its rows: average end-point error in pixels) is ranked by
its lowest validation AEE, its Pareto fronts minimise AEE and its differences are S-TLLR −
BPTT in pixels, where a positive difference means S-TLLR is worse. A folder written before the
``measure`` column existed is a classification study.

>>> ACCURACY.format(0.8777), ACCURACY.format(-0.031, signed=True), AEE.format(1.23456), AEE.format(0.1, signed=True)
('87.8', '-3.1', '1.235', '+0.100')
>>> AEE.diff_sentence(0.1), ACCURACY.diff_sentence(-0.02)
("S-TLLR's AEE is 0.100 px higher than BPTT's (worse)", "S-TLLR's accuracy is 2.0 points lower than BPTT's (worse)")
>>> import pandas as pd
>>> measure_of(pd.DataFrame({"measure": ["aee", "aee"]})).name, measure_of(pd.DataFrame({"x": [1]})).name
('aee', 'accuracy')
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import pandas as pd

from stllr_engine.errors import StllrError

__all__ = ["Measure", "ACCURACY", "AEE", "MEASURES", "measure_of", "measure_of_studies", "better_sign"]


@dataclass(frozen=True)
class Measure:
    """A study's score.

    Attributes:
        name: ``"accuracy"`` or ``"aee"`` (the value of the rows' ``measure`` column); also the
            stem of the columns a report derives (``{name}_diff``, ``stllr_test_{name}_mean``).
        val_col, test_col: the results columns selection and reporting read.
        higher_is_better: True for accuracy, False for AEE.
        unit: what a value is printed in (``%`` or ``px``); ``diff_unit``: a difference (``points`` or ``px``).
        label: the quantity in words (``accuracy``, ``AEE``); ``scale``: factor from stored to printed values.
        extra_metrics: further metric columns averaged over seeds for this measure.
        floor_col: the per-run floor a score must beat (AEE: the no-motion AEE), if any.
    """

    name: str
    val_col: str
    test_col: str
    higher_is_better: bool
    unit: str
    diff_unit: str
    label: str
    scale: float
    digits: int
    extra_metrics: tuple[str, ...] = ()
    floor_col: str | None = None

    @property
    def direction(self) -> str:
        return "maximize" if self.higher_is_better else "minimize"

    @property
    def by_seed_col(self) -> str:
        """The configuration table's ``{seed: test value}`` JSON column."""
        return f"{self.test_col}_by_seed"

    @property
    def lower_is_better(self) -> bool:
        return not self.higher_is_better

    @property
    def better_word(self) -> str:
        return "higher" if self.higher_is_better else "lower"

    @property
    def axis_label(self) -> str:
        """``AEE (px), lower is better`` / ``accuracy (%)``."""
        return f"{self.label} ({self.unit})" + ("" if self.higher_is_better else f", {self.better_word} is better")

    def column_label(self, split: str) -> str:
        """A table header: ``val AEE [px]`` / ``test AEE [px]``."""
        return f"{split} {self.label} [{self.unit}]"

    def format(self, x: object, signed: bool = False) -> str:
        """A value (or, ``signed``, a difference) as printed: accuracy in % with one decimal, AEE in px with three."""
        try:
            v = self.scale * float(x)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return "–"
        if not math.isfinite(v):
            return "–"
        zero = f"{0:.{self.digits}f}"
        if f"{abs(v):.{self.digits}f}" == zero:
            return zero  # neither "-0.0" nor "+0.0"
        return f"{v:+.{self.digits}f}" if signed else f"{v:.{self.digits}f}"

    def diff_sentence(self, diff: float, a: str = "S-TLLR", b: str = "BPTT") -> str:
        """``a − b`` in words, with which side that is: ``S-TLLR's AEE is 0.100 px higher than BPTT's (worse)``."""
        if not (isinstance(diff, (int, float)) and math.isfinite(float(diff))):
            return "no difference measured"
        size = self.format(abs(diff))
        if size == self.format(0.0):
            return f"{a}'s {self.label} equals {b}'s (to {size} {self.diff_unit})"
        up = diff > 0
        worse = up != self.higher_is_better
        return (f"{a}'s {self.label} is {size} {self.diff_unit} {'higher' if up else 'lower'} than {b}'s "
                f"({'worse' if worse else 'better'})")

    def favours(self, diff: float, a: str = "S-TLLR", b: str = "BPTT") -> str:
        """The side a difference ``a − b`` is in favour of."""
        return a if (diff > 0) == self.higher_is_better else b


ACCURACY = Measure("accuracy", "val_accuracy", "test_accuracy", True, "%", "points", "accuracy", 100.0, 1)
AEE = Measure("aee", "val_aee", "test_aee", False, "px", "px", "AEE", 1.0, 3,
              extra_metrics=("val_aee", "test_aee", "test_outliers_pct", "test_zero_aee"), floor_col="test_zero_aee")
MEASURES = {m.name: m for m in (ACCURACY, AEE)}


def better_sign(measure: Measure) -> float:
    """+1 where a higher value is better, −1 where a lower one is (multiply to get "higher is better")."""
    return 1.0 if measure.higher_is_better else -1.0


def _names(df: pd.DataFrame) -> set[str]:
    if "measure" in df.columns:
        # rows written before the column existed read as missing (None, NaN or pandas' <NA>): accuracy
        return {str(v).lower() for v in df["measure"] if not pd.isna(v)}
    # a table derived from runs (configurations, matched rows) carries the column only for a non-accuracy measure
    return set()


def measure_of(df: pd.DataFrame | None, where: str = "") -> Measure:
    """The measure of a results / configuration / matched table: its ``measure`` column, else accuracy.

    Raises:
        StllrError: the rows name an unknown measure, or two measures at once (one line).
    """
    if df is None:
        return ACCURACY
    names = _names(df)
    unknown = sorted(names - set(MEASURES))
    at = f" in {where}" if where else ""
    if unknown:
        raise StllrError(f"report: unknown measure {unknown[0]!r}{at}; a results row's measure is one of "
                         f"{', '.join(MEASURES)}")
    if len(names) > 1:
        raise StllrError(f"report: rows{at} mix the measures {' and '.join(sorted(names))}; a study measures one "
                         "thing: report each measure's studies separately")
    return MEASURES[names.pop()] if names else ACCURACY


def measure_of_studies(studies: Iterable[Any]) -> Measure:
    """The one measure of several studies (each with ``.name`` and ``.runs``).

    Raises:
        StllrError: the studies measure different things (accuracy and AEE cannot share a frontier,
            a ranking or a verdict), in one line naming a study of each.
    """
    seen: dict[str, str] = {}
    for s in studies:
        m = measure_of(s.runs, f"study {s.name}")
        seen.setdefault(m.name, str(s.name))
    if len(seen) > 1:
        parts = ", ".join(f"{MEASURES[k].label} ({v})" for k, v in sorted(seen.items()))
        raise StllrError(f"report: these studies measure different things: {parts}; accuracy (higher is better) "
                         "and AEE (px, lower is better) cannot share one report: report them separately")
    return MEASURES[next(iter(seen))] if seen else ACCURACY
