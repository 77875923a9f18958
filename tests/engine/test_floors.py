"""Floors per task (chance, a linear read-out on the input frames): figures on the embedded
tasks, the runs' own split, determinism, labels independent of the inputs at chance, the
streaming fit, and floors.json."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from stllr_engine.experiment import ExperimentConfig, load_data
from stllr_engine.floors import (FLOORS_FILE, fit_linear_readout, fit_linear_readout_streaming, measure_floors,
                                 read_floors, write_floors)

NET = {"kind": "mlp", "width": 16}
SMALL = {"T": 12, "channels": 8, "samples_per_class": 24}


def _small(seed: int = 0, **data) -> ExperimentConfig:
    return ExperimentConfig.for_dataset("synthetic_temporal", SMALL, network=NET,
                                        data={"batch_size": 16, "val_fraction": 0.25, **data},
                                        runtime={"threads": 1}, seed=seed)


def _figures(f: dict) -> dict:
    return {k: v for k, v in f.items() if k != "time_s"}


@pytest.fixture(scope="module")
def digits():
    cfg = ExperimentConfig.for_dataset("digits", {"T": 16}, network=NET, seed=0)
    return cfg, measure_floors(cfg)


def test_digits_linear_readout_is_high_and_chance_is_a_tenth(digits):
    cfg, f = digits
    assert f["dataset"] == "digits" and f["options"]["T"] == 16 and f["seed"] == 0
    assert f["uniform_chance"] == 0.1 and f["num_classes"] == 10
    assert abs(f["chance"] - 0.1) < 0.01  # 37 of 360 test digits are the majority training class
    lin = f["linear_readout"]
    # float32 L-BFGS on one thread, measured: train 1.0, val 0.917, test 0.861 (l2 = 1e-4)
    assert lin["test_accuracy"] >= 0.83 and lin["val_accuracy"] >= 0.88 and lin["train_accuracy"] >= 0.99
    assert lin["l2"] in (1e-4, 1e-3, 1e-2, 1e-1, 1.0) and lin["selected_on"] == "val"
    assert [g["l2"] for g in lin["grid"]] == [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    assert max(g["val_accuracy"] for g in lin["grid"]) == lin["val_accuracy"]
    assert f["count_readout"]["test_accuracy"] >= 0.8  # each pixel fires once: counts are the binary image
    assert f["features"] == "input frames flattened (T x C = 16 x 64 = 1024)"
    assert "L-BFGS" in f["method"] and f["note"] is None
    assert json.loads(json.dumps(f)) == f  # plain JSON
    print(f"\ndigits T=16 floors: chance {f['chance']:.3f}, linear {lin['test_accuracy']:.3f}, "
          f"{f['time_s']:.2f} s")


def test_the_split_is_load_datas(digits):
    cfg, f = digits
    train, val, test = load_data(cfg)
    assert (f["n_train"], f["n_val"], f["n_test"]) == (len(train.dataset), len(val.dataset), len(test.dataset))
    assert (f["n_train"], f["n_val"], f["n_test"]) == (1293, 144, 360)
    y_train = torch.cat([y for _, y in train]).numpy()
    y_test = torch.cat([y for _, y in test]).numpy()
    majority = int(np.argmax(np.bincount(y_train, minlength=10)))
    assert f["majority_class"] == majority and f["chance"] == float(np.mean(y_test == majority))


def test_timing_task_frames_are_linear_counts_are_at_chance():
    """synthetic_temporal: only *when* a channel fires tells the classes apart."""
    for options, classes in (({}, 4), ({"T": 40, "channels": 32, "num_classes": 8}, 8)):
        cfg = ExperimentConfig.for_dataset("synthetic_temporal", options, network=NET, seed=0)
        f = measure_floors(cfg)
        assert f["uniform_chance"] == 1 / classes and f["chance"] <= 1 / classes + 0.05
        assert f["linear_readout"]["test_accuracy"] >= 0.95  # measured 1.0 for both
        assert f["count_readout"]["test_accuracy"] <= 1 / classes + 0.15  # measured 0.24 and 0.07
        assert f["features"] == "input frames flattened (T x C = 40 x 32 = 1280)"
        print(f"\nsynthetic_temporal {options}: chance {f['chance']:.3f}, linear "
              f"{f['linear_readout']['test_accuracy']:.3f}, counts {f['count_readout']['test_accuracy']:.3f}, "
              f"{f['time_s']:.2f} s")


def test_the_same_seed_gives_the_same_figures_and_the_seed_argument_is_that_seeds_split():
    a, b = measure_floors(_small(1)), measure_floors(_small(1))
    assert _figures(a) == _figures(b)
    via_argument = measure_floors(_small(0), seed=1)
    assert _figures(via_argument) == _figures(a) and via_argument["seed"] == 1
    other = measure_floors(_small(2))
    assert other["n_val"] == a["n_val"] and _figures(other) != _figures(a)


def test_labels_independent_of_the_inputs_are_read_out_at_chance():
    g = torch.Generator().manual_seed(0)

    def split(n):
        return torch.randn(n, 40, generator=g), torch.randint(0, 4, (n,), generator=g)

    r = fit_linear_readout(split(600), split(200), split(2000), num_classes=4)
    assert abs(r["test_accuracy"] - 0.25) < 0.04  # 4 standard errors of 2000 coin flips
    # ... while labels that are a linear function of the inputs are read out
    x = torch.randn(800, 40, generator=g)
    y = (x[:, :4] @ torch.randn(4, 3, generator=g)).argmax(1)
    r = fit_linear_readout((x[:500], y[:500]), (x[500:600], y[500:600]), (x[600:], y[600:]))
    assert r["test_accuracy"] >= 0.9


def test_without_a_validation_split_the_penalty_is_picked_on_train():
    f = measure_floors(_small(0, val_fraction=0.0))
    assert f["n_val"] == 0 and f["linear_readout"]["selected_on"] == "train"
    assert f["linear_readout"]["val_accuracy"] is None and "picked on training accuracy" in f["note"]
    assert "by training accuracy" in f["method"]
    x, y = torch.randn(30, 5), torch.arange(30) % 3
    r = fit_linear_readout((x, y), None, None, l2_grid=[0.1])
    assert r["selected_on"] == "train" and r["test_accuracy"] is None and r["l2"] == 0.1


def test_streaming_fit_when_the_frames_do_not_fit():
    cfg = _small(0)
    f = measure_floors(cfg, max_bytes=0)
    assert "Adam" in f["method"]
    assert f["linear_readout"]["test_accuracy"] >= 0.9 and f["linear_readout"]["selected_on"] == "val"
    assert f["count_readout"]["test_accuracy"] <= 0.5
    assert _figures(measure_floors(cfg, max_bytes=0)) == _figures(f)
    full = measure_floors(cfg)
    assert (full["n_train"], full["n_val"], full["n_test"]) == (f["n_train"], f["n_val"], f["n_test"])
    assert full["chance"] == f["chance"]
    train, val, test = load_data(cfg)
    r = fit_linear_readout_streaming(train, val, test, num_classes=4, l2_grid=[1e-3], epochs=2)
    assert r["l2"] == 1e-3 and 0.0 <= r["test_accuracy"] <= 1.0


def test_floors_file_round_trip_and_damage(tmp_path):
    floors = {"dataset": "digits", "chance": 0.1, "linear_readout": {"test_accuracy": 0.86, "l2": 1e-4},
              "note": None}
    folder = tmp_path / "study"
    assert read_floors(folder) is None  # absent
    path = write_floors(folder, floors)
    assert path == os.path.join(folder, FLOORS_FILE) and read_floors(folder) == floors
    assert os.listdir(folder) == [FLOORS_FILE]  # no temporary file left
    write_floors(folder, {**floors, "chance": 0.2})
    assert read_floors(folder)["chance"] == 0.2
    for damage in (b'{"dataset": "digits", "chance": 0.', b"\xff\xfe", b"[1, 2]", b'{"x": 1}', b""):
        (folder / FLOORS_FILE).write_bytes(damage)
        assert read_floors(folder) is None
