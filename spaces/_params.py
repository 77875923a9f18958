"""One searched parameter: its distribution, how Optuna samples it, its grid values.

>>> p = Param("lr", "float", low=1e-4, high=1e-2, log=True)
>>> p.to_dict()
{'type': 'float', 'low': 0.0001, 'high': 0.01, 'log': True}
>>> Param("depth", "int", low=1, high=3).values()
[1, 2, 3]
>>> Param("width", "int", low=16, high=2_000_000_000).count()
1999999985
>>> Param("alpha_post", "float", low=-1.0, high=1.0).normalise(2)
Traceback (most recent call last):
...
ValueError: 2 is outside the range [-1.0, 1.0]
"""

from __future__ import annotations

import math
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

    def count(self) -> int | None:
        """How many values :meth:`values` would list, without listing them (``None``: continuous)."""
        if self.type == "categorical":
            return len(self.choices)
        if self.type == "int":
            return (int(self.high or 0) - int(self.low or 0)) // int(self.step or 1) + 1
        if self.step is None:
            return None
        return int(round((float(self.high or 0.0) - float(self.low or 0.0)) / float(self.step))) + 1

    def describe(self) -> str:
        """The distribution in words, for messages: ``[1, 3] (int)``, ``one of [16, 32]``."""
        if self.type == "categorical":
            return f"one of {list(self.choices)}"
        step = f", step {self.step}" if self.step is not None else ""
        log = ", log scale" if self.log else ""
        return f"[{self.low}, {self.high}] ({self.type}{step}{log})"

    def normalise(self, value: Any) -> Any:
        """``value`` as Optuna would store it for this distribution, if the distribution holds it.

        Mirrors Optuna's own membership test (``BaseDistribution._contains``): a value
        outside it would be ignored by ``Study.enqueue_trial`` and sampled instead.

        Raises:
            ValueError: the value's type or range is wrong (the message says which).
        """
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if self.type == "categorical":
            for c in self.choices:
                same_kind = isinstance(c, bool) == isinstance(value, bool) and (
                    type(c) is type(value) or (numeric and isinstance(c, (int, float))))
                if same_kind and c == value:
                    return c
            raise ValueError(f"{value!r} is not one of the choices {list(self.choices)}")
        if self.type == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{value!r} is not an integer")
            low, high, step = int(self.low or 0), int(self.high or 0), int(self.step or 1)
            if not low <= value <= high:
                raise ValueError(f"{value} is outside the range [{low}, {high}]")
            if (value - low) % step:
                raise ValueError(f"{value} is not on the grid {low}, {low + step}, ... (step {step})")
            return value
        if not numeric or not math.isfinite(value):
            raise ValueError(f"{value!r} is not a finite number")
        lo, hi = float(self.low or 0.0), float(self.high or 0.0)
        if not lo <= value <= hi:
            raise ValueError(f"{value} is outside the range [{lo}, {hi}]")
        if self.step is not None:
            k = (value - lo) / float(self.step)
            if abs(k - round(k)) >= 1e-8:
                raise ValueError(f"{value} is not on the grid {lo}, {lo + float(self.step)}, ... (step {self.step})")
        return float(value)

    def values(self) -> list[Any] | None:
        """Every value, when the parameter is enumerable (categorical, int, float with a step).

        Lists them all: check :meth:`count` first where the range may be large.
        """
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
