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
                            "test_samples_per_class": 25, "seed": 0}


def validate(params: dict[str, Any]) -> dict[str, Any]:
    """Check the knobs; return them normalised."""
    out = dict(params)
    for key, minimum in (("channels", 2), ("T", 2), ("num_classes", 2),
                         ("samples_per_class", 1), ("test_samples_per_class", 1)):
        out[key] = _params.positive_int(NAME, key, params[key], minimum)
    out["jitter"] = _params.real_in(NAME, "jitter", params["jitter"], 0.0, float(out["T"]))
    out["noise"] = _params.real_in(NAME, "noise", params["noise"], 0.0, 1.0, high_open=True)
    out["seed"] = _params.any_int(NAME, "seed", params["seed"])
    return out


def class_spike_times(channels: int, T: int, num_classes: int, seed: int) -> np.ndarray:
    """Noise-free spike bin of each channel for each class, ``[num_classes, channels]``.

    Every row is a permutation of the same shared times; rows are distinct.
    """
    rng = np.random.default_rng(seed)
    shared = np.rint(np.linspace(0, T - 1, channels)).astype(np.int64)
    rows: list[np.ndarray] = []
    for _ in range(100 * num_classes):
        row = shared[rng.permutation(channels)]
        if not any(np.array_equal(row, other) for other in rows):
            rows.append(row)
        if len(rows) == num_classes:
            return np.stack(rows)
    raise StllrError(f"dataset {NAME!r}: cannot make {num_classes} distinct spike orders from "
                     f"{channels} channels over T={T}; use more channels or a longer T")


def _draw(times: np.ndarray, n_per_class: int, T: int, jitter: float, noise: float,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    num_classes, channels = times.shape
    labels = np.tile(np.arange(num_classes), n_per_class)
    n = len(labels)
    spikes = times[labels] + np.rint(rng.normal(0.0, jitter, (n, channels))).astype(np.int64)
    spikes = np.clip(spikes, 0, T - 1)
    frames = np.zeros((n, T, channels), dtype=np.uint8)
    frames[np.arange(n)[:, None], spikes, np.arange(channels)[None, :]] = 1
    if noise > 0:
        frames |= (rng.random((n, T, channels)) < noise).astype(np.uint8)
    return frames, labels


def load(params: dict[str, Any]) -> tuple[FrameDataset, FrameDataset]:
    """Generate the train and test splits from validated ``params``."""
    p = params
    times = class_spike_times(p["channels"], p["T"], p["num_classes"], p["seed"])
    pair = []
    for stream, (split, n) in enumerate((("train", p["samples_per_class"]),
                                         ("test", p["test_samples_per_class"])), start=1):
        rng = np.random.default_rng([p["seed"], stream])
        frames, labels = _draw(times, n, p["T"], p["jitter"], p["noise"], rng)
        info = DatasetInfo(name=NAME, split=split, input_shape=(p["channels"],),
                           num_classes=p["num_classes"], T=p["T"], params=dict(p))
        pair.append(FrameDataset(frames, labels, info))
    return pair[0], pair[1]
