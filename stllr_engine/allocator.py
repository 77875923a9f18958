"""The CPU allocator's settings for training: keep freed memory for reuse (glibc).

A training step allocates and frees the same large temporaries every step (a pack's window
records: ``[K, L, B, n]``, megabytes each). glibc's malloc serves blocks above its mmap
threshold (dynamic, from 128 KiB) straight from the kernel and returns freed memory at the
top of its heap once more than the trim threshold is free, so every step page-faults its
temporaries in again. :func:`keep_freed_memory` raises both (``mallopt``: blocks up to
32 MiB from the heap, the heap's free top kept up to 1 GiB): on this project's 2-core
machine a pack step of 15 digits-size S-TLLR members went from 57 ms to 28 ms, and the SHD
net's BPTT step from 0.31 s to 0.25 s (``stllr bench packs`` and ``stllr bench engine``
measure it). Numbers are unchanged: only where memory comes from changes; the process keeps
up to 1 GiB of freed memory for reuse.

:meth:`stllr_engine.experiment.RuntimeConfig.apply` calls it (every run and pack of a
sweep, ``stllr train``), and so do the benchmarks. ``STLLR_KEEP_FREED_MEMORY=0`` in the
environment turns it off; on a C library without glibc's ``mallopt`` it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory", "TRIM_THRESHOLD", "MMAP_THRESHOLD"]

#: glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: free memory the heap's top keeps before returning it to the kernel
TRIM_THRESHOLD = 1 << 30
#: blocks up to this size come from the heap (glibc's largest allowed value on 64-bit: 32 MiB)
MMAP_THRESHOLD = 32 << 20

_state: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's trim and mmap thresholds once per process (module docstring); whether they are set.

    >>> keep_freed_memory() == keep_freed_memory()  # once per process, the same answer
    True
    """
    global _state
    if _state is not None:
        return _state
    _state = False
    if os.environ.get("STLLR_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return _state
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no such mallopt parameters)
        return _state
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _state = bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1)
    return _state
