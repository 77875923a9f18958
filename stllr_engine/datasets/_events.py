"""Shared machinery for the event datasets read through tonic (SHD, DVS Gesture, ...).

Each dataset is an :class:`EventSource`: where its files live, how to check they
are there, and how to read one sample's events with tonic.  :func:`load_events`
turns a source into a train/test pair of :class:`FrameDataset` backed by the
frame cache (:mod:`._cache`), binning each sample once with :mod:`._binning`.

tonic never downloads here: its dataset classes are only built through
:func:`no_download`, a same-named subclass whose existence check always passes
(stllr checks the files itself first, see ``EventSource.check``) and whose
``download`` raises :class:`StllrError`.  Bypassing tonic's check also lifts its
minimum file counts (>= 100 ``.npy``, 10000 ``.bin``, 1000 ``.aedat4``), which
the real datasets meet anyway, so small subsets and test fixtures load too.
"""

from __future__ import annotations

import functools
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from stllr_engine.datasets import _binning, _cache, _params
from stllr_engine.datasets._base import DatasetInfo, FrameDataset
from stllr_engine.errors import StllrError

SPLITS = ("train", "test")


@dataclass(frozen=True)
class EventSplit:
    """The samples of one split, in their fixed order.

    Attributes:
        files: Source files, sorted (fingerprinted for the cache key).
        n: Number of samples.
        read: ``read(i) -> (t_us, coords, label)``; coords match ``sensor_shape``.
        file_of: ``file_of(i)``, the file holding sample ``i`` (for error messages).
    """

    files: list[Path]
    n: int
    read: Callable[[int], tuple[np.ndarray, tuple[np.ndarray, ...], int]]
    file_of: Callable[[int], Path]


class EventSource(ABC):
    """One event dataset in tonic's on-disk layout under ``<data_dir>/<folder>/``."""

    name: ClassVar[str]
    folder: ClassVar[str]
    num_classes: ClassVar[int]
    sensor_shape: ClassVar[tuple[int, ...]]
    t_start: ClassVar[_binning.TStart]
    layout: ClassVar[str]
    source: ClassVar[str]
    defaults: ClassVar[dict[str, Any]]

    @abstractmethod
    def check(self, root: Path) -> None:
        """Raise :class:`StllrError` unless both splits' files are under ``root``."""

    @abstractmethod
    def open_split(self, root: Path, split: str) -> EventSplit:
        """List one split's samples (``root`` already passed :meth:`check`)."""

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        """Check and normalise ``T``, ``bin_ms`` and the spatial size parameter."""
        out = dict(params)
        out["T"] = _params.positive_int(self.name, "T", params["T"])
        out["bin_ms"] = _params.bin_ms(self.name, params["bin_ms"], allow_none=True)
        if "resolution" in params:
            height, width = self.sensor_shape[1:]
            out["resolution"] = _params.resolution(self.name, params["resolution"], (height, width))
        if "channels" in params:
            out["channels"] = _params.positive_int(self.name, "channels", params["channels"])
            if out["channels"] > self.sensor_shape[0]:
                raise StllrError(f"dataset {self.name!r}: channels={out['channels']} must be at "
                                 f"most {self.sensor_shape[0]} (the number of input channels)")
        return out

    def out_shape(self, params: dict[str, Any]) -> tuple[int, ...]:
        """Shape of one time step of the frames."""
        if "channels" in params:
            return (params["channels"],)
        return (self.sensor_shape[0], *params["resolution"])

    def missing(self, root: Path, what: str) -> StllrError:
        """The one-line error for absent files."""
        return StllrError(f"{self.name}: {what} in {root / self.folder}; expected tonic's "
                          f"layout {self.layout}; get it from {self.source} "
                          "(stllr never downloads)")

    def misplaced(self, path: Path, why: str) -> StllrError:
        """The one-line error for a file that does not fit the layout."""
        return StllrError(f"{path}: does not fit the {self.name} layout ({why}); expected "
                          f"{self.layout}: move or remove it")

    def corrupt(self, path: Path, exc: BaseException) -> StllrError:
        """The one-line error for a file that cannot be read."""
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return StllrError(f"{path}: cannot read this {self.name} file ({reason}); it is "
                          f"truncated or corrupt: replace it with a fresh copy from {self.source}")


@functools.cache
def no_download(tonic_class: type) -> type:
    """A subclass of a tonic dataset class that trusts stllr's checks and never downloads.

    It keeps the class name because tonic reads from ``<save_to>/<class name>``.
    """

    def download(self: Any) -> None:
        raise StllrError(f"{self.location_on_system}: dataset files are missing; "
                         "stllr never downloads: place the files there by hand")

    def _check_exists(self: Any) -> bool:
        return True

    return type(tonic_class.__name__, (tonic_class,),
                {"download": download, "_check_exists": _check_exists, "__module__": __name__})


def natural_key(text: str) -> list[Any]:
    """Sort key that orders ``img_2`` before ``img_10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def load_events(
    source: EventSource, data_dir: str | os.PathLike[str] | None, cache_dir: str | os.PathLike[str] | None,
    params: dict[str, Any],
) -> tuple[FrameDataset, FrameDataset]:
    """Check, bin (once, through the cache) and wrap both splits of an event dataset."""
    if data_dir is None:
        raise StllrError(f"dataset {source.name!r} needs data_dir=<folder that holds "
                         f"{source.folder}/>; expected layout {source.layout}")
    root = Path(data_dir).expanduser().resolve()
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else root / ".stllr_cache"
    source.check(root)
    out_shape = source.out_shape(params)
    T = params["T"]
    bin_us = None if params["bin_ms"] is None else params["bin_ms"] * 1000.0
    # Open both splits before binning either, so a bad file fails before any work.
    opened = {split: source.open_split(root, split) for split in SPLITS}
    pair = []
    for split, events in opened.items():
        key = {"params": params, "t_start": source.t_start,
               "source": _cache.fingerprint(events.files, root)}
        name = _cache.entry_name(source.name, split, key)

        def produce(events: EventSplit = events) -> Iterator[tuple[np.ndarray, int]]:
            for i in range(events.n):
                try:
                    t_us, coords, label = events.read(i)
                    counts = _binning.bin_events(t_us, coords, source.sensor_shape, out_shape,
                                                 T, bin_us, source.t_start)
                except StllrError:
                    raise
                except Exception as exc:
                    raise source.corrupt(events.file_of(i), exc) from exc
                if not 0 <= label < source.num_classes:
                    raise source.corrupt(events.file_of(i), ValueError(f"label {label}"))
                yield counts, label

        meta = {"dataset": source.name, "split": split, **key}
        frames, labels, entry = _cache.open_or_build(
            cache_root, name, meta, events.n, (T, *out_shape), produce)
        info = DatasetInfo(name=source.name, split=split, input_shape=out_shape,
                           num_classes=source.num_classes, T=T, bin_ms=params["bin_ms"],
                           params=dict(params), cache_entry=str(entry))
        pair.append(FrameDataset(frames, labels, info))
    return pair[0], pair[1]
