"""The frame cache on its own: keys, compact dtypes, clean failure, pickling."""

from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from stllr_engine.datasets import DatasetInfo, FrameDataset, _cache
from stllr_engine.errors import StllrError


def _samples(values: list[int]) -> Iterator[tuple[np.ndarray, int]]:
    for i, value in enumerate(values):
        counts = np.zeros((2, 3), dtype=np.int64)
        counts[1, 2] = value
        counts[0, 0] = i
        yield counts, i % 2


def _build(root: Path, values: list[int], name: str = "toy-train-0") -> tuple:
    return _cache.open_or_build(root, name, {"why": "test"}, len(values), (2, 3),
                                lambda: _samples(values))


def test_counts_use_the_smallest_dtype_and_widen_on_overflow(tmp_path: Path) -> None:
    frames, _, _ = _build(tmp_path / "a", [1, 2, 3])
    assert frames.dtype == np.uint8
    values = [5, 300, 7, 70_000, 9]
    frames, labels, entry = _build(tmp_path / "b", values)
    assert frames.dtype == np.uint32 and isinstance(frames, np.memmap)
    assert frames[:, 1, 2].tolist() == values and frames[:, 0, 0].tolist() == [0, 1, 2, 3, 4]
    assert labels.tolist() == [0, 1, 0, 1, 0]
    assert sorted(p.name for p in entry.iterdir()) == ["frames.npy", "labels.npy", "meta.json"]


def test_failed_build_leaves_nothing_but_the_lock(tmp_path: Path) -> None:
    def broken() -> Iterator[tuple[np.ndarray, int]]:
        yield from _samples([1, 2])
        raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire"):
        _cache.open_or_build(tmp_path, "toy-train-0", {}, 4, (2, 3), broken)
    assert [p.name for p in tmp_path.iterdir()] == ["toy-train-0.lock"]
    frames, _, _ = _build(tmp_path, [1, 2, 3, 4])  # the next try builds normally
    assert len(frames) == 4


def test_temporary_folder_of_a_killed_builder_is_removed(tmp_path: Path) -> None:
    stale = tmp_path / ".toy-train-0.tmp-dead"
    stale.mkdir()
    (stale / "frames.npy").write_bytes(b"half")
    _build(tmp_path, [1])
    assert not stale.exists()


def test_existing_entry_is_read_not_rebuilt(tmp_path: Path) -> None:
    _build(tmp_path, [1, 2])

    def must_not_run() -> Iterator[tuple[np.ndarray, int]]:
        raise AssertionError("rebuilt a cached entry")

    frames, _, _ = _cache.open_or_build(tmp_path, "toy-train-0", {}, 2, (2, 3), must_not_run)
    assert frames[:, 1, 2].tolist() == [1, 2]


def test_entry_name_covers_every_key_field() -> None:
    base = {"params": {"T": 20, "bin_ms": 75.0}, "t_start": "first", "source": "abc"}
    name = _cache.entry_name("dvs_gesture", "train", base)
    assert name.startswith("dvs_gesture-train-") and name == _cache.entry_name(
        "dvs_gesture", "train", dict(base))
    variants = [("dvs_gesture", "test", base), ("nmnist", "train", base),
                ("dvs_gesture", "train", {**base, "params": {"T": 21, "bin_ms": 75.0}}),
                ("dvs_gesture", "train", {**base, "params": {"T": 20, "bin_ms": 70.0}}),
                ("dvs_gesture", "train", {**base, "source": "abd"})]
    assert len({_cache.entry_name(*v) for v in variants} | {name}) == len(variants) + 1


def test_fingerprint_follows_names_sizes_and_modification_times(tmp_path: Path) -> None:
    file = tmp_path / "a.bin"
    file.write_bytes(b"12345")
    os.utime(file, ns=(1_000_000_000, 1_000_000_000))
    first = _cache.fingerprint([file], tmp_path)
    assert _cache.fingerprint([file], tmp_path) == first
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy2(file, copy / "a.bin")  # a copy that keeps the time (cp -p, rsync -a) matches
    assert _cache.fingerprint([copy / "a.bin"], copy) == first
    file.write_bytes(b"54321")  # same size, new content, then the same time again:
    os.utime(file, ns=(1_000_000_000, 1_000_000_001))  # 1 ns later is enough
    assert _cache.fingerprint([file], tmp_path) != first
    os.utime(file, ns=(1_000_000_000, 1_000_000_000))
    assert _cache.fingerprint([file], tmp_path) == first  # content itself is not read
    (tmp_path / "b.bin").write_bytes(b"12345")
    os.utime(tmp_path / "b.bin", ns=(1_000_000_000, 1_000_000_000))
    assert _cache.fingerprint([tmp_path / "b.bin"], tmp_path) != first


def test_memory_mapped_dataset_pickles_as_a_path(tmp_path: Path) -> None:
    frames, labels, entry = _build(tmp_path, [3] * 50)
    info = DatasetInfo("toy", "train", (3,), 2, 2)
    dataset = FrameDataset(frames, labels, info)
    blob = pickle.dumps(dataset)
    assert len(blob) < 2000
    copy = pickle.loads(blob)
    assert isinstance(copy._frames, np.memmap)
    assert copy[7][0].tolist() == dataset[7][0].tolist() and copy[7][1] == dataset[7][1]


def test_collate_returns_a_getitems_block_without_copying(tmp_path: Path) -> None:
    frames, labels, _ = _build(tmp_path, list(range(10)))
    dataset = FrameDataset(frames, labels, DatasetInfo("toy", "train", (3,), 2, 2))
    batch = dataset.__getitems__([4, 1, 7])
    x, y = FrameDataset.collate(batch)
    assert x.data_ptr() == batch[0][0].data_ptr() and y.tolist() == [0, 1, 1]
    want_x, want_y = default_collate(batch)
    assert torch.equal(x, want_x) and torch.equal(y, want_y)
    single = [dataset[4], dataset[1]]  # separate tensors: stacked
    x, y = FrameDataset.collate(single)
    assert torch.equal(x, torch.stack([s[0] for s in single])) and y.tolist() == [0, 1]
    x, _ = FrameDataset.collate(batch[:2])  # part of a block: stacked, not the whole block
    assert x.shape[0] == 2
    loaded = next(iter(DataLoader(dataset, batch_size=4, collate_fn=FrameDataset.collate)))
    assert torch.equal(loaded[0], default_collate([dataset[i] for i in range(4)])[0])


def test_unwritable_cache_folder_is_a_user_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StllrError, match="pass cache_dir="):
        _build(blocker / "cache", [1])


def test_entry_is_readable_by_others_sharing_the_folder(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        _, _, entry = _build(tmp_path, [1])
    finally:
        os.umask(previous)
    assert entry.stat().st_mode & 0o777 == 0o755


def test_frame_dataset_refuses_labels_it_would_have_to_truncate() -> None:
    frames, info = np.zeros((3, 2, 3), np.uint8), DatasetInfo("toy", "train", (3,), 2, 2)
    assert FrameDataset(frames, np.array([0.0, 1.0, 1.0]), info).labels.tolist() == [0, 1, 1]
    for bad, dtype in ((np.array([0, 1.5, 1]), "float64"), (np.array([True, False, True]), "bool")):
        with pytest.raises(ValueError, match=f"labels must be integers, got {dtype}"):
            FrameDataset(frames, bad, info)
