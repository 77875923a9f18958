"""One suite run over every dataset (event datasets from tiny real-format fixtures)."""

from __future__ import annotations

import hashlib
import multiprocessing
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from stllr_engine.datasets import DATASETS, FrameDataset, _binning, load_dataset
from stllr_engine.errors import StllrError

EVENT = ("shd", "dvs_gesture", "cifar10_dvs", "nmnist")
EMBEDDED = ("synthetic_temporal", "digits")
ALL = EVENT + EMBEDDED
FLOW = ("flow_synthetic", "mvsec")  # (frames, target) samples: tests/datasets/test_flow_data.py
FOLDERS = {"shd": "SHD", "dvs_gesture": "DVSGesture", "cifar10_dvs": "CIFAR10DVS",
           "nmnist": "NMNIST"}
SENSORS = {"shd": (700,), "dvs_gesture": (2, 128, 128), "cifar10_dvs": (2, 128, 128),
           "nmnist": (2, 34, 34)}
T_START = {"shd": "zero", "dvs_gesture": "first", "cifar10_dvs": "first", "nmnist": "first"}


@pytest.fixture
def bin_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts calls of the binning function (the cache must avoid them)."""
    calls = {"n": 0}
    real = _binning.bin_events

    def counting(*args: Any, **kwargs: Any) -> np.ndarray:
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(_binning, "bin_events", counting)
    return calls


def _load(name: str, root: Path | None, **params: Any) -> tuple[FrameDataset, FrameDataset]:
    return load_dataset(name, data_dir=root, **params)


def _everything(ds: FrameDataset) -> tuple[np.ndarray, list[int]]:
    # numpy, not torch.stack: torch's thread pool may not survive the fork in
    # the concurrency test (a forked child would hang in it).
    samples = ds.__getitems__(list(range(len(ds))))
    return np.stack([x.numpy() for x, _ in samples]), [y for _, y in samples]


def _digest(ds: FrameDataset) -> str:
    frames, labels = _everything(ds)
    return hashlib.sha256(frames.tobytes() + bytes(str(labels), "ascii")).hexdigest()


@pytest.fixture(params=ALL)
def dataset(request: pytest.FixtureRequest, tmp_path: Path, writers: Any) -> tuple:
    name = request.param
    fixture = writers.write_fixture(name, tmp_path) if name in EVENT else None
    train, test = _load(name, tmp_path if fixture else None)
    return name, train, test, fixture


def test_registry_lists_every_dataset() -> None:
    assert set(DATASETS) == set(ALL) | {"spoken_digits"} | set(FLOW)  # spoken_digits: test_spoken_digits.py
    for name, spec in DATASETS.items():
        assert spec.name == name and spec.description and "T" in spec.defaults
        assert spec.needs_files == (name in EVENT or name == "mvsec")


def test_shapes_dtypes_and_labels(dataset: tuple) -> None:
    name, train, test, _ = dataset
    for split, ds in (("train", train), ("test", test)):
        info = ds.info
        assert (info.name, info.split) == (name, split)
        assert len(ds) > 0
        frames, label = ds[len(ds) - 1]
        assert frames.dtype == torch.float32
        assert tuple(frames.shape) == (info.T, *info.input_shape)
        assert isinstance(label, int)
        labels = ds.labels
        assert labels.min() >= 0 and labels.max() < info.num_classes
        assert (frames >= 0).all()


def test_default_binning_is_the_papers() -> None:
    want = {"shd": (100, 10.0, (700,)), "dvs_gesture": (20, 75.0, (32, 32)),
            "cifar10_dvs": (10, None, (48, 48)), "nmnist": (10, 30.0, (34, 34))}
    for name, (T, bin_ms, size) in want.items():
        defaults = DATASETS[name].defaults
        spatial = (defaults["channels"],) if name == "shd" else defaults["resolution"]
        assert (defaults["T"], defaults["bin_ms"], tuple(spatial)) == (T, bin_ms, size)


def test_getitems_and_dataloader_match_getitem(dataset: tuple) -> None:
    _, train, _, _ = dataset
    picks = [min(2, len(train) - 1), 0, len(train) - 1]
    for (x, y), i in zip(train.__getitems__(picks), picks, strict=True):
        x1, y1 = train[i]
        assert torch.equal(x, x1) and y == y1
    batch_x, batch_y = next(iter(DataLoader(train, batch_size=3)))
    assert torch.equal(batch_x[1], train[1][0]) and int(batch_y[1]) == train[1][1]


def test_same_samples_on_every_load(dataset: tuple) -> None:
    name, train, test, fixture = dataset
    again_train, again_test = _load(name, fixture.root if fixture else None)
    assert _digest(train) == _digest(again_train) and _digest(test) == _digest(again_test)


@pytest.mark.parametrize("name", EVENT)
def test_frames_equal_naive_binning_in_documented_order(name: str, tmp_path: Path,
                                                        writers: Any, reference: Any) -> None:
    fixture = writers.write_fixture(name, tmp_path)
    params = dict(DATASETS[name].defaults)
    out = (params["channels"],) if name == "shd" else (2, *params["resolution"])
    bin_us = None if params["bin_ms"] is None else params["bin_ms"] * 1000
    for ds, split in zip(_load(name, tmp_path), ("train", "test"), strict=True):
        frames, labels = _everything(ds)
        truth = fixture.splits[split]
        assert labels == [s.label for s in truth]
        for got, sample in zip(frames, truth, strict=True):
            want = reference(sample, params["T"], bin_us, T_START[name], SENSORS[name], out)
            np.testing.assert_array_equal(got, want)
            t = sample.t_us - (sample.t_us.min() if T_START[name] == "first" else 0)
            in_window = len(t) if bin_us is None else int((t < params["T"] * bin_us).sum())
            assert got.sum() == in_window


HAND_MADE = {  # the first train sample of each fixture: {(bin, *cell): count}, label
    "shd": ({(1, 350): 1}, 7),
    "dvs_gesture": ({(0, 1, 2, 1): 1, (1, 0, 0, 31): 1}, 0),
    "nmnist": ({(0, 0, 33, 0): 1, (2, 1, 4, 17): 1}, 0),
    "cifar10_dvs": ({**{(k, 1, 47, 47): 1 for k in range(9)}, (9, 1, 47, 47): 2}, 0),
}


@pytest.mark.parametrize("name", EVENT)
def test_hand_made_events_land_in_expected_bin_and_pixel(name: str, tmp_path: Path,
                                                         writers: Any) -> None:
    writers.write_fixture(name, tmp_path)
    train, _ = _load(name, tmp_path)
    frames, label = train[0]
    cells, want_label = HAND_MADE[name]
    assert label == want_label
    expected = torch.zeros_like(frames)
    for cell, count in cells.items():
        expected[cell] = count
    assert torch.equal(frames, expected)


@pytest.mark.parametrize("name", EVENT)
def test_order_does_not_depend_on_file_creation_order(name: str, tmp_path: Path,
                                                      writers: Any) -> None:
    digests = []
    for seed in (0, 1, 2):
        root = tmp_path / f"copy{seed}"
        writers.write_fixture(name, root, order_seed=seed)
        digests.append(tuple(_digest(ds) for ds in _load(name, root)))
    assert digests[0] == digests[1] == digests[2]


@pytest.mark.parametrize("name", EVENT)
def test_second_load_reads_the_cache_without_binning(name: str, tmp_path: Path, writers: Any,
                                                     bin_calls: dict[str, int]) -> None:
    writers.write_fixture(name, tmp_path)
    train, test = _load(name, tmp_path)
    assert bin_calls["n"] == len(train) + len(test)
    again_train, again_test = _load(name, tmp_path)
    assert bin_calls["n"] == len(train) + len(test)
    assert _digest(train) == _digest(again_train) and _digest(test) == _digest(again_test)
    entry = Path(again_train.info.cache_entry)
    assert entry.parent == tmp_path / ".stllr_cache"
    assert isinstance(again_train._frames, np.memmap)
    # a different binning parameter is a different entry, binned anew
    other, _ = _load(name, tmp_path, T=3)
    assert Path(other.info.cache_entry) != entry and bin_calls["n"] > len(train) + len(test)


@pytest.mark.parametrize("name", EVENT)
def test_missing_dataset_names_the_folder(name: str, tmp_path: Path) -> None:
    with pytest.raises(StllrError) as info:
        _load(name, tmp_path)
    message = str(info.value)
    assert str(tmp_path / FOLDERS[name]) in message and "\n" not in message
    assert "never downloads" in message and "http" in message
    assert not (tmp_path / ".stllr_cache").exists()


@pytest.mark.parametrize("name", EVENT)
def test_missing_data_dir_argument_is_a_user_error(name: str) -> None:
    with pytest.raises(StllrError, match="data_dir"):
        load_dataset(name)


@pytest.mark.parametrize("name", EVENT)
def test_corrupt_file_is_named_and_leaves_no_cache_entry(name: str, tmp_path: Path,
                                                         writers: Any) -> None:
    fixture = writers.write_fixture(name, tmp_path)
    target = fixture.corrupt_target
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2 + 1])
    with pytest.raises(StllrError) as info:
        _load(name, tmp_path)
    message = str(info.value)
    assert str(target) in message and "\n" not in message
    cache = tmp_path / ".stllr_cache"
    leftovers = [p.name for p in cache.iterdir() if p.suffix != ".lock"] if cache.exists() else []
    assert leftovers == []


def _fill(name: str, root: Path, barrier: Any, queue: Any, calls: dict[str, int]) -> None:
    try:
        barrier.wait(timeout=60)
        train, test = load_dataset(name, data_dir=root)
        queue.put((_digest(train), _digest(test), calls["n"]))
    except BaseException as exc:  # report, do not hang the parent
        queue.put(("error", repr(exc), -1))


@pytest.mark.parametrize("name", EVENT)
def test_concurrent_fill_bins_once_and_agrees(name: str, tmp_path: Path, writers: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    writers.write_fixture(name, tmp_path)
    calls = {"n": 0}
    real = _binning.bin_events

    def slow_counting(*args: Any, **kwargs: Any) -> np.ndarray:
        calls["n"] += 1
        time.sleep(0.003)  # widen the race window
        return real(*args, **kwargs)

    monkeypatch.setattr(_binning, "bin_events", slow_counting)
    context = multiprocessing.get_context("fork")
    barrier, queue = context.Barrier(3), context.Queue()
    workers = [context.Process(target=_fill, args=(name, tmp_path, barrier, queue, calls))
               for _ in range(3)]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    assert all(r[0] != "error" for r in results), results
    assert len({r[:2] for r in results}) == 1
    monkeypatch.setattr(_binning, "bin_events", real)
    train, test = _load(name, tmp_path)
    assert sum(r[2] for r in results) == len(train) + len(test)
    assert results[0][:2] == (_digest(train), _digest(test))


BAD_PARAMS = [
    ("shd", {"T": 0}), ("shd", {"bin_ms": -1}), ("shd", {"channels": 701}),
    ("shd", {"resolution": 32}), ("dvs_gesture", {"resolution": 129}),
    ("dvs_gesture", {"resolution": (32, 0)}), ("nmnist", {"T": 2.5}),
    ("cifar10_dvs", {"bin_ms": float("nan")}), ("synthetic_temporal", {"noise": 1.0}),
    ("synthetic_temporal", {"num_classes": 1}), ("synthetic_temporal", {"seed": "x"}),
    ("digits", {"test_fraction": 0.0}), ("digits", {"T": True}), ("digits", {"colour": 1}),
]


@pytest.mark.parametrize(("name", "params"), BAD_PARAMS)
def test_bad_parameter_is_a_one_line_user_error(name: str, params: dict[str, Any],
                                                tmp_path: Path) -> None:
    with pytest.raises(StllrError) as info:
        load_dataset(name, data_dir=tmp_path, **params)
    message = str(info.value)
    assert next(iter(params)) in message and "\n" not in message


def test_numpy_integers_are_accepted() -> None:
    train, _ = load_dataset("synthetic_temporal", T=np.int64(12), seed=np.int32(3))
    assert train.info.T == 12 and train[0][0].shape == (12, 32)


def test_unknown_dataset_lists_the_choices() -> None:
    with pytest.raises(StllrError, match="shd, dvs_gesture"):
        load_dataset("mnist")
