"""Spiking Heidelberg Digits (SHD), read with ``tonic.datasets.SHD``.

On disk (tonic's layout; unzip the archives from https://zenkelab.org/datasets/)::

    <data_dir>/SHD/shd_train.h5     8156 samples
    <data_dir>/SHD/shd_test.h5      2264 samples

Each HDF5 file holds ``spikes/times`` (variable-length float arrays, seconds),
``spikes/units`` (variable-length uint16 arrays, cochlea channel 0..699),
``labels`` (0..19) and ``extra/{keys,speaker,meta_info/...}``.  tonic returns
times in microseconds (truncated to integers).

Frames: ``[T, channels]`` counts, bins starting at t = 0 (the recording onset).
Paper default: T = 100 bins of 10 ms (1 s) over all 700 channels; later spikes are
dropped.  ``channels < 700`` merges neighbouring channels (floor(c * channels / 700)).
The sample order is the order in the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from stllr_engine.datasets._binning import TStart
from stllr_engine.datasets._events import EventSource, EventSplit, no_download


class SHDSource(EventSource):
    """SHD in ``<data_dir>/SHD/shd_{train,test}.h5``."""

    name: ClassVar[str] = "shd"
    folder: ClassVar[str] = "SHD"
    num_classes: ClassVar[int] = 20
    sensor_shape: ClassVar[tuple[int, ...]] = (700,)
    t_start: ClassVar[TStart] = "zero"
    layout: ClassVar[str] = "SHD/shd_train.h5 and SHD/shd_test.h5"
    source: ClassVar[str] = ("https://zenkelab.org/datasets/ (shd_train.h5.zip, "
                             "shd_test.h5.zip, then unzip both)")
    defaults: ClassVar[dict[str, Any]] = {"T": 100, "bin_ms": 10.0, "channels": 700}

    def check(self, root: Path) -> None:
        for split in ("train", "test"):
            path = root / self.folder / f"shd_{split}.h5"
            if not path.is_file():
                zipped = path.with_name(path.name + ".zip")
                what = (f"{zipped.name} is there but not unzipped" if zipped.is_file()
                        else f"{path.name} not found")
                raise self.missing(root, what)

    def open_split(self, root: Path, split: str) -> EventSplit:
        import tonic.datasets

        path = root / self.folder / f"shd_{split}.h5"
        try:
            dataset = no_download(tonic.datasets.SHD)(str(root), train=split == "train")
            n = len(dataset)
        except Exception as exc:
            raise self.corrupt(path, exc) from exc

        def read(i: int) -> tuple[np.ndarray, tuple[np.ndarray, ...], int]:
            events, label = dataset[i]
            return events["t"], (events["x"],), int(label)

        return EventSplit(files=[path], n=n, read=read, file_of=lambda i: path)
