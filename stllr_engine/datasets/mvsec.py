"""MVSEC (Multi Vehicle Stereo Event Camera) for optical flow, read from its own hdf5 files.

On disk (the files as downloaded from https://daniilidis-group.github.io/mvsec/, never fetched here)::

    <data_dir>/mvsec/<sequence>_data.hdf5   davis/left/events              [N, 4] float64: x, y, t (s), p
                                            davis/left/image_raw           [n, 260, 346] uint8
                                            davis/left/image_raw_ts        [n] (s)
                                            davis/left/image_raw_event_inds [n]: index of the last event
                                                                            before each image
    <data_dir>/mvsec/<sequence>_gt.hdf5     davis/left/flow_dist           [m, 2, 260, 346]: u, v (px)
                                            davis/left/flow_dist_ts        [m] (s)

Samples (as Spike-FlowNet): the grey frame pairs ``(i, i + dt)`` for ``i = 0 .. n − 1 − dt`` of each
sequence, ``dt`` = 1 or 4, at most ``max_pairs`` per sequence (the first ones). The events between
the two images are ``events[inds[i] + 1 : inds[i + dt] + 1]``; the first ``⌊k/2⌋`` of those ``k``
events are the former half, the rest the latter half, and the ``j``-th event of a half of ``h``
events goes to bin ``⌊j·T/h⌋`` (``T`` bins of equal event count, ±1). Frames ``[T, 4, crop, crop]``:
at step ``t`` the channels count (former-half bin ``t`` ON, former OFF, latter-half bin ``t`` ON,
latter OFF) events, ON meaning ``p > 0`` (p in {-1, 1} or {0, 1}). Default ``T``: 5 for dt = 1,
20 for dt = 4. Everything is centre-cropped to ``crop × crop`` (default 256: rows 2 .. 257,
columns 45 .. 300); events outside the crop are dropped after the binning into halves and bins.

Target ``[4, crop, crop]``: ``image_raw[i] / 255``, ``image_raw[i + dt] / 255``, and the ground-truth
flow over ``[t0, t1] = [t_i, t_{i+dt}]``, propagated as the MVSEC / EV-FlowNet tools do
(``estimate_corresponding_gt_flow``): ``flow_dist[j]`` is the displacement over its interval
``[gt_ts[j], gt_ts[j+1])``; every pixel starts at its own position and, for each interval ``j``
overlapping ``[t0, t1]`` in turn, moves by ``flow_dist[j]`` sampled at its current (sub-pixel)
position (bilinear) times the overlap fraction ``|[t0, t1] ∩ [gt_ts[j], gt_ts[j+1])| /
(gt_ts[j+1] − gt_ts[j])``; the flow is its final position minus its start. The points start at
the crop's pixels but move in full-sensor coordinates over the uncropped gt, so a point that leaves
the crop stays valid while it is on the sensor. A pair inside one interval gets
``flow_dist[j] · (t1 − t0) / (gt_ts[j+1] − gt_ts[j])``, the tools' special case. The flow is 0
(unknown) for a pixel whose point is off the sensor (``0 ≤ x ≤ 345``, ``0 ≤ y ≤ 259``) where it must
sample the next interval's flow (as in the tools, the last move may end off the sensor: the one-interval
case keeps every scaled gt value), or samples an invalid gt value (a bilinear neighbour of nonzero
weight that is not finite or is ``(0, 0)``, MVSEC's mark of a pixel without depth; the tools mask
exact zeros too, per component), and everywhere when ``[t0, t1]`` is not covered by increasing gt times
(``t0 < gt_ts[0]``, ``t1 > gt_ts[-1]``, ``t1 ≤ t0``). Unlike the tools, which sample the flow at the
nearest pixel (``cv2.remap``, ``INTER_NEAREST``), this samples bilinearly, in numpy.

Cache (``cache_dir``, default ``<data_dir>/.stllr_cache``): one entry per sequence and crop,
``mvsec-<sequence>-<key>/`` with the cropped images (uint8), image times, event indices, the
events' cropped x, y (int16) and ON flag (uint8) of *all* events, the gt times and the gt flows of
the *full sensor* (float32, non-finite values kept, since points move across the whole sensor),
published by one atomic rename under a lock as :mod:`._cache` does; the key covers the crop, the
entry format (``FORMAT``; 2 since the gt is stored uncropped, so format-1 entries are rebuilt) and
the files' sizes and modification times. Dense frames are never stored (outdoor_day2 would take
about 35 GB): a sample is binned when it is read, from the memory-mapped entry, and its gt flow is
propagated then (for the crop's pixels only: a few gather-and-add passes over ``crop²`` points, one
per gt interval the pair spans), so ``dt``, ``T`` and ``max_pairs`` share the entry.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from stllr_engine._checks import is_int
from stllr_engine.datasets import _cache
from stllr_engine.datasets._base import DatasetInfo
from stllr_engine.datasets._flow import FlowDataset
from stllr_engine.errors import StllrError

NAME = "mvsec"
FOLDER = "mvsec"
SENSOR = (260, 346)
SOURCE = "https://daniilidis-group.github.io/mvsec/"
DEFAULTS: dict[str, Any] = {"train": ("outdoor_day2",),
                            "test": ("indoor_flying1", "indoor_flying2", "indoor_flying3"),
                            "dt": 1, "T": None, "crop": 256, "max_pairs": None}
DEFAULT_T = {1: 5, 4: 20}
EVENTS, IMAGES, IMAGE_TS, EVENT_INDS = ("davis/left/events", "davis/left/image_raw",
                                        "davis/left/image_raw_ts", "davis/left/image_raw_event_inds")
FLOW, FLOW_TS = "davis/left/flow_dist", "davis/left/flow_dist_ts"
_FILES = ("images", "image_ts", "event_inds", "events_x", "events_y", "events_on", "gt_ts", "gt_flow")
_EVENT_ROWS = 2**20
_IMAGE_ROWS = 64
_FLOW_ROWS = 8
BLOCK = 100  # consecutive pairs held out together by ``val_split: block`` (about 3 s of a recording)
UNKNOWN_INDEX = -2  # stored for a non-finite image_raw_event_inds value (-1 is "before the first event")
FORMAT = 3  # 3: non-finite event indices stored as UNKNOWN_INDEX;  2: gt flows stored uncropped (full sensor, non-finite kept) for the propagation


def validate(params: dict[str, Any]) -> dict[str, Any]:
    """Check the parameters; return them normalised (sequence lists as tuples, ``T`` resolved)."""
    out = dict(params)
    for key in ("train", "test"):
        value = params[key]
        names = (value,) if isinstance(value, str) else value
        if (not isinstance(names, (list, tuple)) or not names
                or not all(isinstance(s, str) and s and "/" not in s and "\\" not in s for s in names)):
            raise StllrError(f"dataset {NAME!r}: {key}={value!r} must be a sequence name or a list of them, "
                             "e.g. ['indoor_flying1'] (files <name>_data.hdf5 and <name>_gt.hdf5)")
        out[key] = tuple(names)
    both = sorted(set(out["train"]) & set(out["test"]))
    if both:
        raise StllrError(f"dataset {NAME!r}: {', '.join(both)} is in both train and test: a model would be "
                         "tested on what it trained on; give each sequence to one split")
    dt = params["dt"]
    if not is_int(dt) or int(dt) not in DEFAULT_T:
        raise StllrError(f"dataset {NAME!r}: dt={dt!r} must be 1 or 4 (frames between the two images of a pair)")
    out["dt"] = int(dt)
    T = params["T"]
    if T is None:
        T = DEFAULT_T[out["dt"]]
    if not is_int(T) or T < 1:
        raise StllrError(f"dataset {NAME!r}: T={T!r} must be an integer >= 1, or None "
                         "(5 for dt=1, 20 for dt=4)")
    out["T"] = int(T)
    crop = params["crop"]
    if not is_int(crop) or not 8 <= crop <= SENSOR[0] or crop % 2:
        raise StllrError(f"dataset {NAME!r}: crop={crop!r} must be an even integer from 8 to {SENSOR[0]} "
                         f"(a centre crop of the {SENSOR[0]} x {SENSOR[1]} sensor; Spike-FlowNet uses 256)")
    out["crop"] = int(crop)
    cap = params["max_pairs"]
    if cap is not None and (not is_int(cap) or cap < 1):
        raise StllrError(f"dataset {NAME!r}: max_pairs={cap!r} must be an integer >= 1 or None (all pairs)")
    out["max_pairs"] = None if cap is None else int(cap)
    return out


def crop_offsets(crop: int) -> tuple[int, int]:
    """``(row, column)`` of the crop's top-left pixel on the sensor: ``(2, 45)`` for 256."""
    return (SENSOR[0] - crop) // 2, (SENSOR[1] - crop) // 2


def _missing(folder: Path, what: str) -> StllrError:
    return StllrError(f"{NAME}: {what} in {folder}; expected <sequence>_data.hdf5 and <sequence>_gt.hdf5 "
                      f"there; get them from {SOURCE} (stllr never downloads)")


def _malformed(path: Path, what: str) -> StllrError:
    return StllrError(f"{path}: {what}; replace it with a fresh copy from {SOURCE}")


def _files(folder: Path, sequence: str) -> tuple[Path, Path]:
    data, gt = folder / f"{sequence}_data.hdf5", folder / f"{sequence}_gt.hdf5"
    for path in (data, gt):
        if not path.is_file():
            raise _missing(folder, f"{path.name} not found (sequence {sequence!r})")
    return data, gt


def _shapes(data: Path, gt: Path) -> dict[str, int]:
    """Check the keys and shapes of one sequence's files (reads no arrays); return n, N, m."""
    import h5py

    found: dict[str, tuple[int, ...]] = {}
    for path, keys in ((data, (EVENTS, IMAGES, IMAGE_TS, EVENT_INDS)), (gt, (FLOW, FLOW_TS))):
        try:
            with h5py.File(path, "r") as f:
                shapes: dict[str, tuple[int, ...]] = {}
                for key in keys:
                    if key not in f or not isinstance(f[key], h5py.Dataset):
                        raise _malformed(path, f"no dataset {key} in this file (an MVSEC "
                                               f"{'ground-truth' if path is gt else 'data'} file holds "
                                               f"{', '.join(keys)})")
                    shapes[key] = tuple(f[key].shape)
        except StllrError:
            raise
        except Exception as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise _malformed(path, f"cannot read this MVSEC file ({reason}); it is truncated or corrupt") from exc
        found.update(shapes)
    ev, im, im_ts, inds = found[EVENTS], found[IMAGES], found[IMAGE_TS], found[EVENT_INDS]
    flow, flow_ts = found[FLOW], found[FLOW_TS]
    if len(ev) != 2 or ev[1] != 4:
        raise _malformed(data, f"{EVENTS} has shape {ev}; expected [N, 4] (x, y, t, p)")
    if ev[0] == 0:
        raise _malformed(data, f"no events: {EVENTS} is empty")
    if len(im) != 3 or im[1:] != SENSOR:
        raise _malformed(data, f"{IMAGES} has shape {im}; expected [n, {SENSOR[0]}, {SENSOR[1]}]")
    for key, shape in ((IMAGE_TS, im_ts), (EVENT_INDS, inds)):
        if shape != (im[0],):
            raise _malformed(data, f"{key} has shape {shape}; expected [{im[0]}], one per image of {IMAGES}")
    if len(flow) != 4 or flow[1:] != (2, *SENSOR):
        raise _malformed(gt, f"{FLOW} has shape {flow}; expected [m, 2, {SENSOR[0]}, {SENSOR[1]}]")
    if flow_ts != (flow[0],):
        raise _malformed(gt, f"{FLOW_TS} has shape {flow_ts}; expected [{flow[0]}], one per frame of {FLOW}")
    return {"n": im[0], "N": ev[0], "m": flow[0]}


def entry_bytes(dims: dict[str, int], crop: int) -> int:
    """Bytes one sequence's entry takes."""
    return (dims["n"] * (crop * crop + 16) + dims["N"] * 5 + dims["m"] * (8 + 8 * SENSOR[0] * SENSOR[1])
            + len(_FILES) * 128 + _cache.ENTRY_OVERHEAD_BYTES)


@contextlib.contextmanager
def _writes() -> Any:
    """Marks an ``OSError`` as a failed *write* (reported by :class:`._cache._writing`), not a bad file."""
    try:
        yield
    except OSError as exc:
        exc.stllr_write = True  # type: ignore[attr-defined]
        raise


class _NpyWriter:
    """An ``.npy`` file written block by block with ordinary writes (see :class:`._cache._FrameFile`)."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: Any) -> None:
        self.dtype = np.dtype(dtype)
        with _writes():
            self.file = open(path, "wb")
            _cache._write_header(self.file, shape, self.dtype)

    def write(self, block: np.ndarray) -> None:
        data = np.ascontiguousarray(block, dtype=self.dtype)
        with _writes():
            self.file.write(data.data)

    def close(self) -> None:
        self.file.close()


def _build(entry_dir: Path, data: Path, gt: Path, dims: dict[str, int], crop: int, meta: dict[str, Any]) -> None:
    import h5py

    y0, x0 = crop_offsets(crop)
    n, N, m = dims["n"], dims["N"], dims["m"]
    writers: list[_NpyWriter] = []

    def writer(name: str, shape: tuple[int, ...], dtype: Any) -> _NpyWriter:
        w = _NpyWriter(entry_dir / f"{name}.npy", shape, dtype)
        writers.append(w)
        return w

    current = data
    try:
        with h5py.File(data, "r") as f:
            w = writer("images", (n, crop, crop), np.uint8)
            for a in range(0, n, _IMAGE_ROWS):
                w.write(f[IMAGES][a:a + _IMAGE_ROWS, y0:y0 + crop, x0:x0 + crop])
            writer("image_ts", (n,), np.float64).write(np.asarray(f[IMAGE_TS][()], dtype=np.float64))
            inds = np.asarray(f[EVENT_INDS][()])
            if inds.dtype.kind == "f":  # a missing index: its pairs get no events (never the whole recording)
                inds = np.where(np.isfinite(inds), inds, UNKNOWN_INDEX)
            writer("event_inds", (n,), np.int64).write(inds.astype(np.int64))
            wx, wy, won = (writer("events_x", (N,), np.int16), writer("events_y", (N,), np.int16),
                           writer("events_on", (N,), np.uint8))
            for a in range(0, N, _EVENT_ROWS):
                block = np.asarray(f[EVENTS][a:a + _EVENT_ROWS], dtype=np.float64)
                x = np.nan_to_num(block[:, 0], nan=-1.0) - x0
                y = np.nan_to_num(block[:, 1], nan=-1.0) - y0
                wx.write(np.clip(np.floor(x), -1, crop).astype(np.int16))  # -1 / crop: outside
                wy.write(np.clip(np.floor(y), -1, crop).astype(np.int16))
                won.write((block[:, 3] > 0).astype(np.uint8))
        current = gt
        with h5py.File(gt, "r") as f:
            writer("gt_ts", (m,), np.float64).write(np.asarray(f[FLOW_TS][()], dtype=np.float64))
            w = writer("gt_flow", (m, 2, *SENSOR), np.float32)  # uncropped: points move across the sensor
            for a in range(0, m, _FLOW_ROWS):
                w.write(np.asarray(f[FLOW][a:a + _FLOW_ROWS], dtype=np.float32))
    except StllrError:
        raise
    except Exception as exc:
        if getattr(exc, "stllr_write", False):
            raise
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise _malformed(current, f"cannot read this MVSEC file ({reason}); it is truncated or corrupt") from exc
    finally:
        for w in writers:
            with contextlib.suppress(OSError):
                w.close()
    (entry_dir / "meta.json").write_text(json.dumps({**meta, "format": FORMAT, **dims}, indent=1,
                                                    sort_keys=True, default=str))
    for name in (*_FILES, "meta"):
        path = entry_dir / (f"{name}.npy" if name != "meta" else "meta.json")
        _cache._fsync(path)
    _cache._fsync(entry_dir)


def _open_or_build(cache_root: Path, name: str, data: Path, gt: Path, dims: dict[str, int], crop: int,
                   meta: dict[str, Any]) -> Path:
    entry = cache_root / name
    if _cache.entry_exists(cache_root, name):
        return entry
    with _cache._exclusive(cache_root, f"{name}.lock"):
        if _cache.entry_exists(cache_root, name):
            return entry
        _cache.remove_stale(cache_root, held=name)
        needed = entry_bytes(dims, crop)
        _cache.check_room(cache_root, needed, f"entry {name}")
        guard = _cache._writing(cache_root, name, needed)
        with guard:
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}{_cache._TMP}", dir=cache_root))
        try:
            with guard:
                os.chmod(tmp, 0o777 & ~_cache._umask())
                _build(tmp, data, gt, dims, crop, meta)
                os.replace(tmp, entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return entry


class _Sequence:
    """One sequence's cache entry, memory-mapped when first read (sent to workers as its path)."""

    def __init__(self, name: str, entry: Path) -> None:
        self.name, self.entry = name, str(entry)
        self._arrays: dict[str, np.ndarray] | None = None

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = {k: np.load(Path(self.entry) / f"{k}.npy", mmap_mode="r") for k in _FILES}
        return self._arrays

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "entry": self.entry, "_arrays": None}


def pair_table(arrays: dict[str, np.ndarray], dt: int, max_pairs: int | None) -> dict[str, np.ndarray]:
    """Per pair ``k`` of one sequence: image ``i``, event range ``[start, stop)``, the first gt interval
    ``j`` overlapping ``[t_i, t_{i+dt}]`` (-1: no ground truth) and the number ``nj`` of intervals it spans."""
    ts = np.asarray(arrays["image_ts"], dtype=np.float64)
    inds = np.asarray(arrays["event_inds"], dtype=np.int64)
    gt_ts = np.asarray(arrays["gt_ts"], dtype=np.float64)
    N = len(arrays["events_x"])
    count = max(len(ts) - dt, 0)
    if max_pairs is not None:
        count = min(count, max_pairs)
    i = np.arange(count, dtype=np.int64)
    start = np.clip(inds[i] + 1, 0, N)
    stop = np.maximum(np.clip(inds[i + dt] + 1, 0, N), start)
    unknown = (inds[i] == UNKNOWN_INDEX) | (inds[i + dt] == UNKNOWN_INDEX)
    stop = np.where(unknown, start, stop)
    first, last = gt_span(gt_ts, ts[i], ts[i + dt])
    ok = first >= 0
    return {"i": i, "start": start, "stop": stop, "j": np.where(ok, first, -1),
            "nj": np.where(ok, last - first + 1, 0)}


def gt_span(gt_ts: np.ndarray, t0: np.ndarray, t1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last gt interval overlapping each ``[t0, t1]`` (``first`` -1 where the gt does not cover it:
    ``t0 < gt_ts[0]``, ``t1 > gt_ts[-1]``, ``t1 <= t0``, or gt times not increasing over the span)."""
    gt_ts = np.asarray(gt_ts, dtype=np.float64)
    t0, t1 = np.asarray(t0, dtype=np.float64), np.asarray(t1, dtype=np.float64)
    m = len(gt_ts)
    first = np.searchsorted(gt_ts, t0, side="right") - 1   # the interval that holds t0
    last = np.searchsorted(gt_ts, t1, side="left") - 1     # the last interval that starts before t1
    ok = np.isfinite(t0) & np.isfinite(t1) & (t1 > t0) & (first >= 0) & (last <= m - 2) & (last >= first)
    bad = np.concatenate([[0], np.cumsum(~(np.diff(gt_ts) > 0))]) if m else np.zeros(1, np.int64)
    f, la = np.clip(first, 0, max(m - 1, 0)), np.clip(last + 1, 0, max(m - 1, 0))
    ok &= bad[la] == bad[f]                                # every interval of the span has a positive length
    return np.where(ok, first, -1), np.where(ok, last, -1)


def overlap_fractions(gt_ts: np.ndarray, j: int, nj: int, t0: float, t1: float) -> list[float]:
    """The fraction of each interval ``j .. j + nj − 1`` that ``[t0, t1]`` covers."""
    out = []
    for k in range(j, j + nj):
        a, b = float(gt_ts[k]), float(gt_ts[k + 1])
        out.append((min(t1, b) - max(t0, a)) / (b - a))
    return out


def _sample(field: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear ``(u, v)`` of ``field`` ``[2, H, W]`` at ``x``, ``y`` (on the sensor), and where it is invalid:
    a neighbour of nonzero weight that is not finite or is ``(0, 0)``."""
    H, W = field.shape[1:]
    cx = np.minimum(np.floor(x).astype(np.int64), W - 2)
    cy = np.minimum(np.floor(y).astype(np.int64), H - 2)
    fx, fy = x - cx, y - cy
    value = np.zeros((2, *x.shape), dtype=np.float64)
    invalid = np.zeros(x.shape, dtype=bool)
    for dy, dx, w in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy), (1, 1, fx * fy)):
        corner = field[:, cy + dy, cx + dx].astype(np.float64)
        bad = ~np.isfinite(corner).all(axis=0) | (corner == 0).all(axis=0)
        invalid |= bad & (w > 0)
        value += w * np.where(bad, 0.0, corner)
    return value, invalid


def propagate(frames: list[np.ndarray], fractions: list[float], y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Displacement ``[2, *shape]`` (float32) of the points starting at sensor positions ``y``, ``x``, moved
    through the gt ``frames`` (each ``[2, H, W]``, the sensor) in turn, each scaled by its ``fraction``;
    0 where the point leaves the sensor or samples an invalid gt value (see the module docstring)."""
    x0 = np.asarray(x, dtype=np.float64)
    y0 = np.asarray(y, dtype=np.float64)
    du, dv = np.zeros(x0.shape), np.zeros(x0.shape)  # the displacement so far (exact for one interval)
    lost = np.zeros(x0.shape, dtype=bool)

    def off_sensor(shape: tuple[int, ...]) -> np.ndarray:
        px, py = x0 + du, y0 + dv
        return ~((px >= 0) & (px <= shape[1] - 1) & (py >= 0) & (py <= shape[0] - 1))

    for frame, fraction in zip(frames, fractions, strict=True):
        lost |= off_sensor(frame.shape[1:])  # where it must sample; the last move may end off the sensor
        sx, sy = np.where(lost, 0.0, x0 + du), np.where(lost, 0.0, y0 + dv)  # lost points: sampled, dropped
        flow, invalid = _sample(frame, sx, sy)
        lost |= invalid
        du += np.where(lost, 0.0, fraction * flow[0])
        dv += np.where(lost, 0.0, fraction * flow[1])
    out = np.stack([du, dv])
    out[:, lost] = 0.0
    return out.astype(np.float32)


def bin_events(x: np.ndarray, y: np.ndarray, on: np.ndarray, T: int, crop: int) -> np.ndarray:
    """Counts ``[T, 4, crop, crop]`` of one pair's events (in order), as the module docstring says."""
    k = len(x)
    half = k // 2
    j = np.arange(k, dtype=np.int64)
    latter = j >= half
    pos = np.where(latter, j - half, j)
    size = np.where(latter, k - half, half)
    step = pos * T // np.maximum(size, 1)
    channel = 2 * latter + (1 - (np.asarray(on) > 0))
    x = np.asarray(x, dtype=np.int64)
    y = np.asarray(y, dtype=np.int64)
    keep = (x >= 0) & (x < crop) & (y >= 0) & (y < crop)
    flat = ((step * 4 + channel) * crop + y) * crop + x
    counts = np.bincount(flat[keep], minlength=T * 4 * crop * crop)
    return counts.reshape(T, 4, crop, crop)


class MVSECSource:
    """The pairs of one split's sequences, binned on access (see :class:`._flow.FlowSource`)."""

    def __init__(self, sequences: list[_Sequence], tables: list[dict[str, np.ndarray]], dt: int, T: int,
                 crop: int) -> None:
        self.sequences, self.dt, self.T, self.crop = sequences, dt, T, crop
        self.seq = np.concatenate([np.full(len(t["i"]), s, dtype=np.int64) for s, t in enumerate(tables)]
                                  or [np.zeros(0, np.int64)])
        self.table = {key: np.concatenate([t[key] for t in tables]) if tables else np.zeros(0)
                      for key in ("i", "start", "stop", "j", "nj")}

    def __len__(self) -> int:
        return len(self.seq)

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        arrays = self.sequences[self.seq[index]].arrays
        i, start, stop = (int(self.table[k][index]) for k in ("i", "start", "stop"))
        j, nj = int(self.table["j"][index]), int(self.table["nj"][index])
        counts = bin_events(arrays["events_x"][start:stop], arrays["events_y"][start:stop],
                            arrays["events_on"][start:stop], self.T, self.crop)
        target = np.zeros((4, self.crop, self.crop), dtype=np.float32)
        target[0] = arrays["images"][i] / np.float32(255)
        target[1] = arrays["images"][i + self.dt] / np.float32(255)
        if j >= 0:  # propagated on the full sensor from the crop's pixels (module docstring)
            t0, t1 = float(arrays["image_ts"][i]), float(arrays["image_ts"][i + self.dt])
            fractions = overlap_fractions(arrays["gt_ts"], j, nj, t0, t1)
            y0, x0 = crop_offsets(self.crop)
            ys, xs = np.mgrid[y0:y0 + self.crop, x0:x0 + self.crop]
            target[2:] = propagate([arrays["gt_flow"][k] for k in range(j, j + nj)], fractions, ys, xs)
        return counts, target


def load(data_dir: str | os.PathLike[str] | None, cache_dir: str | os.PathLike[str] | None,
         params: dict[str, Any], max_cache_bytes: int | str | None = None) -> tuple[FlowDataset, FlowDataset]:
    """Check the files, cache each sequence once (cropped), and wrap the train and test pairs."""
    hint = f"data_dir=<the folder that holds {FOLDER}/>, with {FOLDER}/<sequence>_data.hdf5 and _gt.hdf5"
    if data_dir is None:
        raise StllrError(f"dataset {NAME!r} needs {hint}")
    root = Path(data_dir).expanduser().resolve()
    if not root.is_dir():
        raise StllrError(f"{root}: data_dir is not a folder; pass {hint}")
    folder = root / FOLDER
    if not folder.is_dir():
        raise _missing(root, f"no folder {FOLDER}/")
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else root / ".stllr_cache"
    limit = _cache.max_cache_bytes(max_cache_bytes)
    crop = params["crop"]
    names = list(dict.fromkeys((*params["train"], *params["test"])))
    found = {s: _files(folder, s) for s in names}          # every file is there before anything is read
    dims = {s: _shapes(*found[s]) for s in names}           # and well formed before anything is written
    for s in names:
        if dims[s]["n"] <= params["dt"]:
            raise _malformed(found[s][0], f"{IMAGES} has {dims[s]['n']} images, too few for a pair at "
                                          f"dt={params['dt']}")
    entries: dict[str, str] = {}
    for s in names:
        key = {"crop": crop, "format": FORMAT, "files": _cache.fingerprint(found[s], root)}
        entries[s] = _cache.entry_name(NAME, s, key)
    to_build = [s for s in names if not _cache.entry_exists(cache_root, entries[s])]
    if to_build:
        needed = sum(entry_bytes(dims[s], crop) for s in to_build)
        what = f"{NAME} sequences {', '.join(to_build)} at crop={crop}"
        if needed > limit:
            raise StllrError(f"{cache_root}: the cache of {what} needs {needed} bytes ({_cache.human(needed)}), "
                             f"above the limit of {limit} bytes ({_cache.human(limit)}); to allow it pass "
                             f"max_cache_bytes=<bytes> to load_dataset or set {_cache.MAX_CACHE_BYTES_ENV}=<bytes> "
                             "(e.g. 64GiB), or choose a smaller crop")
        if cache_root.is_dir():
            _cache.remove_stale(cache_root)  # a killed build's leftovers may be what fills the disk
        _cache.check_room(cache_root, needed, what)
    sequences = {}
    for s in names:
        meta = {"dataset": NAME, "sequence": s, "crop": crop, "files": [str(p) for p in found[s]]}
        entry = _open_or_build(cache_root, entries[s], *found[s], dims[s], crop, meta)
        sequences[s] = _Sequence(s, entry)
    pair = []
    for split in ("train", "test"):
        seqs = [sequences[s] for s in params[split]]
        tables = []
        for sq in seqs:
            tables.append(pair_table(sq.arrays, params["dt"], params["max_pairs"]))
        source = MVSECSource(seqs, tables, params["dt"], params["T"], crop)
        spans, at = [], 0
        for sq, t in zip(seqs, tables, strict=True):
            spans.append((sq.name, at, at + len(t["i"])))
            at += len(t["i"])
        cache_entry = seqs[0].entry if len(seqs) == 1 else None
        info = DatasetInfo(name=NAME, split=split, input_shape=(4, crop, crop), num_classes=2, T=params["T"],
                           params=dict(params), cache_entry=cache_entry, task="flow")
        pair.append(FlowDataset(source, info, spans, grouped=True, block=BLOCK))
    return pair[0], pair[1]
