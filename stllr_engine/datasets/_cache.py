"""On-disk frame cache: bin a split once, memory-map it for every later epoch and run.

Layout of ``<cache_dir>`` (default ``<data_dir>/.stllr_cache``)::

    <dataset>-<split>-<key>/        one entry, published by a single atomic rename
        frames.npy                  counts [N, T, *shape], uint8/uint16/uint32
        labels.npy                  int64 [N]
        meta.json                   everything the key was made of, dtype, N
    <dataset>-<split>-<key>.lock    flock()ed while the entry is being built

``key`` is the first 16 hex digits of a SHA-256 over :data:`FORMAT_VERSION`, the
dataset name, the split, every binning parameter and a fingerprint of the source
files (relative paths and sizes, not modification times, so copies of the same
data on several nodes share entries).  Changing any of them makes a new entry.

Concurrency (several processes, possibly on several nodes sharing the folder):

* readers never lock: an entry directory exists only once it is complete;
* a builder takes an exclusive ``fcntl.flock`` on the entry's lock file, checks
  again (a waiter finds the first builder's entry and just reads it), builds
  into a temporary directory in the same folder, fsyncs and ``os.replace``\\ s it
  into place, so no reader ever sees a torn entry (across nodes the shared
  filesystem must support flock: NFSv4, or Lustre mounted with ``-o flock``);
* if building fails (corrupt source file) the temporary directory is removed,
  so no partial entry is left; temporary directories left by a killed builder
  are removed by the next builder of the same entry (it holds the lock).

Lock files are left in place: deleting one could let two builders lock
different inodes.  Counts are stored in the smallest unsigned dtype that holds
them (checked per sample; uint8, widened to uint16 and up on overflow), so SHD
(8156 x 100 x 700) takes about 0.57 GB as uint8 instead of 2.3 GB as float32.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from stllr_engine.errors import StllrError

FORMAT_VERSION = 1
_DTYPES = (np.uint8, np.uint16, np.uint32, np.uint64)
_COPY_ROWS = 256


def entry_name(dataset: str, split: str, key_fields: dict[str, Any]) -> str:
    """Name of the cache entry for one dataset split and its binning parameters."""
    payload = {"format": FORMAT_VERSION, "dataset": dataset, "split": split, **key_fields}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return f"{dataset}-{split}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def fingerprint(files: Iterable[Path], root: Path) -> str:
    """SHA-256 over the relative paths and sizes of the source files, in order."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(root).as_posix()}\t{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def open_or_build(
    cache_dir: Path,
    name: str,
    meta: dict[str, Any],
    n_samples: int,
    frame_shape: tuple[int, ...],
    produce: Callable[[], Iterator[tuple[np.ndarray, int]]],
) -> tuple[np.ndarray, np.ndarray, Path]:
    """Return ``(frames, labels, entry_dir)``, building the entry first if needed.

    Args:
        cache_dir: Folder holding the entries (created if missing).
        name: Entry name from :func:`entry_name`.
        meta: JSON-able description stored as ``meta.json``.
        n_samples: Number of samples ``produce`` yields.
        frame_shape: Shape of one sample's counts, ``(T, *shape)``.
        produce: Called at most once, by the builder; yields ``(counts, label)``.

    Returns:
        Read-only memory-mapped counts ``[N, *frame_shape]``, labels ``[N]``, entry path.
    """
    entry = cache_dir / name
    if not (entry / "meta.json").exists():
        with _exclusive(cache_dir, f"{name}.lock"):
            if not (entry / "meta.json").exists():
                for stale in cache_dir.glob(f".{name}.tmp-*"):
                    shutil.rmtree(stale, ignore_errors=True)
                tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=cache_dir))
                try:
                    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would hide it from others
                    _write_entry(tmp, meta, n_samples, frame_shape, produce())
                    os.replace(tmp, entry)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
    frames = np.load(entry / "frames.npy", mmap_mode="r")
    labels = np.load(entry / "labels.npy")
    return frames, labels, entry


@contextlib.contextmanager
def _exclusive(cache_dir: Path, lock_name: str) -> Iterator[None]:
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        handle = open(cache_dir / lock_name, "a+b")
    except OSError as exc:
        raise StllrError(f"{cache_dir}: cannot write the frame cache there "
                         f"({exc.strerror or exc}); pass cache_dir=<a writable folder>") from exc
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _write_entry(
    folder: Path,
    meta: dict[str, Any],
    n_samples: int,
    frame_shape: tuple[int, ...],
    samples: Iterator[tuple[np.ndarray, int]],
) -> None:
    level = 0
    path = folder / "frames.npy"
    frames = np.lib.format.open_memmap(path, "w+", _DTYPES[level], (n_samples, *frame_shape))
    labels = np.empty(n_samples, dtype=np.int64)
    count = 0
    for i, (counts, label) in enumerate(samples):
        top = int(counts.max()) if counts.size else 0
        while top > np.iinfo(_DTYPES[level]).max:
            level += 1  # widen what was written so far; rare, so a copy is fine
            frames = _widen(frames, path, _DTYPES[level], i)
        frames[i] = counts
        labels[i] = label
        count = i + 1
    if count != n_samples:
        raise RuntimeError(f"expected {n_samples} samples, got {count}")
    frames.flush()
    del frames
    np.save(folder / "labels.npy", labels)
    meta = {**meta, "format": FORMAT_VERSION, "dtype": np.dtype(_DTYPES[level]).name,
            "n_samples": n_samples, "frame_shape": list(frame_shape)}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
    for name in ("frames.npy", "labels.npy", "meta.json"):
        _fsync(folder / name)
    _fsync(folder)


def _widen(frames: np.memmap, path: Path, dtype: type, rows: int) -> np.memmap:
    wider_path = path.with_suffix(".wider.npy")
    wider = np.lib.format.open_memmap(wider_path, "w+", dtype, frames.shape)
    for start in range(0, rows, _COPY_ROWS):
        stop = min(start + _COPY_ROWS, rows)
        wider[start:stop] = frames[start:stop]
    del frames
    os.replace(wider_path, path)
    return wider


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
