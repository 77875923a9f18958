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
from stllr_engine.errors import StllrError


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
    time_field: ClassVar[str] = "spikes/times"
    time_unit: ClassVar[str] = "seconds"
    max_span_s: ClassVar[float] = 10.0
    typical_span: ClassVar[str] = "about 1 s"

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
        self.check_fields(path)
        try:
            dataset = no_download(tonic.datasets.SHD)(str(root), train=split == "train")
            n = len(dataset)
        except Exception as exc:
            raise self.corrupt(path, exc) from exc

        def read(i: int) -> tuple[np.ndarray, tuple[np.ndarray, ...], int]:
            events, label = dataset[i]
            return events["t"], (events["x"],), int(label)

        return EventSplit(files=[path], n=n, read=read, file_of=lambda i: path, one_file=True)

    def speakers(self, root: Path, split: str) -> np.ndarray | None:
        """``extra/speaker`` of the split's file (``None`` when the file has none)."""
        import h5py

        path = root / self.folder / f"shd_{split}.h5"
        try:
            with h5py.File(path, "r") as f:
                if "extra/speaker" not in f:
                    return None
                ids = np.asarray(f["extra/speaker"][()])
        except Exception as exc:
            raise self.corrupt(path, exc) from exc
        if ids.ndim != 1:
            raise StllrError(f"{path}: extra/speaker has shape {ids.shape}; expected one speaker id per sample")
        return ids

    def check_fields(self, path: Path) -> None:
        """Refuse, in one line, an SHD file whose labels do not fit its samples.

        tonic reads ``len(labels)`` samples and casts labels to int, so fewer labels
        than samples would drop samples, and bool or fractional labels would be
        taken as classes, all without a word.
        """
        import h5py

        try:
            with h5py.File(path, "r") as f:
                missing = [k for k in ("spikes/times", "spikes/units", "labels") if k not in f]
                if missing:
                    raise StllrError(f"{path}: no {missing[0]} in this file; an SHD file holds "
                                     "spikes/times, spikes/units and labels: replace it with a "
                                     f"fresh copy from {self.source}")
                n_times, n_units = len(f["spikes/times"]), len(f["spikes/units"])
                labels = np.asarray(f["labels"][()])
        except StllrError:
            raise
        except Exception as exc:
            raise self.corrupt(path, exc) from exc
        top = self.num_classes - 1
        want = f"expected one integer class label 0..{top} per sample"
        if labels.ndim != 1 or not len(labels) == n_times == n_units:
            raise StllrError(f"{path}: labels has {labels.size} entries for {n_times} samples "
                             f"in spikes/times ({n_units} in spikes/units); {want}")
        if labels.dtype.kind not in "iuf":
            raise StllrError(f"{path}: labels are stored as {labels.dtype} (e.g. "
                             f"labels[0]={labels[0].item()!r}); {want}")
        if labels.dtype.kind == "f":
            bad = np.flatnonzero(~np.isfinite(labels) | (labels != np.floor(labels)))
            if len(bad):
                raise StllrError(f"{path}: labels[{bad[0]}]={labels[bad[0]].item()!r} is not an "
                                 f"integer; {want}")
        if len(labels) and (labels.min() < 0 or labels.max() > top):
            low, high = labels.min(), labels.max()
            bad = np.flatnonzero((labels < 0) | (labels > top))
            hint = ("; they look 1-based: subtract 1" if low == 1 and high == top + 1
                    else "")
            raise StllrError(f"{path}: labels range over {low:g}..{high:g} but {self.name} "
                             f"classes are 0..{top} (labels[{bad[0]}]={labels[bad[0]]:g} is "
                             f"the first outside){hint}")
