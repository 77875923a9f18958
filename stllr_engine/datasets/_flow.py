"""The sample container of the optical-flow datasets (``flow_synthetic``, ``mvsec``).

A sample is ``(frames, target)``:

* ``frames``: float32 ``[T, C, H, W]`` event counts, Spike-FlowNet's input: ``C = 4`` channels per
  spiking step, (former half ON, former half OFF, latter half ON, latter half OFF), the events
  between the two grey frames split into a former and a latter half and each half into ``T`` bins;
* ``target``: float32 ``[4, H, W]``: the previous grey image in ``[0, 1]``, the next grey image in
  ``[0, 1]``, the ground-truth flow ``u`` (along x, pixels) and ``v`` (along y, pixels), 0 where the
  ground truth is unknown. The flow carries a pixel of the previous image to where it is in the next,
  ``I_prev(x) ≈ I_next(x + F(x))``, as :func:`stllr_engine.flow.warp` expects.

Samples come from a *source* (anything with ``len()`` and ``sample(i) -> (counts, target)`` in
numpy): :class:`ArrayFlowSource` for data held in arrays (in memory or memory-mapped), or a
dataset's own source that bins events on access (``mvsec``). Sources pickle cheaply: memory maps
travel as their paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from stllr_engine.datasets._base import DatasetInfo


class FlowSource(Protocol):
    """What :class:`FlowDataset` reads samples from."""

    def __len__(self) -> int: ...

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(counts [T, C, H, W] any numeric dtype, target [4, H, W] float)`` of sample ``index``."""
        ...


class ArrayFlowSource:
    """Samples held in two arrays: counts ``[N, T, C, H, W]`` and targets ``[N, 4, H, W]``."""

    def __init__(self, frames: np.ndarray, targets: np.ndarray) -> None:
        if len(frames) != len(targets):
            raise ValueError(f"{len(frames)} frames but {len(targets)} targets")
        if targets.ndim != 4 or targets.shape[1] != 4 or frames.ndim != 5 or frames.shape[3:] != targets.shape[2:]:
            raise ValueError(f"frames {frames.shape} and targets {targets.shape} must be [N, T, C, H, W] "
                             "and [N, 4, H, W]")
        self.frames, self.targets = frames, targets

    def __len__(self) -> int:
        return len(self.frames)

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.frames[index], self.targets[index]

    def block(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Many samples with one read each: ``([B, T, C, H, W], [B, 4, H, W])``."""
        return self.frames[indices], self.targets[indices]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in ("frames", "targets"):
            if isinstance(state[key], np.memmap):
                state[key] = ("memmap", str(state[key].filename))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key in ("frames", "targets"):
            value = state[key]
            if isinstance(value, tuple) and value[0] == "memmap":
                state[key] = np.load(value[1], mmap_mode="r")
        self.__dict__.update(state)


class FlowDataset(Dataset):
    """Indexable flow samples ``(frames: FloatTensor[T, C, H, W], target: FloatTensor[4, H, W])``.

    Args:
        source: Where samples come from (:class:`ArrayFlowSource` or a dataset's own source).
        info: Description of the split; ``info.task == "flow"``, ``info.num_classes == 2``.
        sequences: ``(name, start, stop)`` per recording: samples ``start .. stop - 1`` come from
            sequence ``name``; they cover ``0 .. N - 1`` in order.
        grouped: Whether samples of one sequence are related (consecutive frames of one
            recording): then :attr:`groups` gives each sample's sequence number, so a validation
            split can hold out whole sequences; otherwise (independent samples) ``None``.
        block: With ``grouped``, cut each sequence further into blocks of this many consecutive
            samples, one group each (neighbouring frame pairs are near-duplicates: a
            validation split must hold out whole stretches of a recording, ``val_split: block``).
    """

    def __init__(self, source: FlowSource, info: DatasetInfo,
                 sequences: Sequence[tuple[str, int, int]], grouped: bool = True, block: int | None = None) -> None:
        n = len(source)
        self.sequences = [(str(name), int(a), int(b)) for name, a, b in sequences]
        ends = [0] + [b for _, _, b in self.sequences]
        if any(a != ends[k] or b < a for k, (_, a, b) in enumerate(self.sequences)) or ends[-1] != n:
            raise ValueError(f"sequences {self.sequences} do not cover the {n} samples in order")
        self._source = source
        self._n = n
        self._grouped = grouped
        self._block = block
        self.info = info

    def __len__(self) -> int:
        return self._n

    def _check(self, index: int) -> int:
        i = int(index)
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"sample {index} out of range for {self._n} samples")
        return i

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        counts, target = self._source.sample(self._check(index))
        return (torch.from_numpy(np.asarray(counts, dtype=np.float32)),
                torch.from_numpy(np.array(target, dtype=np.float32)))

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Fetch many samples; from arrays with one read, so :meth:`collate` returns the block uncopied."""
        index = np.asarray([self._check(i) for i in indices], dtype=np.int64)
        block = getattr(self._source, "block", None)
        if block is not None:
            counts, targets = block(index)
            frames = torch.from_numpy(np.asarray(counts, dtype=np.float32))
            target = torch.from_numpy(np.array(targets, dtype=np.float32))
            return [(frames[j], target[j]) for j in range(len(index))]
        return [self[int(i)] for i in index]

    @staticmethod
    def collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch samples into ``(frames [B, T, C, H, W], targets [B, 4, H, W])``; a batch that is
        already one block (from :meth:`__getitems__`) is returned without a copy."""
        return _block([x for x, _ in batch]), _block([y for _, y in batch])

    @property
    def labels(self) -> np.ndarray:
        """Zeros ``[N]`` (int64): flow samples have no class, but code that splits by label still works."""
        view = np.zeros(self._n, dtype=np.int64)
        view.flags.writeable = False
        return view

    @property
    def groups(self) -> np.ndarray | None:
        """Each sample's group ``[N]``: its sequence number (index into :attr:`sequences`), or with
        ``block`` its block of consecutive samples (numbered across the sequences); ``None`` when
        the samples are independent."""
        if not self._grouped:
            return None
        out = np.empty(self._n, dtype=np.int64)
        first = 0
        for k, (_, a, b) in enumerate(self.sequences):
            if self._block is None:
                out[a:b] = k
            else:
                out[a:b] = first + np.arange(b - a) // self._block
                first += -(-(b - a) // self._block)
        return out

    def __repr__(self) -> str:
        info = self.info
        return (f"FlowDataset({info.name!r}, split={info.split!r}, n={len(self)}, T={info.T}, "
                f"input_shape={info.input_shape}, sequences={len(self.sequences)})")


def _block(parts: list[torch.Tensor]) -> torch.Tensor:
    base = parts[0]._base
    if (base is not None and base.shape[0] == len(parts) and base.is_contiguous()
            and all(x._base is base and x.data_ptr() == base.data_ptr()
                    + j * base.stride(0) * base.element_size() for j, x in enumerate(parts))):
        return base
    return torch.stack(parts)
