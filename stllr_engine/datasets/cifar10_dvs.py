"""CIFAR10-DVS, read with ``tonic.datasets.CIFAR10DVS`` (needs the ``aedat`` package).

On disk (``CIFAR10DVS.zip`` from figshare, then each class zip unzipped in place)::

    <data_dir>/CIFAR10DVS/airplane/cifar10_airplane_0.aedat4 ... (1000 per class)
    <data_dir>/CIFAR10DVS/automobile/... bird cat deer dog frog horse ship truck

An ``.aedat4`` file is the header ``#!AER-DAT4.0\\r\\n``, a size-prefixed
FlatBuffer ``IOHeader`` (compression, data-table position, XML stream
description with ``sizeX``/``sizeY`` = 128) and then packets
``(stream id: u32, size: u32, FlatBuffer "EVTS")`` of 16-byte events
``(t: i64 us, x: i16, y: i16, on: bool)``.

The dataset has no official split.  Fixed split used here: within each class,
files sorted by name with numbers compared as numbers (``_2`` before ``_10``);
the first 90 % (``n * 9 // 10``, 900 of 1000) are train, the rest test.

Frames: ``[T, 2, H, W]`` counts.  Paper default: 10 bins at 48 x 48.  The paper
does not say how; here the default is equal-time bins (``bin_ms=None``): each
recording, first to last event, is cut into ``T`` equal parts, so every event
is counted.  Pass ``bin_ms`` for fixed-width bins from the first event.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from stllr_engine.datasets._binning import TStart
from stllr_engine.datasets._events import EventSource, EventSplit, natural_key, no_download
from stllr_engine.errors import StllrError

CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck")


class CIFAR10DVSSource(EventSource):
    """CIFAR10-DVS in ``<data_dir>/CIFAR10DVS/<class>/*.aedat4``."""

    name: ClassVar[str] = "cifar10_dvs"
    folder: ClassVar[str] = "CIFAR10DVS"
    num_classes: ClassVar[int] = 10
    sensor_shape: ClassVar[tuple[int, ...]] = (2, 128, 128)
    t_start: ClassVar[TStart] = "first"
    layout: ClassVar[str] = "CIFAR10DVS/<class>/*.aedat4 for the classes " + ", ".join(CLASSES)
    source: ClassVar[str] = ("https://figshare.com/ndownloader/files/38023437 (CIFAR10DVS.zip,"
                             " then unzip each <class>.zip inside CIFAR10DVS/)")
    defaults: ClassVar[dict[str, Any]] = {"T": 10, "bin_ms": None, "resolution": (48, 48)}
    time_field: ClassVar[str] = "event timestamps t"
    time_unit: ClassVar[str] = "microseconds (as AEDAT4 stores them)"
    max_span_s: ClassVar[float] = 60.0
    typical_span: ClassVar[str] = "about 1.3 s"

    def check(self, root: Path) -> None:
        folder = root / self.folder
        for name in CLASSES:
            if not any((folder / name).glob("*.aedat4")):
                zipped = folder / f"{name}.zip"
                what = (f"{zipped.name} is there but not unzipped" if zipped.is_file()
                        else f"no {name}/*.aedat4 files")
                raise self.missing(root, what)
        for path in folder.rglob("*.aedat4"):
            if path.parent.parent != folder or path.parent.name not in CLASSES:
                raise self.misplaced(path, "it must sit in CIFAR10DVS/<class>/")
        try:
            import aedat  # noqa: F401  (tonic imports it lazily, per file)
        except ImportError as exc:
            raise StllrError("cifar10_dvs needs the aedat package to read .aedat4 files: "
                             "pip install 'stllr[cifar10dvs]' (or pip install aedat)") from exc

    def open_split(self, root: Path, split: str) -> EventSplit:
        import tonic.datasets

        dataset = no_download(tonic.datasets.CIFAR10DVS)(str(root))
        chosen: list[int] = []
        for label in range(self.num_classes):
            members = sorted((i for i, t in enumerate(dataset.targets) if t == label),
                             key=lambda i: natural_key(Path(dataset.data[i]).name))
            n_train = len(members) * 9 // 10  # 900 of the 1000 files of a class
            chosen += members[:n_train] if split == "train" else members[n_train:]
        dataset.data = [dataset.data[i] for i in chosen]
        dataset.targets = [dataset.targets[i] for i in chosen]

        def read(i: int) -> tuple[np.ndarray, tuple[np.ndarray, ...], int]:
            events, label = dataset[i]
            return events["t"], (events["p"].astype(np.int64), events["y"], events["x"]), label

        files = [Path(p) for p in dataset.data]
        return EventSplit(files=files, n=len(files), read=read, file_of=lambda i: files[i])
