"""Checks for user-given dataset parameters; each failure is one-line StllrError."""

from __future__ import annotations

from typing import Any

from stllr_engine._checks import is_int as _is_int
from stllr_engine._checks import is_real as _is_real
from stllr_engine.errors import StllrError


def positive_int(dataset: str, key: str, value: Any, minimum: int = 1) -> int:
    """Return ``int(value)`` if it is an integer ``>= minimum`` (bools rejected)."""
    if not _is_int(value) or value < minimum:
        raise StllrError(f"dataset {dataset!r}: {key}={value!r} must be an integer >= {minimum}")
    return int(value)


def any_int(dataset: str, key: str, value: Any) -> int:
    """Return ``int(value)`` if it is an integer (a seed)."""
    if not _is_int(value):
        raise StllrError(f"dataset {dataset!r}: {key}={value!r} must be an integer")
    return int(value)


def real_in(dataset: str, key: str, value: Any, low: float, high: float,
            high_open: bool = False) -> float:
    """Return ``float(value)`` if it is a finite number in ``[low, high]`` (or ``[low, high)``)."""
    ok = _is_real(value)
    if ok:
        ok = low <= value < high if high_open else low <= value <= high
    if not ok:
        bracket = ")" if high_open else "]"
        raise StllrError(f"dataset {dataset!r}: {key}={value!r} must be a number in "
                         f"[{low}, {high}{bracket}")
    return float(value)


def bin_ms(dataset: str, value: Any, allow_none: bool) -> float | None:
    """Bin width in ms: a positive number, or ``None`` for equal bins per sample."""
    if value is None and allow_none:
        return None
    if not _is_real(value) or value <= 0:
        hint = " or None (T equal bins per sample)" if allow_none else ""
        raise StllrError(f"dataset {dataset!r}: bin_ms={value!r} must be a positive number"
                         f" of milliseconds{hint}")
    return float(value)


def resolution(dataset: str, value: Any, sensor: tuple[int, int]) -> tuple[int, int]:
    """Frame size ``(H, W)`` from an int or a pair, at most the sensor's size."""
    pair = (value, value) if _is_int(value) else value
    ok = (isinstance(pair, (tuple, list)) and len(pair) == 2
          and all(_is_int(v) and 1 <= v <= s for v, s in zip(pair, sensor, strict=True)))
    if not ok:
        raise StllrError(f"dataset {dataset!r}: resolution={value!r} must be an int or (H, W) "
                         f"with 1 <= H <= {sensor[0]} and 1 <= W <= {sensor[1]} (the sensor size)")
    return int(pair[0]), int(pair[1])
