"""scikit-learn's 8 x 8 handwritten digits as latency-coded spike trains.

The images come with scikit-learn (``sklearn.datasets.load_digits``: 1797
images, pixel values 0..16; nothing is downloaded).  Each pixel fires at most
once, brighter pixels earlier:

.. math::

    t(v) = \\mathrm{round}\\Big(\\big(1 - \\tfrac{v}{16}\\big)(T - 1)\\Big), \\qquad v > 0,

so ``v = 16`` fires in bin 0 and ``v = 1`` near the end; ``v = 0`` never fires.

Output: 0/1 float frames ``[T, 64]`` (row-major pixels), or ``[T, 1, 8, 8]`` with
``image: true`` (for a convolutional network), labels 0..9.  The split
is sklearn's ``train_test_split`` stratified by label with ``random_state=seed``
(default 80 % train / 20 % test).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stllr_engine.datasets import _params
from stllr_engine.datasets._base import DatasetInfo, FrameDataset

NAME = "digits"
DEFAULTS: dict[str, Any] = {"T": 16, "test_fraction": 0.2, "seed": 0, "image": False}
MAX_VALUE = 16


def validate(params: dict[str, Any]) -> dict[str, Any]:
    """Check the knobs; return them normalised."""
    return {
        "T": _params.positive_int(NAME, "T", params["T"]),
        "test_fraction": _params.real_in(NAME, "test_fraction", params["test_fraction"],
                                         0.05, 0.95),
        "seed": _params.any_int(NAME, "seed", params["seed"]),
        "image": _flag("image", params["image"]),
    }


def _flag(name: str, value: Any) -> bool:
    from stllr_engine.errors import StllrError

    if not isinstance(value, (bool, np.bool_)):
        raise StllrError(f"dataset {NAME!r}: {name}={value!r} must be true or false")
    return bool(value)


def latency_code(images: np.ndarray, T: int) -> np.ndarray:
    """Spike frames ``[N, T, P]`` (uint8) from pixel values ``[N, P]`` in 0..16.

    >>> latency_code(np.array([[16, 8, 0]]), 5)[0].tolist()
    [[1, 0, 0], [0, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0]]
    """
    n, pixels = images.shape
    values = np.asarray(images, dtype=np.float64)
    bins = np.rint((1.0 - values / MAX_VALUE) * (T - 1)).astype(np.int64)
    frames = np.zeros((n, T, pixels), dtype=np.uint8)
    sample, pixel = np.nonzero(values > 0)
    frames[sample, bins[sample, pixel], pixel] = 1
    return frames


def load(params: dict[str, Any]) -> tuple[FrameDataset, FrameDataset]:
    """Build the train and test splits from validated ``params``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images, labels = load_digits(return_X_y=True)
    index = np.arange(len(labels))
    train_idx, test_idx = train_test_split(index, test_size=params["test_fraction"],
                                           stratify=labels, random_state=params["seed"])
    frames = latency_code(images, params["T"])
    shape: tuple[int, ...] = (images.shape[1],)
    if params["image"]:  # one channel of 8 x 8 pixels
        shape = (1, 8, 8)
        frames = frames.reshape(len(frames), params["T"], *shape)
    pair = []
    for split, idx in (("train", train_idx), ("test", test_idx)):
        info = DatasetInfo(name=NAME, split=split, input_shape=shape,
                           num_classes=10, T=params["T"], params=dict(params))
        pair.append(FrameDataset(frames[idx], labels[idx], info))
    return pair[0], pair[1]
