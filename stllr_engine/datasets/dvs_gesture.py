"""IBM DVS Gesture, read with ``tonic.datasets.DVSGesture`` (tonic's preprocessed copy).

On disk (extract ``ibmGestureTrain.tar.gz`` / ``ibmGestureTest.tar.gz`` from
figshare, tonic's URLs below)::

    <data_dir>/DVSGesture/ibmGestureTrain/user01_fluorescent/0.npy ... 10.npy
    <data_dir>/DVSGesture/ibmGestureTest/user24_led/...

Each ``<label>.npy`` is an ``[n, 4]`` array with columns ``x, y, p, t`` (pixels
0..127, polarity 0/1, time in ms; tonic turns it into microseconds).  Folders
are ``user<NN>_<lighting>``; the label (0..10) is the file name.

Frames: ``[T, 2, H, W]`` counts, bins starting at the sample's first event.  Paper
default: 20 bins of 75 ms (1.5 s) at 32 x 32 (4 x 4 pixel blocks of the 128 x 128
sensor).  tonic lists files in filesystem order; here samples are sorted by
(user, lighting, label).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from stllr_engine.datasets._binning import TStart
from stllr_engine.datasets._events import EventSource, EventSplit, no_download

_FOLDERS = {"train": "ibmGestureTrain", "test": "ibmGestureTest"}
_USER = re.compile(r"user\d+_.+")
_SAMPLE = re.compile(r"\d+\.npy")


class DVSGestureSource(EventSource):
    """DVS Gesture in ``<data_dir>/DVSGesture/ibmGesture{Train,Test}/user*_*/<label>.npy``."""

    name: ClassVar[str] = "dvs_gesture"
    folder: ClassVar[str] = "DVSGesture"
    num_classes: ClassVar[int] = 11
    sensor_shape: ClassVar[tuple[int, ...]] = (2, 128, 128)
    t_start: ClassVar[TStart] = "first"
    layout: ClassVar[str] = ("DVSGesture/ibmGestureTrain/userNN_<lighting>/<label>.npy and "
                             "DVSGesture/ibmGestureTest/...")
    source: ClassVar[str] = ("https://figshare.com/ndownloader/files/38022171 (train) and "
                             "https://figshare.com/ndownloader/files/38020584 (test), "
                             "extracted into DVSGesture/")
    defaults: ClassVar[dict[str, Any]] = {"T": 20, "bin_ms": 75.0, "resolution": (32, 32)}
    time_field: ClassVar[str] = "column t (the 4th of x, y, p, t)"
    time_unit: ClassVar[str] = "milliseconds"
    max_span_s: ClassVar[float] = 60.0
    typical_span: ClassVar[str] = "about 6 s"

    def check(self, root: Path) -> None:
        for folder in _FOLDERS.values():
            split_dir = root / self.folder / folder
            if not split_dir.is_dir():
                archive = root / self.folder / f"{folder}.tar.gz"
                what = (f"{archive.name} is there but not extracted" if archive.is_file()
                        else f"folder {folder}/ not found")
                raise self.missing(root, what)
            files = [p for p in split_dir.glob("*/*.npy") if _USER.fullmatch(p.parent.name)]
            if not files:
                raise self.missing(root, f"no user*_*/<label>.npy files in {folder}/")
            for path in files:
                if not _SAMPLE.fullmatch(path.name):
                    raise self.misplaced(path, "the file name must be <label 0..10>.npy")
            labels = {int(p.stem) for p in files}
            for path in files:
                if int(path.stem) >= self.num_classes:
                    hint = (f"file names give labels {min(labels)}..{max(labels)}, 1-based: "
                            "rename each N.npy to N-1.npy" if min(labels) == 1
                            else "the file name must be <label 0..10>.npy")
                    raise self.misplaced(path, hint)

    def open_split(self, root: Path, split: str) -> EventSplit:
        import tonic.datasets

        dataset = no_download(tonic.datasets.DVSGesture)(str(root), train=split == "train")
        order = sorted(range(len(dataset.data)), key=lambda i: (
            dataset.users[i], dataset.lighting[i], dataset.targets[i], dataset.data[i]))
        for attr in ("data", "targets", "users", "lighting"):
            values = getattr(dataset, attr)
            setattr(dataset, attr, [values[i] for i in order])

        def read(i: int) -> tuple[np.ndarray, tuple[np.ndarray, ...], int]:
            events, label = dataset[i]
            return events["t"], (events["p"].astype(np.int64), events["y"], events["x"]), label

        files = [Path(p) for p in dataset.data]
        return EventSplit(files=files, n=len(files), read=read, file_of=lambda i: files[i])
