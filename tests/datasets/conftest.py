"""Tiny dataset fixtures written in each dataset's real on-disk format.

``write_fixture(name, root, order_seed)`` writes a few samples of an event
dataset under ``root`` exactly as the real archives extract (SHD HDF5 with
variable-length arrays, DVS Gesture ``.npy`` tree, N-MNIST 40-bit ``.bin``
events, CIFAR10-DVS ``.aedat4`` FlatBuffers), creating the files in an order
shuffled by ``order_seed`` while the content stays the same.  It returns the
events it wrote, per split, in the order the loader must deliver them, so tests
can compare the loader against a naive binning of the same events.

Every test here also fails loudly if anything tries to reach the network.
"""

from __future__ import annotations

import math
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

EVENT_DATASETS = ("shd", "dvs_gesture", "cifar10_dvs", "nmnist")
EMBEDDED_DATASETS = ("synthetic_temporal", "digits")
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck")


@dataclass
class Sample:
    """Events in sensor coordinates: times (us) and one array per frame axis."""

    t_us: np.ndarray
    coords: tuple[np.ndarray, ...]
    label: int


@dataclass
class Fixture:
    """What a writer produced."""

    root: Path
    splits: dict[str, list[Sample]]
    corrupt_target: Path


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any download attempt (tonic or otherwise) fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    import tonic.dataset
    import tonic.download_utils

    monkeypatch.setattr(tonic.download_utils, "download_and_extract_archive", refuse)
    monkeypatch.setattr(tonic.download_utils, "download_url", refuse)
    monkeypatch.setattr(tonic.dataset, "download_and_extract_archive", refuse)


# ---------------------------------------------------------------- SHD (.h5)

def _shd_sample(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = int(rng.integers(20, 60))
    times = np.sort(rng.uniform(0.0, 1.2, n)).astype(np.float16)  # some beyond the 1 s window
    units = rng.integers(0, 700, n).astype(np.uint16)
    return times, units


def write_shd(root: Path, order_seed: int) -> Fixture:
    rng = np.random.default_rng(1)
    folder = root / "SHD"
    folder.mkdir(parents=True)
    splits: dict[str, list[Sample]] = {}
    sizes = {"train": 6, "test": 3}
    order = list(sizes)
    np.random.default_rng(order_seed).shuffle(order)
    content = {}
    for split in sizes:
        raw = [_shd_sample(rng) for _ in range(sizes[split])]
        labels = rng.integers(0, 20, sizes[split]).astype(np.uint8)
        if split == "train":  # hand-made: one spike at 15.625 ms on channel 350, label 7
            raw[0] = (np.array([0.015625], np.float16), np.array([350], np.uint16))
            labels[0] = 7
        content[split] = (raw, labels)
    for split in order:
        raw, labels = content[split]
        with h5py.File(folder / f"shd_{split}.h5", "w") as f:
            times = f.create_dataset("spikes/times", (len(raw),),
                                     dtype=h5py.vlen_dtype(np.float16))
            units = f.create_dataset("spikes/units", (len(raw),),
                                     dtype=h5py.vlen_dtype(np.uint16))
            for i, (t, u) in enumerate(raw):
                times[i], units[i] = t, u
            f["labels"] = labels
            f["extra/speaker"] = rng.integers(0, 12, len(raw)).astype(np.uint8)
            f["extra/keys"] = np.array([f"digit-{i}".encode() for i in range(20)])
            f["extra/meta_info/gender"] = np.array([b"female", b"male"])
            f["extra/meta_info/age"] = np.array([25, 30], np.uint8)
            f["extra/meta_info/height"] = np.array([170, 180], np.uint8)
        splits[split] = [
            Sample(np.floor(t.astype(np.float64) * 1e6).astype(np.int64), (u.astype(np.int64),),
                   int(lab)) for (t, u), lab in zip(raw, labels, strict=True)]
    return Fixture(root, splits, folder / "shd_train.h5")


# ------------------------------------------------------- DVS Gesture (.npy)

def _camera_events(rng: np.random.Generator, n: int, size: int, t0: int, span: int,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    t = np.sort(rng.integers(t0, t0 + span, n))
    x, y, p = rng.integers(0, size, n), rng.integers(0, size, n), rng.integers(0, 2, n)
    return t, x, y, p


def write_dvs_gesture(root: Path, order_seed: int) -> Fixture:
    rng = np.random.default_rng(2)
    folder = root / "DVSGesture"
    layout = {"train": {(1, "fluorescent"): [0, 5, 10], (2, "led"): [3, 10],
                        (10, "natural"): [1]},
              "test": {(24, "lab"): [2, 4]}}
    jobs = []
    for split, users in layout.items():
        split_dir = folder / ("ibmGestureTrain" if split == "train" else "ibmGestureTest")
        for (user, lighting), labels in users.items():
            for label in labels:
                t0_ms = int(rng.integers(1000, 5000))
                t, x, y, p = _camera_events(rng, int(rng.integers(30, 80)), 128, t0_ms, 2000)
                jobs.append((split, user, lighting, label,
                             split_dir / f"user{user:02d}_{lighting}" / f"{label}.npy",
                             np.stack([x, y, p, t], axis=1).astype(np.int64)))
    # hand-made (first train sample): first event at 3000 ms (p1, y9, x5); one at
    # 3080 ms (bin 1) at x127 y0 p0 -> pixel (0, 31) at 32 x 32
    jobs[0] = (*jobs[0][:5], np.array([[5, 9, 1, 3000], [127, 0, 0, 3080]], np.int64))
    for i in np.random.default_rng(order_seed).permutation(len(jobs)):
        path, arr = jobs[i][4], jobs[i][5]
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, arr)
    splits: dict[str, list[Sample]] = {"train": [], "test": []}
    for split, user, lighting, label, path, arr in sorted(jobs, key=lambda j: j[:4]):
        splits[split].append(Sample(arr[:, 3] * 1000, (arr[:, 2], arr[:, 1], arr[:, 0]), label))
    return Fixture(root, splits, jobs[0][4])


# ------------------------------------------------------------ N-MNIST (.bin)

def encode_nmnist(x: np.ndarray, y: np.ndarray, p: np.ndarray, t: np.ndarray) -> bytes:
    """The 40-bit N-MNIST event encoding (x, y, p<<7 | t[22:16], t[15:8], t[7:0])."""
    t = np.asarray(t, np.int64)
    raw = np.stack([x, y, (np.asarray(p) << 7) | ((t >> 16) & 0x7F), (t >> 8) & 0xFF, t & 0xFF],
                   axis=1).astype(np.uint8)
    return raw.tobytes()


def write_nmnist(root: Path, order_seed: int) -> Fixture:
    rng = np.random.default_rng(3)
    folder = root / "NMNIST"
    layout = {"Train": {d: ["00002.bin"] for d in range(10)}, "Test": {4: ["00007.bin"],
                                                                       9: ["00001.bin"]}}
    layout["Train"][3] = ["00011.bin", "00003.bin"]
    jobs = []
    for split_folder, digits in layout.items():
        for digit, names in digits.items():
            for name in names:
                t, x, y, p = _camera_events(rng, int(rng.integers(30, 80)), 34,
                                            int(rng.integers(0, 5000)), 320_000)
                jobs.append(("train" if split_folder == "Train" else "test", digit, name,
                             folder / split_folder / str(digit) / name, (t, x, y, p)))
    # hand-made (Train/0/00002.bin): first event at 1000 us (p0, y33, x0); one at
    # 1000 + 65 ms (bin 2 of 30 ms) at x17 y4 p1
    jobs[0] = (*jobs[0][:4], (np.array([1000, 66_000]), np.array([0, 17]), np.array([33, 4]),
                              np.array([0, 1])))
    for i in np.random.default_rng(order_seed).permutation(len(jobs)):
        path, (t, x, y, p) = jobs[i][3], jobs[i][4]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_nmnist(x, y, p, t))
    splits: dict[str, list[Sample]] = {"train": [], "test": []}
    for split, digit, name, path, (t, x, y, p) in sorted(jobs, key=lambda j: j[:3]):
        splits[split].append(Sample(t, (p, y, x), digit))
    return Fixture(root, splits, jobs[0][3])


# ----------------------------------------------------- CIFAR10-DVS (.aedat4)

_AEDAT_DESCRIPTION = (
    '<dv version="2.0"><node name="outInfo" path="/mainloop/Recorder/outInfo/">'
    '<node name="0" path="/mainloop/Recorder/outInfo/0/">'
    '<attr key="compression" type="string">NONE</attr>'
    '<attr key="typeIdentifier" type="string">EVTS</attr>'
    '<node name="info" path="/mainloop/Recorder/outInfo/0/info/">'
    '<attr key="sizeX" type="int">128</attr><attr key="sizeY" type="int">128</attr>'
    '<attr key="source" type="string">DVS128</attr></node></node></node></dv>')


def _aedat_ioheader(description: str) -> bytes:
    """FlatBuffer table IOHeader {compression: int32, file_data_position: int64, description}."""
    text = description.encode()
    buf = bytearray(struct.pack("<I", 24) + b"IOHE")        # root table at 24, identifier
    buf += struct.pack("<HHHHH", 10, 20, 4, 8, 16)          # vtable at 8: 3 fields
    buf += bytes(24 - len(buf))
    buf += struct.pack("<i", 24 - 8)                        # table -> vtable
    buf += struct.pack("<i", 0)                             # compression: None
    buf += struct.pack("<q", -1)                            # no data table
    buf += struct.pack("<I", 4)                             # -> string at 44
    buf += struct.pack("<I", len(text)) + text + b"\0"
    buf += bytes(-len(buf) % 4)
    return bytes(buf)


def _aedat_event_packet(t: np.ndarray, x: np.ndarray, y: np.ndarray, p: np.ndarray) -> bytes:
    """Size-prefixed FlatBuffer EventPacket {elements: [Event(t i64, x i16, y i16, on bool)]}."""
    event = np.dtype([("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("on", "u1"), ("pad", "V3")])
    events = np.zeros(len(t), dtype=event)
    events["t"], events["x"], events["y"], events["on"] = t, x, y, p
    body = bytearray(struct.pack("<I", 16) + b"EVTS")       # root table at 20 (after prefix)
    body += struct.pack("<HHH", 6, 8, 4) + bytes(2)         # vtable at 12: 1 field
    body += struct.pack("<i", 8)                            # table at 20 -> vtable at 12
    body += struct.pack("<I", 4)                            # -> vector at 28
    body += struct.pack("<I", len(t)) + events.tobytes()    # elements start 8-aligned at 32
    return struct.pack("<I", len(body)) + bytes(body)


def write_aedat4(path: Path, t: np.ndarray, x: np.ndarray, y: np.ndarray, p: np.ndarray) -> None:
    """An uncompressed AEDAT4 file with one 128 x 128 event stream and one packet."""
    header = _aedat_ioheader(_AEDAT_DESCRIPTION)
    packet = _aedat_event_packet(t, x, y, p)
    path.write_bytes(b"#!AER-DAT4.0\r\n" + struct.pack("<I", len(header)) + header
                     + struct.pack("<II", 0, len(packet)) + packet)


def write_cifar10_dvs(root: Path, order_seed: int) -> Fixture:
    rng = np.random.default_rng(4)
    folder = root / "CIFAR10DVS"
    jobs = []
    for label, name in enumerate(CIFAR_CLASSES):
        numbers = [1, 2, 10] if label in (0, 7) else [0, 1]  # 1, 2, 10: natural sort matters
        for number in numbers:
            t, x, y, p = _camera_events(rng, int(rng.integers(30, 80)), 128,
                                        int(rng.integers(10**9, 2 * 10**9)), 1_300_000)
            jobs.append((label, number, folder / name / f"cifar10_{name}_{number}.aedat4",
                         (t, x, y, p)))
    # hand-made (airplane_1, train): 11 events 0..100 ms apart, so with 10 equal bins
    # of 10 ms event k lands in bin k (the last one in bin 9), all at x127 y127 p1
    jobs[0] = (*jobs[0][:3], (np.arange(11) * 10_000 + 5_000_000, np.full(11, 127),
                              np.full(11, 127), np.ones(11, np.int64)))
    for i in np.random.default_rng(order_seed).permutation(len(jobs)):
        path, (t, x, y, p) = jobs[i][2], jobs[i][3]
        path.parent.mkdir(parents=True, exist_ok=True)
        write_aedat4(path, t, x, y, p)
    splits: dict[str, list[Sample]] = {"train": [], "test": []}
    for label in range(10):
        members = sorted((j for j in jobs if j[0] == label), key=lambda j: j[1])
        n_train = len(members) * 9 // 10
        for k, (_, _, _, (t, x, y, p)) in enumerate(members):
            splits["train" if k < n_train else "test"].append(Sample(t, (p, y, x), label))
    return Fixture(root, splits, jobs[0][2])


WRITERS = {"shd": write_shd, "dvs_gesture": write_dvs_gesture,
           "cifar10_dvs": write_cifar10_dvs, "nmnist": write_nmnist}


@pytest.fixture
def writers() -> SimpleNamespace:
    """The writers, for tests (conftest modules are not imported by name)."""
    def write_fixture(name: str, root: Path, order_seed: int = 0) -> Fixture:
        return WRITERS[name](root, order_seed)

    return SimpleNamespace(write_fixture=write_fixture, write_aedat4=write_aedat4,
                           encode_nmnist=encode_nmnist)


def reference_frames(sample: Sample, T: int, bin_us: float | None, t_start: str,
                     sensor: tuple[int, ...], out: tuple[int, ...]) -> np.ndarray:
    """Naive event-by-event binning, written straight from the documented rule."""
    frames = np.zeros((T, *out), dtype=np.int64)
    times = [int(v) for v in sample.t_us]
    if not times:
        return frames
    t0 = min(times) if t_start == "first" else 0
    width = (max(times) - t0) / T if bin_us is None else bin_us
    for i, t in enumerate(times):
        if bin_us is None:
            k = min(math.floor((t - t0) / width), T - 1) if width > 0 else 0
        else:
            k = math.floor((t - t0) / width)
        if 0 <= k < T:
            cell = tuple(int(c[i]) * o // s for c, s, o in zip(sample.coords, sensor, out,
                                                               strict=True))
            frames[(k, *cell)] += 1
    return frames


@pytest.fixture
def reference() -> Callable[..., np.ndarray]:
    """:func:`reference_frames` as a fixture."""
    return reference_frames
