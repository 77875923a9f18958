"""Event binning: a list of events becomes a stack of ``T`` count frames.

An event stream is a time array ``t`` (microseconds) and one integer array per
output axis (``(x,)`` for audio channels, ``(p, y, x)`` for a camera).  Bin
``k`` counts the events with

.. math::

    t_0 + k\\,\\Delta \\le t < t_0 + (k + 1)\\,\\Delta, \\qquad k = 0, \\dots, T - 1,

where :math:`t_0` is 0 (``t_start="zero"``, used for SHD whose times start at the
recording onset) or the first event's time (``t_start="first"``, the event
cameras, whose clocks do not start at 0).  With a fixed bin width :math:`\\Delta`
the window is :math:`T\\Delta` long and later events are dropped; with
``bin_us=None`` each sample is split into ``T`` equal-time bins spanning its own
first to last event, and the last event goes into bin ``T - 1``.

Each coordinate is downsampled by ``floor(c * out / sensor)`` (128 -> 32 merges
4x4 pixel blocks; 128 -> 48 merges 3 or 2 columns, as tonic's ``Downsample``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

TStart = Literal["zero", "first"]


def bin_events(
    t_us: np.ndarray,
    coords: tuple[np.ndarray, ...],
    sensor_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    T: int,
    bin_us: float | None,
    t_start: TStart,
) -> np.ndarray:
    """Count events per time bin and (downsampled) position.

    Args:
        t_us: Event times in microseconds, shape ``[n]``.
        coords: One integer array of shape ``[n]`` per axis of ``sensor_shape``.
        sensor_shape: Size of each axis on the sensor, e.g. ``(2, 128, 128)``.
        out_shape: Size of each axis in the frames, e.g. ``(2, 32, 32)``.
        T: Number of time bins.
        bin_us: Bin width in microseconds, or ``None`` for ``T`` equal bins over
            the sample's own duration.
        t_start: ``"zero"`` (bins start at t = 0) or ``"first"`` (at the first event).

    Returns:
        int64 counts of shape ``[T, *out_shape]``.

    Raises:
        ValueError: An event lies outside the sensor (the file is corrupt).

    >>> t = np.array([0, 15_000, 25_000, 99_000])
    >>> bin_events(t, (np.array([0, 1, 1, 2]),), (3,), (3,), 2, 10_000.0, "zero").tolist()
    [[1, 0, 0], [0, 1, 0]]
    """
    n_cells = int(np.prod(out_shape))
    if len(t_us) == 0:
        return np.zeros((T, *out_shape), dtype=np.int64)
    t = np.asarray(t_us, dtype=np.float64)
    t0 = float(t.min()) if t_start == "first" else 0.0
    if bin_us is None:
        width = (float(t.max()) - t0) / T
        if width > 0:
            k = np.minimum(np.floor((t - t0) / width), T - 1).astype(np.int64)
        else:
            k = np.zeros(len(t), dtype=np.int64)
    else:
        k = np.floor((t - t0) / bin_us).astype(np.int64)
    flat = k
    for c, size, out in zip(coords, sensor_shape, out_shape, strict=True):
        c = np.asarray(c, dtype=np.int64)
        if c.min() < 0 or c.max() >= size:
            raise ValueError(f"event coordinate outside 0..{size - 1}")
        flat = flat * out + (c * out) // size
    keep = (k >= 0) & (k < T)
    counts = np.bincount(flat[keep], minlength=T * n_cells)
    return counts.reshape(T, *out_shape)
