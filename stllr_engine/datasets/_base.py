"""The sample container shared by every dataset: frames ``[N, T, ...]`` plus labels.

Frames are held as compact counts (a read-only memory map of a cache entry, or
a small in-memory array for the embedded datasets) and converted to float32 on
access, so a sample costs one slice and one cast.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset split.

    Attributes:
        name: Registry name, e.g. ``"shd"``.
        split: ``"train"`` or ``"test"``.
        input_shape: Shape of one time step, e.g. ``(700,)`` or ``(2, 32, 32)``.
        num_classes: Labels are ``0 .. num_classes - 1``.
        T: Number of time steps per sample.
        bin_ms: Bin width in milliseconds; ``None`` when each sample is split
            into ``T`` equal bins, or when time steps are not milliseconds.
        params: Every parameter the frames were made with (for provenance).
        cache_entry: Path of the on-disk cache entry, ``None`` for embedded data.
        task: ``"classification"`` (samples are ``(frames, label)``) or ``"flow"``
            (optical flow, :class:`~stllr_engine.datasets._flow.FlowDataset`: samples are
            ``(frames, target [4, H, W])`` and ``num_classes`` is the 2 output channels u, v).
    """

    name: str
    split: str
    input_shape: tuple[int, ...]
    num_classes: int
    T: int
    bin_ms: float | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    cache_entry: str | None = None
    task: str = "classification"


class FrameDataset(Dataset):
    """Indexable samples ``(frames: FloatTensor[T, *input_shape], label: int)``.

    Args:
        frames: Array ``[N, T, *input_shape]`` of any numeric dtype (counts or 0/1).
        labels: Integer array ``[N]``.
        info: Description of the split.
        groups: Who recorded each sample (e.g. SHD's ``extra/speaker``), ``[N]``, or a function
            that reads them when first asked for (:attr:`groups`), or ``None``: what a
            validation split held out by speaker draws on.
    """

    def __init__(self, frames: np.ndarray, labels: np.ndarray, info: DatasetInfo,
                 groups: np.ndarray | Callable[[], np.ndarray | None] | None = None) -> None:
        if len(frames) != len(labels):
            raise ValueError(f"{len(frames)} frames but {len(labels)} labels")
        self._groups = groups if groups is None or callable(groups) else np.asarray(groups)
        if isinstance(self._groups, np.ndarray) and len(self._groups) != len(labels):
            raise ValueError(f"{len(self._groups)} speaker ids but {len(labels)} labels")
        labels = np.asarray(labels)
        if labels.dtype.kind not in "iu" and not (
                labels.dtype.kind == "f" and np.array_equal(labels, np.floor(labels))):
            raise ValueError(f"labels must be integers, got {labels.dtype}")  # never truncate
        self._frames = frames
        self._labels = labels.astype(np.int64)
        self.info = info

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        frames = np.asarray(self._frames[index], dtype=np.float32)
        return torch.from_numpy(frames), int(self._labels[index])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        """Fetch many samples with one read; ``DataLoader`` uses this for batches."""
        index = np.asarray(indices, dtype=np.int64)
        block = torch.from_numpy(np.asarray(self._frames[index], dtype=np.float32))
        labels = self._labels[index].tolist()
        return [(block[j], labels[j]) for j in range(len(index))]

    @staticmethod
    def collate(batch: Sequence[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch samples into ``(frames [B, T, ...], labels [B])``.

        A batch straight from :meth:`__getitems__` is already one block, which is
        returned without a copy; anything else is stacked.  PyTorch's default
        collate always stacks, which for SHD (128 x 100 x 700 float32 = 36 MB a
        batch) costs more than reading the cache, so pass
        ``collate_fn=FrameDataset.collate`` to a ``DataLoader``.
        """
        frames = [x for x, _ in batch]
        labels = torch.tensor([y for _, y in batch], dtype=torch.int64)
        base = frames[0]._base
        if (base is not None and base.shape[0] == len(frames) and base.is_contiguous()
                and all(x._base is base and x.data_ptr() == base.data_ptr()
                        + j * base.stride(0) * base.element_size()
                        for j, x in enumerate(frames))):
            return base, labels
        return torch.stack(frames), labels

    @property
    def groups(self) -> np.ndarray | None:
        """Who recorded each sample ``[N]`` (read on first use), or ``None`` when the dataset does not say."""
        if callable(self._groups):
            ids = self._groups()
            if ids is not None:
                ids = np.asarray(ids)
                if len(ids) != len(self._labels):
                    from stllr_engine.errors import StllrError

                    raise StllrError(f"{self.info.name} ({self.info.split}): {len(ids)} speaker ids for "
                                     f"{len(self._labels)} samples; expected one speaker id per sample (replace "
                                     "the file with a fresh copy)")
            self._groups = ids
        return self._groups

    @property
    def labels(self) -> np.ndarray:
        """All labels, in sample order (read-only view)."""
        view = self._labels.view()
        view.flags.writeable = False
        return view

    def __getstate__(self) -> dict[str, Any]:
        # A memory map is sent to worker processes as its path, not its bytes.
        state = dict(self.__dict__)
        if isinstance(self._frames, np.memmap):
            state["_frames"] = ("memmap", str(self._frames.filename))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        frames = state["_frames"]
        if isinstance(frames, tuple) and frames[0] == "memmap":
            state["_frames"] = np.load(frames[1], mmap_mode="r")
        self.__dict__.update(state)

    def __repr__(self) -> str:
        info = self.info
        return (f"FrameDataset({info.name!r}, split={info.split!r}, n={len(self)}, "
                f"T={info.T}, input_shape={info.input_shape}, num_classes={info.num_classes})")
