"""Name -> dataset table and :func:`load_dataset`, the one entry point."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from stllr_engine.datasets import _cache, digits, flow_synthetic, mvsec, spoken_digits, synthetic_temporal
from stllr_engine.datasets._base import FrameDataset
from stllr_engine.datasets._events import EventSource, load_events
from stllr_engine.datasets.cifar10_dvs import CIFAR10DVSSource
from stllr_engine.datasets.dvs_gesture import DVSGestureSource
from stllr_engine.datasets.nmnist import NMNISTSource
from stllr_engine.datasets.shd import SHDSource
from stllr_engine.errors import StllrError

PathLike = str | os.PathLike[str]
_Loader = Callable[[PathLike | None, PathLike | None, dict[str, Any], int | str | None],
                   tuple[FrameDataset, FrameDataset]]


@dataclass(frozen=True)
class DatasetSpec:
    """One entry of :data:`DATASETS`.

    Attributes:
        name: Registry name.
        description: One line: what the samples are and the default binning.
        defaults: Every parameter ``load_dataset`` accepts for it, with its default.
        needs_files: Whether it reads ``data_dir`` (and caches frames).
    """

    name: str
    description: str
    defaults: Mapping[str, Any]
    needs_files: bool
    _validate: Callable[[dict[str, Any]], dict[str, Any]]
    _load: _Loader

    def load(self, data_dir: PathLike | None = None, cache_dir: PathLike | None = None,
             max_cache_bytes: int | str | None = None,
             **params: Any) -> tuple[FrameDataset, FrameDataset]:
        """Same as ``load_dataset(self.name, data_dir, cache_dir, max_cache_bytes, **params)``."""
        if max_cache_bytes is not None:
            _cache.max_cache_bytes(max_cache_bytes)  # a bad value is an error for every dataset
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise StllrError(f"dataset {self.name!r} has no parameter {unknown[0]!r}; "
                             f"valid: {', '.join(self.defaults)}")
        return self._load(data_dir, cache_dir, self._validate({**self.defaults, **params}),
                          max_cache_bytes)


def _event_spec(source: EventSource, description: str) -> DatasetSpec:
    def load(data_dir: PathLike | None, cache_dir: PathLike | None, params: dict[str, Any],
             max_cache_bytes: int | str | None) -> tuple[FrameDataset, FrameDataset]:
        return load_events(source, data_dir, cache_dir, params, max_cache_bytes)

    return DatasetSpec(source.name, description, MappingProxyType(dict(source.defaults)),
                       True, source.validate, load)


def _embedded_spec(module: Any, description: str) -> DatasetSpec:
    def load(data_dir: PathLike | None, cache_dir: PathLike | None, params: dict[str, Any],
             max_cache_bytes: int | str | None) -> tuple[FrameDataset, FrameDataset]:
        return module.load(params)  # generated in memory: no cache, no limit

    return DatasetSpec(module.NAME, description, MappingProxyType(dict(module.DEFAULTS)),
                       False, module.validate, load)


def _spoken_digits_spec() -> DatasetSpec:
    source = spoken_digits.SpokenDigitsSource()
    binning = tuple(source.defaults)

    def validate(params: dict[str, Any]) -> dict[str, Any]:
        out = source.validate({k: params[k] for k in binning})
        out.update(spoken_digits.validate_generation(params))
        return out

    def load(data_dir: PathLike | None, cache_dir: PathLike | None, params: dict[str, Any],
             max_cache_bytes: int | str | None) -> tuple[FrameDataset, FrameDataset]:
        # a set made elsewhere (stllr data make spoken_digits DIR), else generated once into the cache
        root = data_dir if data_dir is not None else spoken_digits.ensure(params)
        return load_events(source, root, cache_dir, {k: params[k] for k in binning}, max_cache_bytes)

    return DatasetSpec(spoken_digits.NAME, "SHD's 20 words spoken by TTS voices through a 700-channel cochlea "
                       "model (generated; needs espeak-ng): [T, 700] counts, 100 x 10 ms, 20 classes",
                       MappingProxyType(dict(spoken_digits.DEFAULTS)), False, validate, load)


def _mvsec_spec() -> DatasetSpec:
    def load(data_dir: PathLike | None, cache_dir: PathLike | None, params: dict[str, Any],
             max_cache_bytes: int | str | None) -> tuple[FrameDataset, FrameDataset]:
        return mvsec.load(data_dir, cache_dir, params, max_cache_bytes)  # type: ignore[return-value]

    return DatasetSpec(mvsec.NAME, "MVSEC optical flow (Spike-FlowNet's input): grey frame pairs dt=1 or 4 apart, "
                       "[T, 4, 256, 256] former/latter-half ON/OFF counts, T=5 (dt=1) or 20 (dt=4); target "
                       "[4, 256, 256] = both images and the gt flow; train outdoor_day2, test indoor_flying1-3",
                       MappingProxyType(dict(mvsec.DEFAULTS)), True, mvsec.validate, load)


DATASETS: Mapping[str, DatasetSpec] = MappingProxyType({spec.name: spec for spec in (
    _event_spec(SHDSource(), "Spiking Heidelberg Digits: [T, 700] counts, 100 x 10 ms, "
                             "20 classes"),
    _event_spec(DVSGestureSource(), "IBM DVS Gesture: [T, 2, 32, 32] counts, 20 x 75 ms, "
                                    "11 classes"),
    _event_spec(CIFAR10DVSSource(), "CIFAR10-DVS: [T, 2, 48, 48] counts, 10 equal-time bins, "
                                    "10 classes, fixed 90/10 split"),
    _event_spec(NMNISTSource(), "N-MNIST: [T, 2, 34, 34] counts, 10 x 30 ms, 10 classes"),
    _embedded_spec(synthetic_temporal, "embedded toy task, classes differ only in spike "
                                       "timing: [T, channels] 0/1"),
    _embedded_spec(digits, "sklearn 8x8 digits, latency coded: [T, 64] 0/1, 10 classes"),
    _spoken_digits_spec(),
    _embedded_spec(flow_synthetic, "embedded optical-flow toy task: a smooth random texture translating and "
                                   "rotating, [T, 4, 32, 32] former/latter-half ON/OFF counts, T=5; target "
                                   "[4, 32, 32] = both images and the exact flow"),
    _mvsec_spec(),
)})


def load_dataset(name: str, data_dir: PathLike | None = None,
                 cache_dir: PathLike | None = None, max_cache_bytes: int | str | None = None,
                 **params: Any) -> tuple[FrameDataset, FrameDataset]:
    """Load the train and test splits of a dataset as float frames.

    Event datasets (``shd``, ``dvs_gesture``, ``cifar10_dvs``, ``nmnist``) are read
    from ``<data_dir>/<tonic folder>/`` and binned once into the frame cache
    (``cache_dir``, default ``<data_dir>/.stllr_cache``); later calls memory-map
    it.  ``synthetic_temporal`` and ``digits`` are generated in memory.

    Args:
        name: A key of :data:`DATASETS`.
        data_dir: Folder holding the dataset folders (event datasets only).
        cache_dir: Where binned frames are kept.
        max_cache_bytes: Refuse to write new cache entries larger than this in total
            (bytes, or a string such as ``"64GiB"``); default ``$STLLR_MAX_CACHE_BYTES``,
            else 8 GiB.  Not part of the cache key.
        **params: Dataset parameters, see ``DATASETS[name].defaults``; e.g.
            ``T``, ``bin_ms`` and ``resolution`` (or ``channels`` for SHD).

    Returns:
        ``(train, test)``; ``train[i]`` is ``(FloatTensor[T, *input_shape], label)``
        and ``train.info`` a :class:`DatasetInfo`.

    Raises:
        StllrError: Unknown name or parameter, bad value, missing, malformed or
            corrupt files, a cache that would not fit (memory, ``max_cache_bytes``,
            free disk space) or a write that failed.

    >>> train, test = load_dataset("digits", T=8)
    >>> train.info.input_shape, train.info.T, train[0][0].shape
    ((64,), 8, torch.Size([8, 64]))
    """
    spec = DATASETS.get(name)
    if spec is None:
        raise StllrError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if data_dir is not None:
        data_dir = Path(data_dir)
    return spec.load(data_dir, cache_dir, max_cache_bytes, **params)
