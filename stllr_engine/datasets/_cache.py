"""On-disk frame cache: bin a split once, memory-map it for every later epoch and run.

Layout of ``<cache_dir>`` (default ``<data_dir>/.stllr_cache``)::

    <dataset>-<split>-<key>/        one entry, published by a single atomic rename
        frames.npy                  counts [N, T, *shape], uint8/uint16/uint32
        labels.npy                  int64 [N]
        meta.json                   everything the key was made of, dtype, N
    <dataset>-<split>-<key>.lock    flock()ed while the entry is being built
    .<dataset>-<split>-<key>.tmp-*  an entry being built (or left by a killed builder)

``key`` is the first 16 hex digits of a SHA-256 over :data:`FORMAT_VERSION`, the
dataset name, the split, every binning parameter and a fingerprint of the source
files (relative paths, sizes and modification times in ns, see :func:`fingerprint`).
Changing any of them makes a new entry, so a file edited in place is binned anew;
copies on several nodes share entries when the copy keeps modification times
(``rsync -a``, ``cp -p``).

Concurrency (several processes, possibly on several nodes sharing the folder):

* readers never lock: an entry directory exists only once it is complete;
* a builder takes an exclusive ``fcntl.flock`` on the entry's lock file, checks
  again (a waiter finds the first builder's entry and just reads it), builds
  into a temporary directory in the same folder, fsyncs and ``os.replace``\\ s it
  into place, so no reader ever sees a torn entry (across nodes the shared
  filesystem must support flock: NFSv4, or Lustre mounted with ``-o flock``);
* if building fails (corrupt source file, full disk) the temporary directory is
  removed, so no partial entry is left;
* a builder killed outright (SIGKILL, out of memory) cannot clean up, but the
  kernel drops its lock: every later build first removes the temporary folders of
  all entries whose lock nobody holds (:func:`remove_stale`), whatever their settings.

Faults end in one :class:`StllrError` line: the space an entry needs
(:func:`entry_bytes`) is compared with the free space before anything is
written; frames are written with ordinary writes, never through a memory map, so a
disk that fills up anyway is an ``OSError`` (reported with the folder and the
sizes), not a SIGBUS that kills the process.

Lock files are left in place: deleting one could let two builders lock
different inodes.  Counts are stored in the smallest unsigned dtype that holds
them (checked per sample; uint8, widened to uint16 and up on overflow), so SHD
(8156 x 100 x 700) takes about 0.57 GB as uint8 instead of 2.3 GB as float32.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from stllr_engine.errors import StllrError

FORMAT_VERSION = 1
DEFAULT_MAX_CACHE_BYTES = 8 * 2**30
MAX_CACHE_BYTES_ENV = "STLLR_MAX_CACHE_BYTES"
ENTRY_OVERHEAD_BYTES = 4096  # .npy headers and meta.json
_DTYPES = (np.uint8, np.uint16, np.uint32, np.uint64)
_COPY_ROWS = 256
_TMP = ".tmp-"
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def entry_name(dataset: str, split: str, key_fields: dict[str, Any]) -> str:
    """Name of the cache entry for one dataset split and its binning parameters."""
    payload = {"format": FORMAT_VERSION, "dataset": dataset, "split": split, **key_fields}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return f"{dataset}-{split}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def fingerprint(files: Iterable[Path], root: Path) -> str:
    """SHA-256 over the relative paths, sizes and modification times (ns) of the files.

    The time makes a file rewritten in place at the same size a new entry; hashing
    the content instead would read every file (gigabytes) on every load.
    """
    digest = hashlib.sha256()
    for path in files:
        st = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}\t{st.st_size}\t"
                      f"{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def entry_exists(cache_dir: Path, name: str) -> bool:
    """Whether the entry is complete (its ``meta.json`` is written last)."""
    return (cache_dir / name / "meta.json").exists()


def entry_bytes(n_samples: int, frame_shape: tuple[int, ...]) -> int:
    """Bytes an entry takes at least: 1-byte counts, int64 labels, headers.

    >>> entry_bytes(1600, (1000, 700))
    1120016896
    """
    return n_samples * math.prod(frame_shape) + 8 * n_samples + ENTRY_OVERHEAD_BYTES


def human(n: float) -> str:
    """``n`` bytes in binary units, e.g. ``'2.0 MiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def max_cache_bytes(value: int | str | None = None) -> int:
    """Largest new cache a load may write: ``value``, else ``$STLLR_MAX_CACHE_BYTES``, else 8 GiB.

    Accepts a number of bytes or a string with a binary unit (``"32GiB"``, ``"500M"``).

    >>> max_cache_bytes("32GiB") == 32 * 2**30, max_cache_bytes(10**6)
    (True, 1000000)
    """
    where = "max_cache_bytes"
    if value is None:
        value = os.environ.get(MAX_CACHE_BYTES_ENV, "").strip() or DEFAULT_MAX_CACHE_BYTES
        where = f"${MAX_CACHE_BYTES_ENV}"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0:
        return int(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(value), re.IGNORECASE)
    if isinstance(value, str) and match:
        return int(float(match[1]) * _UNITS[match[2].lower()])
    raise StllrError(f"{where}={value!r} must be a number of bytes >= 0, e.g. 8589934592 "
                     "or '8GiB'")


def free_bytes(folder: Path) -> int:
    """Bytes an unprivileged process may still write on ``folder``'s filesystem."""
    path = folder
    while not path.exists() and path != path.parent:
        path = path.parent
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def available_memory() -> int | None:
    """Memory a new allocation can get: MemAvailable, capped by a cgroup limit; None if unknown."""
    found: list[int] = []
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            found.append(max(int(limit) - used, 0))
    return min(found) if found else None


def check_room(cache_dir: Path, needed: int, what: str) -> None:
    """Raise :class:`StllrError` unless ``needed`` bytes are free on ``cache_dir``."""
    free = free_bytes(cache_dir)
    if needed > free:
        raise StllrError(f"{cache_dir}: not enough free space for the frame cache of {what}: "
                         f"it needs {needed} bytes ({human(needed)}) but {free} bytes "
                         f"({human(free)}) are free; free space there or pass "
                         "cache_dir=<a folder with more room>")


def remove_stale(cache_dir: Path, held: str | None = None) -> list[Path]:
    """Remove the temporary folders of entries that no live process is building.

    A builder holds its entry's lock from before it creates its temporary folder
    until after it renames it, and the kernel drops the lock when the builder dies,
    so a temporary folder whose lock can be taken belongs to a dead builder.
    ``held`` is an entry whose lock the caller already holds.  Folders whose lock
    cannot be opened (a read-only cache) are left alone.

    Returns:
        The folders removed.
    """
    stale: dict[str, list[Path]] = {}
    with contextlib.suppress(OSError):
        for path in cache_dir.iterdir():
            name, sep, _ = path.name[1:].rpartition(_TMP)
            if path.name.startswith(".") and sep and name:
                stale.setdefault(name, []).append(path)
    removed: list[Path] = []
    for name in stale:
        if name == held:
            removed += _remove(cache_dir, name)
            continue
        try:
            handle = open(cache_dir / f"{name}.lock", "a+b")
        except OSError:
            continue
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live builder
            try:
                removed += _remove(cache_dir, name)  # listed again: only now is it certain
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return removed


def _remove(cache_dir: Path, name: str) -> list[Path]:
    found = list(cache_dir.glob(f".{name}{_TMP}*"))
    for path in found:
        shutil.rmtree(path, ignore_errors=True)
    return found


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

    Raises:
        StllrError: Too little free space, or a write failed (the partial entry is
            removed); anything ``produce`` raises passes through unchanged.
    """
    entry = cache_dir / name
    if not entry_exists(cache_dir, name):
        with _exclusive(cache_dir, f"{name}.lock"):
            if not entry_exists(cache_dir, name):
                remove_stale(cache_dir, held=name)
                needed = entry_bytes(n_samples, frame_shape)
                check_room(cache_dir, needed, f"entry {name}")
                guard = _writing(cache_dir, name, needed)
                with guard:
                    tmp = Path(tempfile.mkdtemp(prefix=f".{name}{_TMP}", dir=cache_dir))
                try:
                    with guard:
                        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would hide it
                    _write_entry(tmp, meta, n_samples, frame_shape, produce(), guard)
                    with guard:
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


class _writing(contextlib.AbstractContextManager[None]):
    """Turns an ``OSError`` from writing an entry into one :class:`StllrError` line."""

    def __init__(self, cache_dir: Path, name: str, needed: int) -> None:
        self.cache_dir, self.name, self.needed = cache_dir, name, needed

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if not isinstance(exc, OSError):
            return
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            free = free_bytes(self.cache_dir)
            raise StllrError(
                f"{self.cache_dir}: the disk filled up while writing the frame cache entry "
                f"{self.name} (it needs about {self.needed} bytes, {free} bytes are free now); "
                "the partial entry was removed: free space there or pass "
                "cache_dir=<a folder with more room>") from exc
        raise StllrError(f"{self.cache_dir}: cannot write the frame cache entry {self.name} "
                         f"({exc.strerror or exc}); the partial entry was removed: pass "
                         "cache_dir=<a writable folder>") from exc


class _FrameFile:
    """``frames.npy`` written row by row with ordinary writes.

    A memory-mapped write to a full disk kills the process with SIGBUS; a write()
    fails with ENOSPC, which can be reported and cleaned up.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: type) -> None:
        self.path, self.shape, self.dtype, self.rows = path, shape, np.dtype(dtype), 0
        self.file: IO[bytes] = open(path, "wb")
        _write_header(self.file, shape, self.dtype)

    def append(self, counts: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(counts, dtype=self.dtype).data)
        self.rows += 1

    def widen(self, dtype: type) -> None:
        """Rewrite the rows so far as ``dtype``; rare, so a copy is fine."""
        self.file.close()
        wider_path = self.path.with_suffix(".wider.npy")
        row_values = math.prod(self.shape[1:])
        with open(self.path, "rb") as src, open(wider_path, "wb") as dst:
            np.lib.format.read_magic(src)
            np.lib.format.read_array_header_1_0(src)
            _write_header(dst, self.shape, np.dtype(dtype))
            for start in range(0, self.rows, _COPY_ROWS):
                count = min(_COPY_ROWS, self.rows - start) * row_values
                block = np.frombuffer(src.read(count * self.dtype.itemsize), self.dtype)
                dst.write(block.astype(dtype).data)
        os.replace(wider_path, self.path)
        self.dtype = np.dtype(dtype)
        self.file = open(self.path, "ab")

    def close(self) -> None:
        self.file.close()


def _write_header(file: IO[bytes], shape: tuple[int, ...], dtype: np.dtype) -> None:
    np.lib.format.write_array_header_1_0(file, {
        "descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})


def _write_entry(
    folder: Path,
    meta: dict[str, Any],
    n_samples: int,
    frame_shape: tuple[int, ...],
    samples: Iterator[tuple[np.ndarray, int]],
    guard: contextlib.AbstractContextManager[None],
) -> None:
    level = 0
    labels = np.empty(n_samples, dtype=np.int64)
    with guard:
        frames = _FrameFile(folder / "frames.npy", (n_samples, *frame_shape), _DTYPES[level])
    try:
        count = 0
        for i, (counts, label) in enumerate(samples):  # produce's own errors pass through
            top = int(counts.max()) if counts.size else 0
            with guard:
                while top > np.iinfo(_DTYPES[level]).max:
                    level += 1
                    frames.widen(_DTYPES[level])
                frames.append(counts)
            labels[i] = label
            count = i + 1
        if count != n_samples:
            raise RuntimeError(f"expected {n_samples} samples, got {count}")
    except BaseException:
        with contextlib.suppress(OSError):  # the first error is the one to report
            frames.close()
        raise
    with guard:
        frames.close()
    meta = {**meta, "format": FORMAT_VERSION, "dtype": np.dtype(_DTYPES[level]).name,
            "n_samples": n_samples, "frame_shape": list(frame_shape)}
    with guard:
        np.save(folder / "labels.npy", labels)
        (folder / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True,
                                                     default=str))
        for name in ("frames.npy", "labels.npy", "meta.json"):
            _fsync(folder / name)
        _fsync(folder)


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
