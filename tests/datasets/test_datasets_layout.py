"""Layout checks: helpful one-line errors, and tonic can never download."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stllr_engine.datasets import load_dataset
from stllr_engine.datasets._events import no_download
from stllr_engine.errors import StllrError


def test_unextracted_archive_is_pointed_out(tmp_path: Path) -> None:
    (tmp_path / "SHD").mkdir()
    (tmp_path / "SHD" / "shd_train.h5.zip").write_bytes(b"PK")
    with pytest.raises(StllrError, match="shd_train.h5.zip is there but not unzipped"):
        load_dataset("shd", data_dir=tmp_path)


def test_only_train_split_present_is_missing(tmp_path: Path, writers: Any) -> None:
    writers.write_fixture("nmnist", tmp_path)
    shutil.rmtree(tmp_path / "NMNIST" / "Test")
    with pytest.raises(StllrError, match="folder Test/ not found"):
        load_dataset("nmnist", data_dir=tmp_path)


def test_misplaced_files_are_named(tmp_path: Path, writers: Any) -> None:
    writers.write_fixture("cifar10_dvs", tmp_path)
    stray = tmp_path / "CIFAR10DVS" / "misc" / "x.aedat4"
    stray.parent.mkdir()
    stray.write_bytes(b"")
    with pytest.raises(StllrError, match=re.escape(str(stray))):
        load_dataset("cifar10_dvs", data_dir=tmp_path)


def test_gesture_file_must_be_named_by_its_label(tmp_path: Path, writers: Any) -> None:
    writers.write_fixture("dvs_gesture", tmp_path)
    bad = tmp_path / "DVSGesture" / "ibmGestureTest" / "user24_lab" / "11.npy"
    np.save(bad, np.zeros((1, 4), np.int64))
    with pytest.raises(StllrError, match="11.npy"):
        load_dataset("dvs_gesture", data_dir=tmp_path)


@pytest.mark.parametrize("cls", ["SHD", "DVSGesture", "NMNIST", "CIFAR10DVS"])
def test_tonic_classes_cannot_download(cls: str, tmp_path: Path) -> None:
    import tonic.datasets

    guarded = no_download(getattr(tonic.datasets, cls))
    assert guarded.__name__ == cls  # tonic reads <save_to>/<class name>
    with pytest.raises(StllrError, match="never downloads"):
        guarded.download(_stub(guarded, tmp_path))


def _stub(cls: type, root: Path) -> Any:
    stub = object.__new__(cls)
    stub.location_on_system = str(root / cls.__name__)
    return stub


def test_parameters_change_the_frames(tmp_path: Path, writers: Any) -> None:
    writers.write_fixture("dvs_gesture", tmp_path)
    train, _ = load_dataset("dvs_gesture", data_dir=tmp_path, T=4, bin_ms=500,
                            resolution=(16, 8))
    frames, _ = train[0]
    assert tuple(frames.shape) == (4, 2, 16, 8) and train.info.bin_ms == 500.0
    assert train.info.params["resolution"] == (16, 8)
