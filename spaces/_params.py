"""One searched parameter: its distribution, how Optuna samples it, its grid values.

>>> p = Param("lr", "float", low=1e-4, high=1e-2, log=True)
>>> p.to_dict()
{'type': 'float', 'low': 0.0001, 'high': 0.01, 'log': True}
>>> Param("depth", "int", low=1, high=3).values()
[1, 2, 3]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Param"]

Scalar = bool | int | float | str | None


@dataclass(frozen=True)
class Param:
    """A distribution Optuna samples from.

    Attributes:
        name: the flat parameter name (``lr``, ``alpha_post``).
        type: ``"float"``, ``"int"`` or ``"categorical"``.
        low, high: bounds, both included (float and int).
        step: grid step (int: default 1; float: none, i.e. continuous).
        log: sample on a log scale (``low > 0``).
        choices: the values of a categorical.
    """

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: tuple[Scalar, ...] = ()

    def suggest(self, trial: Any, name: str | None = None) -> Any:
        """Sample from ``trial`` (an ``optuna.trial.BaseTrial``) under ``name`` (default: own name)."""
        key = name or self.name
        if self.type == "categorical":
            return trial.suggest_categorical(key, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(key, int(self.low or 0), int(self.high or 0), step=int(self.step or 1),
                                     log=self.log)
        return trial.suggest_float(key, float(self.low or 0.0), float(self.high or 0.0),
                                   step=None if self.step is None else float(self.step), log=self.log)

    def values(self) -> list[Any] | None:
        """Every value, when the parameter is enumerable (categorical, int, float with a step)."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            return list(range(int(self.low or 0), int(self.high or 0) + 1, int(self.step or 1)))
        if self.step is None:
            return None
        lo, hi, st = float(self.low or 0.0), float(self.high or 0.0), float(self.step)
        n = int(round((hi - lo) / st))
        return [round(lo + k * st, 12) for k in range(n + 1)]

    def extremes(self) -> list[tuple[str, Any]]:
        """``(key, value)`` pairs the engine must accept: the bounds, or every choice."""
        if self.type == "categorical":
            return [(f"choices[{i}]", c) for i, c in enumerate(self.choices)]
        return [("low", self.low), ("high", self.high)]

    def smallest(self) -> Any:
        """The least value (``None`` for a categorical of non-numbers)."""
        if self.type == "categorical":
            nums = [c for c in self.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
            return min(nums) if nums else None
        return self.low

    def largest(self) -> Any:
        """The greatest value (``None`` for a categorical of non-numbers)."""
        if self.type == "categorical":
            nums = [c for c in self.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
            return max(nums) if nums else None
        return self.high

    def to_dict(self) -> dict[str, Any]:
        if self.type == "categorical":
            return {"type": "categorical", "choices": list(self.choices)}
        d: dict[str, Any] = {"type": self.type, "low": self.low, "high": self.high}
        if self.step is not None:
            d["step"] = self.step
        if self.log:
            d["log"] = True
        return d
