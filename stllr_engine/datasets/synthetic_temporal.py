"""A seeded toy task that only a model using spike *timing* can solve.

Every sample has exactly one spike per input channel (plus optional noise), at
times taken from one shared set :math:`\\{\\tau_1, \\dots, \\tau_C\\}` evenly spread
over ``0 .. T-1``.  Class :math:`k` assigns those times to channels by its own
permutation :math:`\\pi_k`, then each spike is shifted by
:math:`\\mathrm{round}(\\mathcal{N}(0, \\text{jitter}^2))` bins (clipped to the window):

.. math::

    t_c = \\mathrm{clip}(\\tau_{\\pi_k(c)} + \\epsilon_c, 0, T - 1).

So per-channel spike counts (and the population count per time step, before
jitter) are identical across classes; only which channel fires when differs.
``noise`` adds class-independent spikes, each (t, channel) cell firing with that
probability.  A leaky-integrator readout or a small SNN separates the classes;
any model of spike counts alone stays at chance.

A family of tasks (issue #17 item 2), by two dials and the seed:

* ``order`` (default 1, the task above): the fraction of the class signal carried by
  spike order. Each timed spike is kept with probability ``order``; besides, channel
  ``c`` of class ``k`` fires Poisson(``(1 − order) · rate_spikes · w_k(c)``) spikes at
  uniformly random times, with ``w_k`` the class's own permutation of one shared profile
  (0.2 … 1.8, mean 1). So at ``order = 0`` the classes differ only in per-channel rates
  (a read-out of spike counts solves it; timing carries nothing), at ``order = 1`` only
  in spike order (counts are identical across classes), and in between in both. The
  expected spikes per sample are the same for every class at every setting.
* ``shift`` (default 0): every sample's timed spikes move together by a uniform random
  whole number of bins in ``[−shift, shift]`` (the shared times then span
  ``shift … T−1−shift``, so nothing is clipped): only *relative* order identifies a class,
  and a read-out of absolute (time, channel) cells — a linear model of the frames — loses
  ground, while a network with memory need not.
* ``seed``: the task instance (class permutations and profiles); the samples' streams
  derive from it.

With ``order = 1`` and ``shift = 0`` the samples are bit for bit those of the task before
the dials existed.

Output: 0/1 float frames ``[T, channels]``; samples interleave the classes
(0, 1, ..., K-1, 0, 1, ...).  Train and test are drawn from independent streams
of the same seed and share the class permutations.  No files are used.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stllr_engine.datasets import _params
from stllr_engine.datasets._base import DatasetInfo, FrameDataset
from stllr_engine.errors import StllrError

NAME = "synthetic_temporal"
DEFAULTS: dict[str, Any] = {"channels": 32, "T": 40, "num_classes": 4, "jitter": 1.0,
                            "noise": 0.005, "samples_per_class": 100,
                            "test_samples_per_class": 25, "seed": 0,
                            "order": 1.0, "shift": 0, "rate_spikes": 1.0}


def validate(params: dict[str, Any]) -> dict[str, Any]:
    """Check the knobs; return them normalised."""
    out = dict(params)
    for key, minimum in (("channels", 2), ("T", 2), ("num_classes", 2),
                         ("samples_per_class", 1), ("test_samples_per_class", 1)):
        out[key] = _params.positive_int(NAME, key, params[key], minimum)
    out["jitter"] = _params.real_in(NAME, "jitter", params["jitter"], 0.0, float(out["T"]))
    out["noise"] = _params.real_in(NAME, "noise", params["noise"], 0.0, 1.0, high_open=True)
    out["seed"] = _params.any_int(NAME, "seed", params["seed"])
    out["order"] = _params.real_in(NAME, "order", params["order"], 0.0, 1.0)
    out["rate_spikes"] = _params.real_in(NAME, "rate_spikes", params["rate_spikes"], 0.0, 100.0)
    out["shift"] = _params.positive_int(NAME, "shift", params["shift"], 0)
    if 2 * out["shift"] >= out["T"] - 1:
        raise StllrError(f"dataset {NAME!r}: shift={out['shift']} leaves no room for the spike times in "
                         f"T={out['T']} (need 2*shift < T-1): use a smaller shift or a longer T")
    if out["order"] < 1.0 and out["rate_spikes"] == 0.0:
        raise StllrError(f"dataset {NAME!r}: order={out['order']} < 1 with rate_spikes=0 removes part of the "
                         "class signal and puts nothing in its place: set rate_spikes > 0")
    return out


def class_spike_times(channels: int, T: int, num_classes: int, seed: int, shift: int = 0) -> np.ndarray:
    """Noise-free spike bin of each channel for each class, ``[num_classes, channels]``.

    Every row is a permutation of the same shared times (``shift … T−1−shift``); rows are distinct.
    """
    rng = np.random.default_rng(seed)
    shared = np.rint(np.linspace(shift, T - 1 - shift, channels)).astype(np.int64)
    rows: list[np.ndarray] = []
    for _ in range(100 * num_classes):
        row = shared[rng.permutation(channels)]
        if not any(np.array_equal(row, other) for other in rows):
            rows.append(row)
        if len(rows) == num_classes:
            return np.stack(rows)
    raise StllrError(f"dataset {NAME!r}: cannot make {num_classes} distinct spike orders from "
                     f"{channels} channels over T={T}; use more channels or a longer T")


def class_rate_profiles(channels: int, num_classes: int, seed: int) -> np.ndarray:
    """Each class's channel weights ``[num_classes, channels]`` (mean 1): one shared profile
    ``0.2 … 1.8``, permuted per class (rows distinct where the channels allow)."""
    rng = np.random.default_rng([seed, 7])
    shared = np.linspace(0.2, 1.8, channels)
    return np.stack([shared[rng.permutation(channels)] for _ in range(num_classes)])


def _draw(times: np.ndarray, n_per_class: int, T: int, jitter: float, noise: float,
          rng: np.random.Generator, order: float = 1.0, shift: int = 0, rates: np.ndarray | None = None,
          rate_spikes: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    num_classes, channels = times.shape
    labels = np.tile(np.arange(num_classes), n_per_class)
    n = len(labels)
    spikes = times[labels] + np.rint(rng.normal(0.0, jitter, (n, channels))).astype(np.int64)
    if shift:
        spikes = spikes + rng.integers(-shift, shift + 1, (n, 1))
    spikes = np.clip(spikes, 0, T - 1)
    frames = np.zeros((n, T, channels), dtype=np.uint8)
    if order < 1.0:  # drawn after the draws above: order = 1 keeps the original samples bit for bit
        keep = rng.random((n, channels)) < order
        rows, cols = np.nonzero(keep)
        frames[rows, spikes[rows, cols], cols] = 1
        assert rates is not None
        counts = rng.poisson((1.0 - order) * rate_spikes * rates[labels])  # [n, channels]
        sample = np.repeat(np.arange(n), counts.sum(1))
        channel = np.concatenate([np.repeat(np.arange(channels), c) for c in counts]) if n else np.zeros(0, int)
        frames[sample, rng.integers(0, T, len(sample)), channel] = 1
    else:
        frames[np.arange(n)[:, None], spikes, np.arange(channels)[None, :]] = 1
    if noise > 0:
        frames |= (rng.random((n, T, channels)) < noise).astype(np.uint8)
    return frames, labels


def load(params: dict[str, Any]) -> tuple[FrameDataset, FrameDataset]:
    """Generate the train and test splits from validated ``params``."""
    p = {**DEFAULTS, **params}
    times = class_spike_times(p["channels"], p["T"], p["num_classes"], p["seed"], p["shift"])
    rates = class_rate_profiles(p["channels"], p["num_classes"], p["seed"]) if p["order"] < 1.0 else None
    pair = []
    for stream, (split, n) in enumerate((("train", p["samples_per_class"]),
                                         ("test", p["test_samples_per_class"])), start=1):
        rng = np.random.default_rng([p["seed"], stream])
        frames, labels = _draw(times, n, p["T"], p["jitter"], p["noise"], rng, p["order"], p["shift"], rates,
                               p["rate_spikes"])
        info = DatasetInfo(name=NAME, split=split, input_shape=(p["channels"],),
                           num_classes=p["num_classes"], T=p["T"], params=dict(p))
        pair.append(FrameDataset(frames, labels, info))
    return pair[0], pair[1]
