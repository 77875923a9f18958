"""Faults a sweep meets: a full disk, a killed build, malformed files, sizes that cannot fit.

Each ends in one StllrError line that names the real cause and leaves no half-built
cache entry.  Event files are the real on-disk formats (conftest writers); the
disk-full cases run on a real 2 MiB tmpfs where this machine lets us mount one.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from stllr_engine.datasets import DATASETS, _binning, _cache, load_dataset
from stllr_engine.errors import StllrError

EVENT = ("shd", "dvs_gesture", "cifar10_dvs", "nmnist")
FOLDERS = {"shd": "SHD", "dvs_gesture": "DVSGesture", "cifar10_dvs": "CIFAR10DVS",
           "nmnist": "NMNIST"}
VALUES = {"shd": 700, "dvs_gesture": 2 * 32 * 32, "cifar10_dvs": 2 * 48 * 48,
          "nmnist": 2 * 34 * 34}  # values per time step at the default size


def _one_line(exc: pytest.ExceptionInfo[StllrError]) -> str:
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def _entries(cache: Path) -> list[str]:
    """What a cache folder holds besides lock files."""
    return sorted(p.name for p in cache.iterdir() if p.suffix != ".lock") if cache.exists() else []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs (needs root or CAP_SYS_ADMIN; skipped with the reason otherwise)."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: the disk-full cases need a small real filesystem")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        pytest.skip(f"cannot mount a 2 MiB tmpfs here ({done.stderr.strip() or done.returncode}):"
                    " the disk-full cases need a small real filesystem")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _free(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def _sizes(fixture: Any) -> dict[str, int]:
    return {split: len(samples) for split, samples in fixture.splits.items()}


# ------------------------------------------------------------ 1. a full disk

@pytest.mark.parametrize("name", EVENT)
def test_cache_larger_than_the_free_space_is_refused_before_writing(
        name: str, tmp_path: Path, writers: Any, small_disk: Path) -> None:
    fixture = writers.write_fixture(name, tmp_path / "data")
    free = _free(small_disk)
    assert free == 2 * 2**20
    sizes = _sizes(fixture)
    needed = sum(n * 1000 * VALUES[name] + 8 * n + 4096 for n in sizes.values())
    with pytest.raises(StllrError) as info:
        load_dataset(name, data_dir=fixture.root, cache_dir=small_disk, T=1000)
    message = _one_line(info)
    assert message.startswith(f"{small_disk}: not enough free space for the frame cache of "
                              f"{name} at T=1000 ({sizes['train']} train + {sizes['test']} test "
                              f"samples x 1000 steps x {VALUES[name]} values)")
    assert f"it needs {needed} bytes" in message
    assert f"but {free} bytes (2.0 MiB) are free" in message
    assert list(small_disk.iterdir()) == [] and _free(small_disk) == free


def _fill_disk_then_load(name: str, root: Path, cache: Path, queue: Any) -> None:
    """In a child: another writer fills the disk while the first sample is binned."""
    real = _binning.bin_events

    def filling(*args: Any, **kwargs: Any) -> np.ndarray:
        if not (cache / "filler").exists():
            with open(cache / "filler", "wb") as filler:
                try:
                    while True:
                        filler.write(bytes(1 << 16))
                        filler.flush()
                except OSError:
                    pass
        return real(*args, **kwargs)

    _binning.bin_events = filling  # type: ignore[assignment]
    try:
        load_dataset(name, data_dir=root, cache_dir=cache)
        queue.put(("loaded", ""))
    except StllrError as exc:
        queue.put(("StllrError", str(exc)))
    except BaseException as exc:
        queue.put((type(exc).__name__, repr(exc)))


@pytest.mark.parametrize("name", EVENT)
def test_disk_filling_up_during_the_build_is_one_line_and_leaves_nothing(
        name: str, tmp_path: Path, writers: Any, small_disk: Path) -> None:
    fixture = writers.write_fixture(name, tmp_path / "data")
    sizes, T = _sizes(fixture), DATASETS[name].defaults["T"]
    needed = sizes["train"] * T * VALUES[name] + 8 * sizes["train"] + 4096
    assert needed < _free(small_disk)  # fits when the build starts
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_fill_disk_then_load,
                            args=(name, fixture.root, small_disk, queue))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        child.join()
    assert child.exitcode == 0  # not killed by SIGBUS (-7) from a memory-mapped write
    kind, message = queue.get(timeout=5)
    assert kind == "StllrError", message
    assert "\n" not in message
    assert re.fullmatch(
        rf"{re.escape(str(small_disk))}: the disk filled up while writing the frame cache "
        rf"entry {name}-train-[0-9a-f]{{16}} \(it needs about {needed} bytes, \d+ bytes are "
        r"free now\); the partial entry was removed: free space there or pass "
        r"cache_dir=<a folder with more room>", message), message
    assert _entries(small_disk) == ["filler"]  # no hidden .tmp- folder
    (small_disk / "filler").unlink()
    train, test = load_dataset(name, data_dir=fixture.root, cache_dir=small_disk)
    assert train.labels.tolist() == [s.label for s in fixture.splits["train"]]
    assert len(test) == sizes["test"] and len(_entries(small_disk)) == 2


# ------------------------------------------------------- 2. a killed build

@pytest.mark.parametrize("name", EVENT)
def test_killed_build_leaves_a_folder_that_any_later_build_removes(
        name: str, tmp_path: Path, writers: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fixture = writers.write_fixture(name, tmp_path)
    cache = tmp_path / ".stllr_cache"
    parent, real = os.getpid(), _binning.bin_events
    context = multiprocessing.get_context("fork")
    started = context.Event()

    def stalling(*args: Any, **kwargs: Any) -> np.ndarray:
        if os.getpid() != parent:  # the child stalls mid-build, as a killed trial would
            started.set()
            time.sleep(600)
        return real(*args, **kwargs)

    monkeypatch.setattr(_binning, "bin_events", stalling)
    child = context.Process(target=load_dataset, args=(name, fixture.root), kwargs={"T": 7})
    child.start()
    try:
        assert started.wait(timeout=60)
        (tmp,) = cache.glob(".*.tmp-*")
        assert tmp.name.startswith(f".{name}-train-") and (tmp / "frames.npy").is_file()
        load_dataset(name, data_dir=fixture.root, T=5)  # other settings, builder alive:
        assert tmp.is_dir()                              # its folder is left alone
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=30)
        assert child.exitcode == -signal.SIGKILL and tmp.is_dir()
        train, _ = load_dataset(name, data_dir=fixture.root, T=3)  # other settings again
        assert not tmp.exists() and not list(cache.glob(".*"))
        assert len(train) == len(fixture.splits["train"])
    finally:
        if child.is_alive():
            child.kill()
            child.join()


# -------------------------------------------------------- 3. malformed files

def _rewrite_shd(path: Path, **fields: np.ndarray) -> None:
    with h5py.File(path, "r+") as f:
        for key, value in fields.items():
            if key == "spikes/times":
                for i, t in enumerate(value):
                    f[key][i] = t
            else:
                del f[key]
                f[key] = value


def _shd_labels(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return np.asarray(f["labels"][()])


def _write_in_wrong_time_unit(name: str, fixture: Any, writers: Any) -> tuple[Path, str]:
    """The first train sample's times 1000x too large; returns (file, expected field)."""
    if name == "shd":
        path = fixture.root / "SHD" / "shd_train.h5"
        with h5py.File(path, "r") as f:  # milliseconds instead of seconds
            times = [f["spikes/times"][i].astype(np.float32) * 1000
                     for i in range(len(f["spikes/times"]))]
        _rewrite_shd(path, **{"spikes/times": np.array(times, dtype=object)})
        return path, "spikes/times[0] spans 15.625 s, far beyond a shd recording (about 1 s, " \
                     "at most 10 s accepted); expected seconds"
    path = fixture.corrupt_target
    if name == "dvs_gesture":  # microseconds instead of milliseconds
        events = np.load(path)
        events[:, 3] *= 1000
        np.save(path, events)
        return path, "column t (the 4th of x, y, p, t) spans 80 s, far beyond a dvs_gesture " \
                     "recording (about 6 s, at most 60 s accepted); expected milliseconds"
    sample = fixture.splits["train"][0]  # cifar10_dvs: nanoseconds instead of microseconds
    p, y, x = sample.coords
    writers.write_aedat4(path, sample.t_us * 1000, x, y, p)
    return path, "event timestamps t spans 100 s, far beyond a cifar10_dvs recording (about " \
                 "1.3 s, at most 60 s accepted); expected microseconds (as AEDAT4 stores them)"


@pytest.mark.parametrize("name", EVENT)
def test_times_in_the_wrong_unit_are_refused_not_binned_to_zeros(
        name: str, tmp_path: Path, writers: Any) -> None:
    if name == "nmnist":
        pytest.skip("N-MNIST stores 23-bit microsecond timestamps: no other unit fits")
    fixture = writers.write_fixture(name, tmp_path)
    path, expected = _write_in_wrong_time_unit(name, fixture, writers)
    with pytest.raises(StllrError) as info:
        load_dataset(name, data_dir=tmp_path)
    assert _one_line(info) == f"{path}: {expected}: convert the times"
    assert _entries(tmp_path / ".stllr_cache") == []


def test_negative_shd_times_are_refused(tmp_path: Path, writers: Any) -> None:
    fixture = writers.write_fixture("shd", tmp_path)
    path = fixture.root / "SHD" / "shd_train.h5"
    _rewrite_shd(path, **{"spikes/times": np.array([np.array([-0.5, 0.25], np.float16)],
                                                   dtype=object)})
    with pytest.raises(StllrError) as info:
        load_dataset("shd", data_dir=tmp_path)
    assert _one_line(info) == (f"{path}: spikes/times[0] has negative times (down to -0.5 s); "
                               "expected seconds from the recording onset, >= 0")


SHD_LABELS = {  # labels written into shd_train.h5 (6 samples) -> expected message tail
    "fewer than samples": (np.arange(5, dtype=np.uint8),
                           "labels has 5 entries for 6 samples in spikes/times (6 in "
                           "spikes/units); expected one integer class label 0..19 per sample"),
    "boolean": (np.array([True, False, True, True, False, False]),
                "labels are stored as bool (e.g. labels[0]=True); expected one integer class "
                "label 0..19 per sample"),
    "fractional": (np.array([0, 1, 2, 2.5, 4, 5]),
                   "labels[3]=2.5 is not an integer; expected one integer class label 0..19 "
                   "per sample"),
    "out of range": (np.array([0, 1, 2, 3, 20, 25], np.int16),
                     "labels range over 0..25 but shd classes are 0..19 (labels[4]=20 is the "
                     "first outside)"),
    "negative": (np.array([0, -1, 2, 3, 4, 5], np.int16),
                 "labels range over -1..5 but shd classes are 0..19 (labels[1]=-1 is the first "
                 "outside)"),
    "1-based": (np.array([1, 20, 3, 4, 5, 6], np.uint8),
                "labels range over 1..20 but shd classes are 0..19 (labels[1]=20 is the first "
                "outside); they look 1-based: subtract 1"),
}


@pytest.mark.parametrize("case", SHD_LABELS)
def test_shd_labels_that_do_not_fit_are_named_with_the_valid_range(
        case: str, tmp_path: Path, writers: Any) -> None:
    # DVS Gesture, CIFAR10-DVS and N-MNIST take labels from file and folder names
    # (checked by the layout tests); only SHD stores them as data.
    fixture = writers.write_fixture("shd", tmp_path)
    path = fixture.root / "SHD" / "shd_train.h5"
    labels, expected = SHD_LABELS[case]
    _rewrite_shd(path, labels=labels)
    with pytest.raises(StllrError) as info:
        load_dataset("shd", data_dir=tmp_path)
    message = _one_line(info)
    assert message == f"{path}: {expected}"
    assert "corrupt" not in message and not (tmp_path / ".stllr_cache").exists()


def test_whole_number_float_labels_are_read_exactly(tmp_path: Path, writers: Any) -> None:
    fixture = writers.write_fixture("shd", tmp_path)
    path = fixture.root / "SHD" / "shd_train.h5"
    _rewrite_shd(path, labels=np.array([7, 1, 2, 19, 4, 0], np.float32))
    train, _ = load_dataset("shd", data_dir=tmp_path)
    assert train.labels.tolist() == [7, 1, 2, 19, 4, 0]


def test_one_based_gesture_file_names_are_pointed_out(tmp_path: Path, writers: Any) -> None:
    writers.write_fixture("dvs_gesture", tmp_path)
    split = tmp_path / "DVSGesture" / "ibmGestureTrain"
    for path in sorted(split.glob("*/*.npy"), key=lambda p: -int(p.stem)):
        path.rename(path.with_name(f"{int(path.stem) + 1}.npy"))
    with pytest.raises(StllrError) as info:
        load_dataset("dvs_gesture", data_dir=tmp_path)
    message = _one_line(info)
    assert re.match(rf"{re.escape(str(split))}/user\d\d_\w+/11\.npy: does not fit the "
                    r"dvs_gesture layout \(file names give labels 1\.\.11, 1-based: rename each "
                    r"N\.npy to N-1\.npy\)", message), message


# ------------------------------------------- 4. sizes that cannot fit

@pytest.mark.parametrize("name", EVENT)
def test_frames_too_large_for_memory_blame_memory_not_the_file(
        name: str, tmp_path: Path, writers: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fixture = writers.write_fixture(name, tmp_path)
    monkeypatch.setattr(_cache, "available_memory", lambda: 4 * 2**30)
    with pytest.raises(StllrError) as info:
        load_dataset(name, data_dir=tmp_path, T=10**7)
    shape = "700" if name == "shd" else "2 x " + " x ".join(
        str(v) for v in DATASETS[name].defaults["resolution"])
    per_sample = 10**7 * VALUES[name] * 9
    assert _one_line(info) == (
        f"{name}: T=10000000 needs {per_sample} bytes ({_cache.human(per_sample)}) of memory "
        f"to bin one sample (10000000 steps x {shape} values x 9 bytes) but 4294967296 bytes "
        "(4.0 GiB) are available; choose a smaller T or coarser bins (bin_ms)")
    assert not (tmp_path / ".stllr_cache").exists()
    # Where the available memory is unknown, running out while binning says so too.
    monkeypatch.setattr(_cache, "available_memory", lambda: None)

    def out_of_memory(*args: Any, **kwargs: Any) -> np.ndarray:
        raise MemoryError

    monkeypatch.setattr(_binning, "bin_events", out_of_memory)
    with pytest.raises(StllrError) as info:
        load_dataset(name, data_dir=tmp_path, T=10**4)
    message = _one_line(info)
    per_sample = 10**4 * VALUES[name] * 9
    pattern = (rf"{re.escape(str(tmp_path))}/.+: out of memory binning sample 0 at T=10000 "
               rf"\({per_sample} bytes needed\); choose a smaller T or coarser bins \(bin_ms\)")
    assert re.fullmatch(pattern, message), message
    assert "corrupt" not in message and _entries(tmp_path / ".stllr_cache") == []


def test_memory_check_uses_this_machines_memory(tmp_path: Path, writers: Any) -> None:
    writers.write_fixture("shd", tmp_path)
    with pytest.raises(StllrError, match=r"^shd: T=1000000000 needs 6300000000000 bytes "
                                         r"\(5\.7 TiB\) of memory to bin one sample .* but \d+ "
                                         r"bytes \(.*\) are available"):
        load_dataset("shd", data_dir=tmp_path, T=10**9)


@pytest.mark.parametrize("name", EVENT)
def test_cache_above_the_limit_is_refused_unless_asked_for(
        name: str, tmp_path: Path, writers: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fixture = writers.write_fixture(name, tmp_path)
    sizes, T, cache = _sizes(fixture), 200, tmp_path / ".stllr_cache"
    needed = sum(n * T * VALUES[name] + 8 * n + 4096 for n in sizes.values())
    expected = (f"{cache}: the frame cache of {name} at T=200 ({sizes['train']} train + "
                f"{sizes['test']} test samples x 200 steps x {VALUES[name]} values) needs "
                f"{needed} bytes ({_cache.human(needed)}), above the limit of 100000 bytes "
                "(97.7 KiB); to allow it pass max_cache_bytes=<bytes> to load_dataset or set "
                "STLLR_MAX_CACHE_BYTES=<bytes> (e.g. 64GiB), or choose a smaller T or coarser "
                "bins")
    monkeypatch.delenv("STLLR_MAX_CACHE_BYTES", raising=False)
    with pytest.raises(StllrError) as info:
        load_dataset(name, data_dir=tmp_path, T=T, max_cache_bytes=100_000)
    assert _one_line(info) == expected
    monkeypatch.setenv("STLLR_MAX_CACHE_BYTES", "100000")
    with pytest.raises(StllrError) as info:
        load_dataset(name, data_dir=tmp_path, T=T)
    assert _one_line(info) == expected and _entries(cache) == []
    train, _ = load_dataset(name, data_dir=tmp_path, T=T, max_cache_bytes="1GiB")  # asked for
    assert train.info.T == T and _entries(cache)
    monkeypatch.setenv("STLLR_MAX_CACHE_BYTES", "1GiB")
    train, _ = load_dataset(name, data_dir=tmp_path, T=T + 1)
    assert train.info.T == T + 1
    monkeypatch.setenv("STLLR_MAX_CACHE_BYTES", "100000")  # reading a built entry writes nothing
    assert load_dataset(name, data_dir=tmp_path, T=T + 1)[0].info.cache_entry == \
        train.info.cache_entry


def test_default_limit_is_8_gib(tmp_path: Path, writers: Any,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    writers.write_fixture("shd", tmp_path)
    monkeypatch.delenv("STLLR_MAX_CACHE_BYTES", raising=False)
    monkeypatch.setattr(_cache, "available_memory", lambda: 2**50)  # only the limit matters
    assert _cache.max_cache_bytes() == 8 * 2**30
    with pytest.raises(StllrError, match=r"needs 9450008264 bytes \(8\.8 GiB\), above the "
                                         r"limit of 8589934592 bytes \(8\.0 GiB\)"):
        load_dataset("shd", data_dir=tmp_path, T=1_500_000)


@pytest.mark.parametrize(("env", "param", "message"), [
    ("lots", None, "$STLLR_MAX_CACHE_BYTES='lots' must be a number of bytes >= 0, e.g. "
                   "8589934592 or '8GiB'"),
    (None, -1, "max_cache_bytes=-1 must be a number of bytes >= 0, e.g. 8589934592 or '8GiB'"),
    (None, True, "max_cache_bytes=True must be a number of bytes >= 0"),
])
def test_bad_cache_limit_is_one_line(env: str | None, param: Any, message: str,
                                     tmp_path: Path, writers: Any,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    writers.write_fixture("nmnist", tmp_path)
    if env is None:
        monkeypatch.delenv("STLLR_MAX_CACHE_BYTES", raising=False)
    else:
        monkeypatch.setenv("STLLR_MAX_CACHE_BYTES", env)
    with pytest.raises(StllrError) as info:
        load_dataset("nmnist", data_dir=tmp_path, max_cache_bytes=param)
    assert _one_line(info).startswith(message)


def test_limit_strings_use_binary_units() -> None:
    assert [_cache.max_cache_bytes(v) for v in ("64GiB", "500M", "2k", "1.5G", " 7 ")] == [
        64 * 2**30, 500 * 2**20, 2048, 3 * 2**29, 7]


# ------------------------------------------------------- 5. data_dir mistakes

@pytest.mark.parametrize("name", EVENT)
def test_data_dir_that_is_a_file_or_missing_says_so(name: str, tmp_path: Path) -> None:
    file = tmp_path / "data.h5"
    file.write_bytes(b"")
    with pytest.raises(StllrError) as info:
        load_dataset(name, data_dir=file)
    assert _one_line(info).startswith(f"{file}: data_dir is a file, not a folder; pass "
                                      f"data_dir=<the folder that holds {FOLDERS[name]}/>")
    with pytest.raises(StllrError) as info:
        load_dataset(name, data_dir=tmp_path / "nowhere")
    assert _one_line(info).startswith(f"{tmp_path / 'nowhere'}: data_dir does not exist; pass "
                                      f"data_dir=<the folder that holds {FOLDERS[name]}/>")


# ------------------------------------ a file edited in place at the same size

def _edit_in_place(name: str, fixture: Any, writers: Any) -> Path:
    """Rewrite the first train sample (label for SHD, events otherwise), same byte size."""
    if name == "shd":
        path = fixture.root / "SHD" / "shd_train.h5"
        with h5py.File(path, "r+") as f:
            f["labels"][0] = 3  # was 7
        return path
    path, sample = fixture.corrupt_target, fixture.splits["train"][0]
    moved = tuple(np.asarray(c) for c in sample.coords)
    if name == "dvs_gesture":
        events = np.load(path)
        events[:, 0] = 127 - events[:, 0]
        np.save(path, events)
    elif name == "nmnist":
        p, y, x = moved
        path.write_bytes(writers.encode_nmnist(33 - x, y, p, sample.t_us))
    else:
        p, y, x = moved
        writers.write_aedat4(path, sample.t_us, 127 - x, y, p)
    return path


@pytest.mark.parametrize("name", EVENT)
def test_file_edited_in_place_at_the_same_size_is_binned_anew(
        name: str, tmp_path: Path, writers: Any) -> None:
    fixture = writers.write_fixture(name, tmp_path)
    before, _ = load_dataset(name, data_dir=tmp_path)
    frames, label = before[0]
    path = fixture.root / "SHD" / "shd_train.h5" if name == "shd" else fixture.corrupt_target
    stat = path.stat()
    _edit_in_place(name, fixture, writers)
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns != stat.st_mtime_ns
    after, _ = load_dataset(name, data_dir=tmp_path)
    assert after.info.cache_entry != before.info.cache_entry
    if name == "shd":
        assert (label, after[0][1]) == (7, 3) and after.labels.tolist()[1:] == \
            before.labels.tolist()[1:]
    else:
        assert after[0][1] == label and not np.array_equal(after[0][0].numpy(), frames.numpy())
        assert after[0][0].sum() == frames.sum()  # the same events, mirrored


def test_bad_cache_limit_is_refused_for_embedded_datasets_too() -> None:
    with pytest.raises(StllrError, match=r"^max_cache_bytes='big' must be a number of bytes"):
        load_dataset("digits", max_cache_bytes="big")
    assert len(load_dataset("digits", T=4, max_cache_bytes="1GiB")[0]) > 0
