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
from typing import Any, Iterator, Mapping, TypeVar

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


K = TypeVar("K")
V = TypeVar("V")


class FrozenMapping(Mapping[K, V]):
    """A read-only mapping for validated settings inside frozen dataclasses.

    Unlike :class:`types.MappingProxyType` it survives ``copy.deepcopy`` (it is
    immutable, so a copy is itself), which ``dataclasses.asdict`` of an enclosing
    config needs; it is hashable when its values are.

    >>> m = FrozenMapping({0: 1.0})
    >>> m[0], dict(m), m == {0: 1.0}
    (1.0, {0: 1.0}, True)
    >>> m[1] = 2.0
    Traceback (most recent call last):
    ...
    TypeError: 'FrozenMapping' object does not support item assignment
    """

    __slots__ = ("_data",)
    _data: dict[K, V]

    def __init__(self, data: Mapping[K, V] | None = None):
        object.__setattr__(self, "_data", dict(data or {}))

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return repr(self._data)

    def __hash__(self) -> int:
        return hash(frozenset((k, frozenset(v.items()) if isinstance(v, Mapping) else v) for k, v in self._data.items()))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("FrozenMapping is read-only")

    def __deepcopy__(self, memo: dict[int, Any]) -> "FrozenMapping[K, V]":
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenMapping, ({k: dict(v) if isinstance(v, Mapping) else v for k, v in self._data.items()},))
