"""Value checks for user-given settings; each failure is a one-line :class:`StllrError`.

>>> integer("network", "width", 12)
12
>>> real("S-TLLR", "alpha_post", float("nan"))
Traceback (most recent call last):
...
stllr_engine.errors.StllrError: S-TLLR: alpha_post=nan must be a finite number
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

from stllr_engine.errors import StllrError


def is_int(value: Any) -> bool:
    """An integer, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A finite real number, not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def integer(where: str, key: str, value: Any, minimum: int | None = None) -> int:
    """``int(value)`` if it is an integer (``>= minimum``)."""
    if not is_int(value) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise StllrError(f"{where}: {key}={value!r} must be an integer{bound}")
    return int(value)


def real(where: str, key: str, value: Any, low: float | None = None, high: float | None = None,
         low_open: bool = False) -> float:
    """``float(value)`` if it is a finite number in ``[low, high]`` (``(low, high]`` if ``low_open``).

    A missing bound is infinite and printed open, so every rejected number, infinities
    included, is told the same range:

    >>> real("training", "lr", 0.0, low=0.0, low_open=True)
    Traceback (most recent call last):
    ...
    stllr_engine.errors.StllrError: training: lr=0.0 must lie in (0, inf)
    >>> real("training", "lr", float("inf"), low=0.0, low_open=True)
    Traceback (most recent call last):
    ...
    stllr_engine.errors.StllrError: training: lr=inf must lie in (0, inf)
    """
    numeric = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not numeric or math.isnan(value) or (math.isinf(value) and low is None and high is None):
        raise StllrError(f"{where}: {key}={value!r} must be a finite number")
    ok = (math.isfinite(value) and (low is None or (value > low if low_open else value >= low))
          and (high is None or value <= high))
    if not ok:
        lo = "(-inf" if low is None else f"{'(' if low_open else '['}{low:g}"
        hi = "inf)" if high is None else f"{high:g}]"
        raise StllrError(f"{where}: {key}={value!r} must lie in {lo}, {hi}")
    return float(value)


def choice(where: str, key: str, value: Any, options: tuple[str, ...]) -> str:
    """``value`` if it is one of ``options``."""
    if value not in options:
        raise StllrError(f"{where}: {key}={value!r}: use one of {', '.join(repr(o) for o in options)}")
    return str(value)


def known_fields(where: str, cls: Any, d: Any) -> dict[str, Any]:
    """A copy of mapping ``d`` whose keys are all fields of dataclass ``cls`` (for ``from_dict``)."""
    if not isinstance(d, dict):
        raise StllrError(f"{where}: expected a mapping of settings, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise StllrError(f"{where}: unknown keys {unknown}: valid keys are {sorted(names)}")
    return dict(d)
