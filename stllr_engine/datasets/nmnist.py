"""N-MNIST, read with ``tonic.datasets.NMNIST``.

On disk (unzip ``train.zip`` / ``test.zip`` from Mendeley Data, tonic's URLs)::

    <data_dir>/NMNIST/Train/<digit 0..9>/<nnnnn>.bin
    <data_dir>/NMNIST/Test/<digit>/<nnnnn>.bin

A ``.bin`` file is a sequence of 40-bit events: byte 0 = x, byte 1 = y (0..33),
byte 2 bit 7 = polarity, then a 23-bit timestamp in microseconds (byte 2 bits
0..6, bytes 3 and 4, big-endian).  The label is the folder name.

Frames: ``[T, 2, H, W]`` counts, bins starting at the first event.  Default here
(not in the paper): 10 bins of 30 ms, covering the 3 saccades (~300 ms) of a
recording, at the full 34 x 34.  Samples are sorted by (digit, file name).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from stllr_engine.datasets._binning import TStart
from stllr_engine.datasets._events import EventSource, EventSplit, no_download

_FOLDERS = {"train": "Train", "test": "Test"}
_DIGITS = frozenset(str(d) for d in range(10))


class NMNISTSource(EventSource):
    """N-MNIST in ``<data_dir>/NMNIST/{Train,Test}/<digit>/*.bin``."""

    name: ClassVar[str] = "nmnist"
    folder: ClassVar[str] = "NMNIST"
    num_classes: ClassVar[int] = 10
    sensor_shape: ClassVar[tuple[int, ...]] = (2, 34, 34)
    t_start: ClassVar[TStart] = "first"
    layout: ClassVar[str] = "NMNIST/Train/<digit>/*.bin and NMNIST/Test/<digit>/*.bin"
    source: ClassVar[str] = ("https://data.mendeley.com/datasets/468j46mzdv (train.zip, "
                             "test.zip, unzipped into NMNIST/)")
    defaults: ClassVar[dict[str, Any]] = {"T": 10, "bin_ms": 30.0, "resolution": (34, 34)}
    # 23-bit microsecond timestamps cannot span more than 8.4 s: no other unit fits.
    time_field: ClassVar[str] = "event timestamps"
    time_unit: ClassVar[str] = "microseconds"
    max_span_s: ClassVar[float] = 60.0
    typical_span: ClassVar[str] = "about 0.3 s"

    def check(self, root: Path) -> None:
        for folder in _FOLDERS.values():
            split_dir = root / self.folder / folder
            if not split_dir.is_dir():
                archive = root / self.folder / f"{folder.lower()}.zip"
                what = (f"{archive.name} is there but not unzipped" if archive.is_file()
                        else f"folder {folder}/ not found")
                raise self.missing(root, what)
            files = list(split_dir.rglob("*.bin"))
            if not files:
                raise self.missing(root, f"no <digit>/*.bin files in {folder}/")
            for path in files:
                if path.parent.parent != split_dir or path.parent.name not in _DIGITS:
                    raise self.misplaced(path, f"it must sit in {folder}/<digit 0..9>/")

    def open_split(self, root: Path, split: str) -> EventSplit:
        import tonic.datasets

        dataset = no_download(tonic.datasets.NMNIST)(str(root), train=split == "train")
        order = sorted(range(len(dataset.data)), key=lambda i: (dataset.targets[i],
                                                                dataset.data[i]))
        dataset.data = [dataset.data[i] for i in order]
        dataset.targets = [dataset.targets[i] for i in order]

        def read(i: int) -> tuple[np.ndarray, tuple[np.ndarray, ...], int]:
            # tonic silently drops a cut-off last event; a size that is not a
            # multiple of 5 bytes is the one truncation a reader can see.
            size = Path(dataset.data[i]).stat().st_size
            if size % 5:
                raise ValueError(f"{size} bytes is not a whole number of 5-byte events")
            events, label = dataset[i]
            return events["t"], (events["p"], events["y"], events["x"]), int(label)

        files = [Path(p) for p in dataset.data]
        return EventSplit(files=files, n=len(files), read=read, file_of=lambda i: files[i])
