"""The embedded datasets: synthetic_temporal (timing-only task) and latency-coded digits."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from stllr_engine.datasets import FrameDataset, load_dataset
from stllr_engine.datasets.digits import latency_code
from stllr_engine.datasets.synthetic_temporal import class_spike_times


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """sklearn and torch each bring an OpenMP runtime; on a busy 2-core machine
    their spinning worker threads slowed these small fits 10x.  One thread each."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(previous)


def _arrays(ds: FrameDataset) -> tuple[np.ndarray, np.ndarray]:
    samples = ds.__getitems__(list(range(len(ds))))
    return np.stack([x.numpy() for x, _ in samples]), np.array([y for _, y in samples])


def test_synthetic_classes_share_per_channel_spike_counts() -> None:
    train, _ = load_dataset("synthetic_temporal", noise=0.0, jitter=2.0, num_classes=5)
    frames, labels = _arrays(train)
    counts = frames.sum(axis=1)  # [N, channels]
    assert np.all(counts == 1)  # exactly one spike per channel in every sample
    totals = np.stack([counts[labels == k].sum(axis=0) for k in range(5)])
    assert np.all(totals == totals[0])
    assert np.all(np.bincount(labels) == 100)


def test_synthetic_class_orders_are_permutations_of_one_set_of_times() -> None:
    times = class_spike_times(channels=12, T=30, num_classes=4, seed=3)
    assert times.shape == (4, 12)
    for row in times:
        np.testing.assert_array_equal(np.sort(row), np.sort(times[0]))
    assert len({tuple(row) for row in times}) == 4


def test_synthetic_is_seeded() -> None:
    a, _ = load_dataset("synthetic_temporal", seed=5, samples_per_class=3)
    b, _ = load_dataset("synthetic_temporal", seed=5, samples_per_class=3)
    c, _ = load_dataset("synthetic_temporal", seed=6, samples_per_class=3)
    assert np.array_equal(_arrays(a)[0], _arrays(b)[0])
    assert not np.array_equal(_arrays(a)[0], _arrays(c)[0])


def test_synthetic_needs_timing_counts_alone_are_at_chance() -> None:
    train, test = load_dataset("synthetic_temporal")
    (x_train, y_train), (x_test, y_test) = _arrays(train), _arrays(test)
    flat = LogisticRegression(max_iter=300).fit(x_train.reshape(len(x_train), -1), y_train)
    assert flat.score(x_test.reshape(len(x_test), -1), y_test) > 0.9
    counts = LogisticRegression(max_iter=300).fit(x_train.sum(1), y_train)
    assert counts.score(x_test.sum(1), y_test) < 0.45  # 4 classes: chance is 0.25


def test_synthetic_is_learned_by_a_leaky_integrator_readout() -> None:
    """A one-layer SNN readout, v_t = 0.9 v_{t-1} + W x_t, trained on its last v."""
    torch.manual_seed(0)
    train, test = load_dataset("synthetic_temporal")
    (x_train, y_train), (x_test, y_test) = _arrays(train), _arrays(test)
    weights = torch.nn.Linear(x_train.shape[2], 4)
    optimizer = torch.optim.Adam(weights.parameters(), lr=0.05)

    def readout(x: np.ndarray) -> torch.Tensor:
        v = torch.zeros(len(x), 4)
        for t in range(x.shape[1]):
            v = 0.9 * v + weights(torch.from_numpy(x[:, t]))
        return v

    for _ in range(60):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(readout(x_train), torch.from_numpy(y_train))
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (readout(x_test).argmax(1).numpy() == y_test).mean()
    assert accuracy > 0.8


def test_digits_latency_code_brighter_fires_earlier_once() -> None:
    from sklearn.datasets import load_digits

    images, _ = load_digits(return_X_y=True)
    frames = latency_code(images[:200], T=16)
    assert frames.shape == (200, 16, 64)
    spikes = frames.sum(axis=1)
    np.testing.assert_array_equal(spikes, (images[:200] > 0).astype(int))  # once, zeros never
    first = np.where(spikes > 0, frames.argmax(axis=1), 99)
    for image, when in zip(images[:200], first, strict=True):
        lit = image > 0
        order = np.argsort(-image[lit], kind="stable")
        assert np.all(np.diff(when[lit][order]) >= 0)  # brighter -> earlier or same bin
    assert first[images[:200] == 16].max() == 0
    assert latency_code(np.array([[1.0]]), 16)[0, :, 0].argmax() == 14  # round(15/16 * 15)


def test_digits_split_is_stratified_and_seeded() -> None:
    train, test = load_dataset("digits", T=10)
    assert (len(train), len(test)) == (1437, 360)
    assert train.info.input_shape == (64,) and train[0][0].shape == (10, 64)
    share = np.bincount(test.labels, minlength=10) / np.bincount(train.labels, minlength=10)
    assert np.allclose(share, 0.25, atol=0.03)
    again, _ = load_dataset("digits", T=10)
    other, _ = load_dataset("digits", T=10, seed=1)
    assert np.array_equal(train.labels, again.labels)
    assert not np.array_equal(train.labels, other.labels)


# -- the timing task as a family (issue #17 item 2): order dial, shift, instances --------------


def test_the_dials_at_their_defaults_give_the_original_samples_bit_for_bit() -> None:
    import hashlib

    h = hashlib.sha256()
    for kw in ({}, {"seed": 3, "T": 12, "channels": 8, "samples_per_class": 24}):
        for split in load_dataset("synthetic_temporal", **kw):
            x, y = _arrays(split)
            for i in range(len(y)):
                h.update(x[i].astype(np.float32).tobytes())
                h.update(str(int(y[i])).encode())
    # the samples of the generator before order/shift existed (its published findings used them)
    assert h.hexdigest() == "f02d5a81e1d979b939e26d9bb1da316a6ff0e9b7efaca26bd1b577252ebcdd53"


@pytest.mark.parametrize("order", [0.0, 0.5, 1.0])
def test_every_class_has_the_same_expected_spikes_at_every_order(order: float) -> None:
    train, _ = load_dataset("synthetic_temporal", order=order, noise=0.0, samples_per_class=400)
    frames, labels = _arrays(train)
    per_class = np.array([frames[labels == k].sum((1, 2)).mean() for k in range(4)])
    # timed spikes kept with p = order (32 of them) plus Poisson rate spikes with mean (1 - order) * 32;
    # a rate spike on an occupied cell merges with it, so slightly fewer than 32
    assert np.all(np.abs(per_class - 32) < 1.5), per_class
    assert per_class.max() - per_class.min() < 1.0


def test_order_zero_is_a_pure_rate_code() -> None:
    from stllr_engine.datasets.synthetic_temporal import class_rate_profiles

    train, _ = load_dataset("synthetic_temporal", order=0.0, noise=0.0, samples_per_class=600, seed=4)
    frames, labels = _arrays(train)
    profiles = class_rate_profiles(32, 4, 4)
    for k in range(4):
        counts = frames[labels == k].sum(1).mean(0)  # per channel
        assert np.corrcoef(counts, profiles[k])[0, 1] > 0.95  # the class's own rates
        # timing carries nothing: every channel's spikes spread evenly over the window
        t = np.nonzero(frames[labels == k])[1]
        assert abs(t.mean() - 19.5) < 0.6 and abs(t.std() - np.sqrt((40**2 - 1) / 12)) < 0.6


def test_a_shift_moves_each_samples_spikes_together_and_clips_none() -> None:
    T, shift = 40, 10
    times = class_spike_times(32, T, 4, 0, shift)
    assert times.min() == shift and times.max() == T - 1 - shift
    train, _ = load_dataset("synthetic_temporal", shift=shift, jitter=0.0, noise=0.0, samples_per_class=50)
    frames, labels = _arrays(train)
    offsets = set()
    for x, k in zip(frames, labels):
        t = x.argmax(0)  # each channel's one spike
        d = t - times[k]
        assert np.all(d == d[0])  # relative order kept exactly
        offsets.add(int(d[0]))
    assert offsets <= set(range(-shift, shift + 1)) and len(offsets) > 10


@pytest.mark.parametrize("params,message", [
    ({"order": 1.5}, "order=1.5 must be a number in [0.0, 1.0]"),
    ({"shift": 20}, "shift=20 leaves no room"),
    ({"shift": -1}, "shift=-1 must be an integer >= 0"),
    ({"order": 0.5, "rate_spikes": 0}, "set rate_spikes > 0"),
])
def test_bad_dials_are_one_line_errors(params, message) -> None:
    from stllr_engine.errors import StllrError

    with pytest.raises(StllrError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")) as err:
        load_dataset("synthetic_temporal", **params)
    assert "\n" not in str(err.value)


def test_the_floors_follow_the_dial() -> None:
    """Counts solve the rate end and sit near chance at the order end; the frames' linear
    read-out solves the order end unshifted (the task's known weakness) and a wide shift
    takes most of that away. Three task instances each."""
    from stllr_engine.experiment import ExperimentConfig
    from stllr_engine.floors import measure_floors

    def floors(**options):
        out = []
        for seed in (0, 1, 2):
            cfg = ExperimentConfig.for_dataset("synthetic_temporal", {**options, "seed": seed},
                                               network={"kind": "mlp", "width": 8}, data={"val_fraction": 0.2})
            f = measure_floors(cfg)
            out.append((f["linear_readout"]["test_accuracy"], f["count_readout"]["test_accuracy"]))
        return np.array(out)

    rate, order, shifted = floors(order=0.0), floors(order=1.0), floors(order=1.0, shift=16, channels=8)
    assert rate[:, 1].min() >= 0.75
    assert order[:, 1].max() <= 0.4 and order[:, 0].min() >= 0.95
    assert shifted[:, 0].max() <= 0.6 and shifted[:, 1].max() <= 0.45
