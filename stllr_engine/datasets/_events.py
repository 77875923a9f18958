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
import math
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
        one_file: All samples are in one file (messages then say which sample).
    """

    files: list[Path]
    n: int
    read: Callable[[int], tuple[np.ndarray, tuple[np.ndarray, ...], int]]
    file_of: Callable[[int], Path]
    one_file: bool = False

    def field(self, name: str, i: int) -> str:
        """``name`` of sample ``i`` as a message shows it (``spikes/times[3]``)."""
        return f"{name}[{i}]" if self.one_file else name


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
    time_field: ClassVar[str]
    """Where the file keeps event times, for messages (``"spikes/times"``)."""
    time_unit: ClassVar[str]
    """The unit of ``time_field`` on disk (``"seconds"``)."""
    max_span_s: ClassVar[float]
    """A sample whose events span longer is refused: its times are in the wrong unit."""
    typical_span: ClassVar[str]
    """How long a recording lasts, for messages (``"about 1 s"``)."""

    @abstractmethod
    def check(self, root: Path) -> None:
        """Raise :class:`StllrError` unless both splits' files are under ``root``."""

    @abstractmethod
    def open_split(self, root: Path, split: str) -> EventSplit:
        """List one split's samples (``root`` already passed :meth:`check`)."""

    def speakers(self, root: Path, split: str) -> np.ndarray | None:
        """Who recorded each sample of a split (any hashable ids, in sample order), or
        ``None`` when the dataset does not say (then validation cannot be held out by speaker)."""
        return None

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

    def check_times(self, path: Path, field: str, t_us: np.ndarray) -> None:
        """Refuse event times whose span shows they are in the wrong unit.

        Times in milliseconds where seconds are expected would otherwise put every
        event after the last bin and silently give all-zero frames.
        """
        if len(t_us) == 0:
            return
        t = np.asarray(t_us, dtype=np.float64)
        low = float(t.min())
        start = low if self.t_start == "first" else 0.0
        span_s = (float(t.max()) - start) / 1e6
        if self.t_start == "zero" and low < 0:
            raise StllrError(f"{path}: {field} has negative times (down to {low / 1e6:g} s); "
                             f"expected {self.time_unit} from the recording onset, >= 0")
        if span_s > self.max_span_s:
            raise StllrError(f"{path}: {field} spans {span_s:.6g} s, far beyond a {self.name} "
                             f"recording ({self.typical_span}, at most {self.max_span_s:g} s "
                             f"accepted); expected {self.time_unit}: convert the times")

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
    params: dict[str, Any], max_cache_bytes: int | str | None = None,
) -> tuple[FrameDataset, FrameDataset]:
    """Check, bin (once, through the cache) and wrap both splits of an event dataset.

    Before binning anything it checks that one sample's binning fits in memory,
    that the entries to build stay under ``max_cache_bytes`` (see
    :func:`._cache.max_cache_bytes`) and that the cache folder has room for them.
    """
    root = _data_root(source, data_dir)
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else root / ".stllr_cache"
    limit = _cache.max_cache_bytes(max_cache_bytes)
    source.check(root)
    out_shape = source.out_shape(params)
    T = params["T"]
    bin_us = None if params["bin_ms"] is None else params["bin_ms"] * 1000.0
    # Open both splits before binning either, so a bad file fails before any work.
    opened = {split: source.open_split(root, split) for split in SPLITS}
    keys = {split: {"params": params, "t_start": source.t_start,
                    "source": _cache.fingerprint(events.files, root)}
            for split, events in opened.items()}
    names = {split: _cache.entry_name(source.name, split, keys[split]) for split in SPLITS}
    to_build = {split: opened[split].n for split in SPLITS
                if not _cache.entry_exists(cache_root, names[split])}
    if to_build:
        _cache.remove_stale(cache_root)  # a killed build's leftovers may be what fills the disk
        _check_build(source, params, out_shape, to_build, cache_root, limit)
    pair = []
    for split, events in opened.items():
        key, name = keys[split], names[split]

        def produce(events: EventSplit = events) -> Iterator[tuple[np.ndarray, int]]:
            for i in range(events.n):
                path = events.file_of(i)
                try:
                    t_us, coords, label = events.read(i)
                    source.check_times(path, events.field(source.time_field, i), t_us)
                    counts = _binning.bin_events(t_us, coords, source.sensor_shape, out_shape,
                                                 T, bin_us, source.t_start)
                except StllrError:
                    raise
                except MemoryError as exc:
                    raise StllrError(f"{path}: out of memory binning sample {i} at T={T} "
                                     f"({_sample_bytes(T, out_shape)} bytes needed); choose a "
                                     "smaller T or coarser bins (bin_ms)") from exc
                except Exception as exc:
                    raise source.corrupt(path, exc) from exc
                if not 0 <= label < source.num_classes:
                    raise StllrError(f"{path}: {events.field('label', i)}={label} is outside "
                                     f"0..{source.num_classes - 1}, the {source.name} classes")
                yield counts, label

        meta = {"dataset": source.name, "split": split, **key}
        frames, labels, entry = _cache.open_or_build(
            cache_root, name, meta, events.n, (T, *out_shape), produce)
        info = DatasetInfo(name=source.name, split=split, input_shape=out_shape,
                           num_classes=source.num_classes, T=T, bin_ms=params["bin_ms"],
                           params=dict(params), cache_entry=str(entry))
        # speaker ids are read only when a split by speaker asks for them
        pair.append(FrameDataset(frames, labels, info, groups=functools.partial(source.speakers, root, split)))
    return pair[0], pair[1]


def _data_root(source: EventSource, data_dir: str | os.PathLike[str] | None) -> Path:
    hint = f"data_dir=<the folder that holds {source.folder}/>; expected layout {source.layout}"
    if data_dir is None:
        raise StllrError(f"dataset {source.name!r} needs {hint}")
    root = Path(data_dir).expanduser().resolve()
    if not root.exists():
        raise StllrError(f"{root}: data_dir does not exist; pass {hint}")
    if not root.is_dir():
        raise StllrError(f"{root}: data_dir is a file, not a folder; pass {hint}")
    return root


# Binning one sample holds int64 counts plus their 1-byte (or wider) stored copy.
BIN_BYTES_PER_VALUE = 9


def _sample_bytes(T: int, out_shape: tuple[int, ...]) -> int:
    return T * math.prod(out_shape) * BIN_BYTES_PER_VALUE


def _check_build(source: EventSource, params: dict[str, Any], out_shape: tuple[int, ...],
                 to_build: dict[str, int], cache_root: Path, limit: int) -> None:
    """Refuse, in one line, a build that cannot fit in memory, the cache limit or the disk."""
    T = params["T"]
    values = math.prod(out_shape)
    shape = " x ".join(str(v) for v in out_shape)
    per_sample, memory = _sample_bytes(T, out_shape), _cache.available_memory()
    if memory is not None and per_sample > memory:
        raise StllrError(
            f"{source.name}: T={T} needs {per_sample} bytes ({_cache.human(per_sample)}) of "
            f"memory to bin one sample ({T} steps x {shape} values x {BIN_BYTES_PER_VALUE} "
            f"bytes) but {memory} bytes ({_cache.human(memory)}) are available; choose a "
            "smaller T or coarser bins (bin_ms)")
    needed = sum(_cache.entry_bytes(n, (T, *out_shape)) for n in to_build.values())
    samples = " + ".join(f"{n} {split}" for split, n in to_build.items())
    what = f"{source.name} at T={T} ({samples} samples x {T} steps x {values} values)"
    if needed > limit:
        raise StllrError(
            f"{cache_root}: the frame cache of {what} needs {needed} bytes "
            f"({_cache.human(needed)}), above the limit of {limit} bytes ({_cache.human(limit)});"
            f" to allow it pass max_cache_bytes=<bytes> to load_dataset or set "
            f"{_cache.MAX_CACHE_BYTES_ENV}=<bytes> (e.g. 64GiB), or choose a smaller T or "
            "coarser bins")
    _cache.check_room(cache_root, needed, what)
