"""Optical-flow datasets: the embedded flow_synthetic task and MVSEC from tiny real-layout hdf5 files."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from stllr_engine.datasets import DATASETS, load_dataset, mvsec
from stllr_engine.datasets import flow_synthetic as fs
from stllr_engine.datasets._flow import FlowDataset
from stllr_engine.errors import StllrError
from stllr_engine.flow import warp

H, W = 260, 346

# ------------------------------------------------------------------ MVSEC fixtures (real hdf5 layout)

# (x, y, p) on the sensor; image_raw_event_inds = [-1, 7, 9]: pair 0 gets events 0..7, pair 1 events 8, 9
EVENTS = [(45, 2, 1), (300, 257, -1), (46, 3, 1), (10, 100, 1),       # former half of pair 0
          (100, 50, -1), (100, 50, -1), (345, 259, 1), (200, 200, 1),  # latter half of pair 0
          (60, 60, 1), (61, 61, -1)]                                    # pair 1
IMAGE_TS = [0.05, 0.10, 0.13]
GT_TS = [0.0, 0.1, 0.2]


def write_mvsec(folder: Path, sequence: str, events: list[tuple[int, int, int]] | None = None,
                drop: str | None = None, image_shape: tuple[int, int] = (H, W), flow: np.ndarray | None = None,
                gt_ts: list[float] | None = None) -> tuple[Path, Path]:
    """``<folder>/<sequence>_data.hdf5`` and ``_gt.hdf5`` as MVSEC ships them (3 images, 3 gt frames)."""
    folder.mkdir(parents=True, exist_ok=True)
    events = EVENTS if events is None else events
    ev = np.array([(x, y, 0.05 + 0.001 * k, p) for k, (x, y, p) in enumerate(events)], dtype=np.float64)
    ev = ev.reshape(-1, 4)
    ys, xs = np.mgrid[0:image_shape[0], 0:image_shape[1]]
    images = np.stack([(xs + ys + 50 * i) % 256 for i in range(3)]).astype(np.uint8)
    if flow is None:
        flow = np.zeros((3, 2, H, W), dtype=np.float32)
        flow[0, 0], flow[0, 1] = 2.0, -4.0
        flow[1, 0], flow[1, 1] = np.mgrid[0:H, 0:W][1], np.mgrid[0:H, 0:W][0]  # u = column, v = row
        flow[2] = np.nan
    data, gt = folder / f"{sequence}_data.hdf5", folder / f"{sequence}_gt.hdf5"
    fields = {"davis/left/events": ev, "davis/left/image_raw": images,
              "davis/left/image_raw_ts": np.array(IMAGE_TS), "davis/left/image_raw_event_inds": np.array([-1, 7, 9])}
    with h5py.File(data, "w") as f:
        for key, value in fields.items():
            if key != drop:
                f.create_dataset(key, data=value)
    with h5py.File(gt, "w") as f:
        gt_fields = {"davis/left/flow_dist": flow, "davis/left/flow_dist_ts": np.array(GT_TS if gt_ts is None else gt_ts)}
        for key, value in gt_fields.items():
            if key != drop:
                f.create_dataset(key, data=value)
    return data, gt


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for seq in ("seqA", "seqB", "seqC"):  # the same recording three times: test never reuses train's
        write_mvsec(tmp_path / "mvsec", seq)
    return tmp_path


def _mvsec(root: Path, **params: Any) -> tuple[FlowDataset, FlowDataset]:
    return load_dataset("mvsec", data_dir=root, **{"train": ["seqA"], "test": ["seqB", "seqC"], "T": 2, **params})


def test_mvsec_hand_placed_events_land_in_their_step_channel_and_pixel(root: Path) -> None:
    train, _ = _mvsec(root)
    assert len(train) == 2 and mvsec.crop_offsets(256) == (2, 45)
    frames, target = train[0]
    assert frames.shape == (2, 4, 256, 256) and frames.dtype == torch.float32
    want = torch.zeros_like(frames)
    want[0, 0, 0, 0] = 1        # event 0: former half, bin 0, ON, sensor (45, 2) -> crop (0, 0)
    want[0, 1, 255, 255] = 1    # event 1: former, bin 0, OFF, sensor (300, 257)
    want[1, 0, 1, 1] = 1        # event 2: former, bin 1, ON; event 3 (x=10) is outside the crop
    want[0, 3, 48, 55] = 2      # events 4, 5: latter, bin 0, OFF, sensor (100, 50)
    want[1, 2, 198, 155] = 1    # event 7: latter, bin 1, ON; event 6 (x=345) is outside
    assert torch.equal(frames, want)
    frames1, _ = train[1]       # two events: one per half, both in bin 0
    want1 = torch.zeros_like(frames1)
    want1[0, 0, 58, 15] = 1
    want1[0, 3, 59, 16] = 1
    assert torch.equal(frames1, want1)


def test_mvsec_target_layout_crop_and_gt_scaling(root: Path) -> None:
    train, _ = _mvsec(root)
    rows, cols = np.mgrid[0:256, 0:256]
    _, t0 = train[0]
    assert t0.shape == (4, 256, 256) and t0.dtype == torch.float32
    np.testing.assert_allclose(t0[0].numpy(), ((cols + 45 + rows + 2) % 256) / 255, rtol=1e-6)
    np.testing.assert_allclose(t0[1].numpy(), ((cols + 45 + rows + 2 + 50) % 256) / 255, rtol=1e-6)
    # [0.05, 0.10] lies in gt interval [0.0, 0.1) (one interval: the scaled flow): flow_dist[0] x 0.05 / 0.1
    np.testing.assert_allclose(t0[2].numpy(), 1.0)
    np.testing.assert_allclose(t0[3].numpy(), -2.0)
    _, t1 = train[1]            # [0.10, 0.13] in [0.1, 0.2): flow_dist[1] (u = sensor column) x 0.03 / 0.1
    # (points whose move ends off the sensor, x > 265, keep it: only sampling off the sensor is invalid)
    np.testing.assert_allclose(t1[2].numpy(), (cols + 45) * 0.3, rtol=1e-5)
    np.testing.assert_allclose(t1[3].numpy(), (rows + 2) * 0.3, rtol=1e-5)


# ------------------------------------------------------------------ MVSEC gt propagation


def _sensor_flow(u: Any, v: Any) -> np.ndarray:
    """One gt frame ``[2, H, W]``: ``u``, ``v`` constants or functions of the sensor (column, row)."""
    rows, cols = np.mgrid[0:H, 0:W].astype(np.float64)
    field = [f(cols, rows) if callable(f) else np.full((H, W), f) for f in (u, v)]
    return np.stack(field).astype(np.float32)


def _at(frames: list[np.ndarray], fractions: list[float], y: float, x: float) -> np.ndarray:
    return mvsec.propagate(frames, fractions, np.array([y]), np.array([x]))[:, 0]


def test_mvsec_one_interval_is_exactly_the_scaled_flow() -> None:
    rng = np.random.default_rng(0)
    gt = rng.normal(0, 3, (2, H, W)).astype(np.float32)
    gt[:, 10, 20] = np.nan
    gt[:, 30, 40] = 0.0
    rows, cols = np.mgrid[0:H, 0:W]
    for fraction in (0.5, 0.3, 1.0):
        out = mvsec.propagate([gt], [fraction], rows, cols)
        want = (gt.astype(np.float64) * fraction).astype(np.float32)
        want[:, 10, 20] = want[:, 30, 40] = 0.0        # not finite, no depth: unknown
        assert out.dtype == np.float32 and np.array_equal(out, want)   # every pixel, even one moved off the sensor
    # the pair table: [0.02, 0.07] inside [0.0, 0.1) -> interval 0 alone, fraction 0.5
    first, last = mvsec.gt_span(np.array([0.0, 0.1, 0.2]), np.array([0.02]), np.array([0.07]))
    assert (first[0], last[0]) == (0, 0)
    assert mvsec.overlap_fractions(np.array([0.0, 0.1, 0.2]), 0, 1, 0.02, 0.07) == pytest.approx([0.5])


def test_mvsec_two_intervals_of_constant_flow_add_up_by_overlap() -> None:
    gt_ts = np.array([0.0, 0.1, 0.3])
    first, last = mvsec.gt_span(gt_ts, np.array([0.075]), np.array([0.19]))
    assert (first[0], last[0]) == (0, 1)
    f = mvsec.overlap_fractions(gt_ts, 0, 2, 0.075, 0.19)
    assert f == pytest.approx([0.25, 0.45])
    a, b = (2.0, -1.0), (-0.5, 3.0)
    rows, cols = np.mgrid[100:110, 150:170]
    out = mvsec.propagate([_sensor_flow(*a), _sensor_flow(*b)], f, rows, cols)
    want = np.array(a) * 0.25 + np.array(b) * 0.45     # (0.275, 1.1)
    np.testing.assert_allclose(out, np.broadcast_to(want[:, None, None], out.shape), rtol=1e-6)


def test_mvsec_varying_flow_is_sampled_where_the_point_has_moved() -> None:
    first = _sensor_flow(3.0, 0.5)
    second = _sensor_flow(lambda x, y: 0.1 * x, lambda x, y: 0.02 * y + 1.0)
    # pixel (y, x) = (100, 50): halfway through the first interval it moves by (1.5, 0.25) to (100.25, 51.5);
    # the second interval's flow there (bilinear: exact for a linear field) is (5.15, 3.005), half of it added
    u, v = _at([first, second], [0.5, 0.5], 100, 50)
    assert u == pytest.approx(1.5 + 0.5 * 5.15, rel=1e-6)       # 4.075, not 1.5 + 0.5 * 5.0 sampled at x = 50
    assert v == pytest.approx(0.25 + 0.5 * 3.005, rel=1e-6)
    # bilinear between pixels of a non-linear field: u = x² sampled at 51.5 is (51² + 52²) / 2, not 51.5²
    square = _sensor_flow(lambda x, y: x * x, 1.0)
    assert _at([first, square], [0.5, 0.1], 100, 50)[0] == pytest.approx(1.5 + 0.1 * (51**2 + 52**2) / 2, rel=1e-6)


def test_mvsec_a_point_off_the_sensor_or_on_bad_gt_is_unknown() -> None:
    right = _sensor_flow(10.0, 1.0)
    # x 340 -> 350 after the first interval: off the sensor where it must sample the second -> 0
    assert _at([right, right], [1.0, 1.0], 100, 340).tolist() == [0.0, 0.0]
    assert _at([right, right], [1.0, 1.0], 100, 330).tolist() == [20.0, 2.0]   # the last move may end off it
    up = _sensor_flow(1.0, -6.0)
    assert _at([up, up], [1.0, 1.0], 5, 100).tolist() == [0.0, 0.0]            # y 5 -> -1
    nan = _sensor_flow(1.0, 1.0)
    nan[:, 101, 52] = np.nan
    assert _at([nan], [0.5], 101, 52).tolist() == [0.0, 0.0]                   # at the start
    # moved to (100.25, 51.5): (101, 52) is a bilinear neighbour of nonzero weight -> 0
    assert _at([_sensor_flow(3.0, 0.5), nan], [0.5, 0.5], 100, 50).tolist() == [0.0, 0.0]
    beside = _sensor_flow(1.0, 1.0)
    beside[:, 101, 53] = np.nan                 # moved to (100.25, 52): column 53 has weight 0 there
    assert _at([_sensor_flow(4.0, 0.5), beside], [0.5, 0.5], 100, 50).tolist() == [2.5, 0.75]
    nan[:, 101, 52] = np.inf
    assert _at([_sensor_flow(3.0, 0.5), nan], [0.5, 0.5], 100, 50).tolist() == [0.0, 0.0]
    hole = _sensor_flow(1.0, 1.0)
    hole[:, 100, 52] = 0.0                                                      # MVSEC: no depth there
    assert _at([_sensor_flow(3.0, 0.5), hole], [0.5, 0.5], 100, 50).tolist() == [0.0, 0.0]


def test_mvsec_gt_span_needs_covering_increasing_gt_times() -> None:
    gt_ts = np.array([0.0, 0.1, 0.2, 0.2, 0.3])
    t0 = np.array([-0.01, 0.05, 0.05, 0.12, 0.25, 0.25, 0.1, 0.05])
    t1 = np.array([0.05, 0.1, 0.25, 0.18, 0.3, 0.31, 0.1, 0.2])
    first, last = mvsec.gt_span(gt_ts, t0, t1)
    # before the gt; ends on a boundary (interval 1 not touched); spans the empty interval 2; inside 1;
    # ends on the last time; after it; empty pair; [0.05, 0.2]: intervals 0 and 1 (the empty one untouched)
    assert first.tolist() == [-1, 0, -1, 1, 3, -1, -1, 0]
    assert last.tolist() == [-1, 0, -1, 1, 3, -1, -1, 1]


def test_mvsec_propagates_on_the_full_sensor_through_gt_frames(tmp_path: Path) -> None:
    flow = np.stack([_sensor_flow(40.0, -8.0), _sensor_flow(lambda x, y: 0.1 * x, lambda x, y: 0.05 * y + 1.0),
                     _sensor_flow(np.nan, np.nan)])
    write_mvsec(tmp_path / "mvsec", "s", flow=flow, gt_ts=[0.0, 0.08, 0.2])
    write_mvsec(tmp_path / "mvsec", "t")
    train, _ = load_dataset("mvsec", data_dir=tmp_path, train="s", test="t", T=1, crop=64)
    y0, x0 = mvsec.crop_offsets(64)
    rows, cols = np.mgrid[y0:y0 + 64, x0:x0 + 64].astype(np.float64)
    # pair 0, [0.05, 0.10]: 0.03 / 0.08 of interval 0 moves each point by (15, -3), most of them out of the
    # crop (columns past 204 from x >= 190); then 0.02 / 0.12 of interval 1 sampled there, on the full sensor
    _, t0 = train[0]
    want_u = 15 + (0.1 * (cols + 15)) / 6
    want_v = -3 + (0.05 * (rows - 3) + 1) / 6
    np.testing.assert_allclose(t0[2].numpy(), want_u, rtol=1e-5)
    np.testing.assert_allclose(t0[3].numpy(), want_v, rtol=1e-5)
    _, t1 = train[1]            # [0.10, 0.13] inside interval 1: its flow scaled by 0.03 / 0.12
    np.testing.assert_allclose(t1[2].numpy(), 0.1 * cols * 0.25, rtol=1e-5)
    np.testing.assert_allclose(t1[3].numpy(), (0.05 * rows + 1) * 0.25, rtol=1e-5)
    gt = train._source.sequences[0].arrays["gt_flow"]
    assert gt.shape == (3, 2, H, W) and np.isnan(gt[2]).all()     # stored uncropped, non-finite kept


def _count_builds(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """``{"n": cache entries built so far}``, counted around ``mvsec._build``."""
    calls = {"n": 0}
    real = mvsec._build

    def counting(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        real(*args, **kwargs)

    monkeypatch.setattr(mvsec, "_build", counting)
    return calls


def test_mvsec_cache_format_change_rebuilds(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_builds(monkeypatch)
    monkeypatch.setattr(mvsec, "FORMAT", 1)
    load_dataset("mvsec", data_dir=root, train="seqA", test="seqB")
    monkeypatch.setattr(mvsec, "FORMAT", 2)
    train, _ = load_dataset("mvsec", data_dir=root, train="seqA", test="seqB")
    # two sequences, each built under both formats
    assert calls["n"] == 4 and len([p for p in (root / ".stllr_cache").iterdir() if p.is_dir()]) == 4
    assert mvsec.FORMAT == 2 and '"format": 2' in (Path(train.info.cache_entry) / "meta.json").read_text()


def test_mvsec_info_groups_sequences_and_batches(root: Path) -> None:
    train, test = _mvsec(root, crop=64)
    assert test.info.task == "flow" and test.info.num_classes == 2
    assert test.info.input_shape == (4, 64, 64) and test.info.T == 2 and len(test) == 4
    assert test.sequences == [("seqB", 0, 2), ("seqC", 2, 4)]
    assert test.groups.tolist() == [0, 0, 1, 1] and test.labels.tolist() == [0, 0, 0, 0]
    x, y = next(iter(DataLoader(test, batch_size=3, collate_fn=FlowDataset.collate)))
    assert x.shape == (3, 2, 4, 64, 64) and y.shape == (3, 4, 64, 64)
    assert torch.equal(x[2], test[2][0]) and torch.equal(y[2], test[2][1])
    blob = pickle.dumps(test)
    assert len(blob) < 20_000  # memory maps travel as paths
    again = pickle.loads(blob)
    assert all(torch.equal(a, b) for a, b in zip(again[3], test[3], strict=True))
    assert load_dataset("mvsec", data_dir=root, train="seqA", test="seqB", max_pairs=1)[0].info.T == 5


def test_mvsec_caches_each_sequence_once(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_builds(monkeypatch)
    train, test = _mvsec(root)
    assert calls["n"] == 3  # seqA, seqB and seqC
    entries = sorted(p.name for p in (root / ".stllr_cache").iterdir() if p.is_dir())
    assert len(entries) == 3 and all(e.startswith("mvsec-seq") for e in entries)
    assert Path(train.info.cache_entry).parent == root / ".stllr_cache"
    again, _ = _mvsec(root, T=3, dt=1)  # binning parameters share the entry
    assert calls["n"] == 3
    first, second = _mvsec(root)[0], train
    for i in range(len(first)):
        assert all(torch.equal(a, b) for a, b in zip(first[i], second[i], strict=True))
    assert isinstance(first._source.sequences[0].arrays["events_x"], np.memmap)
    _mvsec(root, crop=128)  # another crop is another entry
    assert calls["n"] == 6


def test_mvsec_polarity_zero_one_counts_zero_as_off(tmp_path: Path) -> None:
    write_mvsec(tmp_path / "mvsec", "s", events=[(45, 2, 0), (45, 2, 1)] + [(0, 0, 1)] * 8)
    write_mvsec(tmp_path / "mvsec", "t")
    train, _ = load_dataset("mvsec", data_dir=tmp_path, train="s", test="t", T=1)
    frames, _ = train[0]
    # events 0 (p=0) and 1 (p=1), both at crop (0, 0) in the former half: one OFF, one ON
    assert frames[0, 1, 0, 0] == 1 and frames[0, 0, 0, 0] == 1
    assert frames[0, 0:2].sum() == 2 and frames[0, 2:].sum() == 0  # the rest are outside the crop


@pytest.mark.parametrize(("setup", "params", "needle"), [
    ("no_folder", {}, "no folder mvsec/"),
    ("no_gt", {}, "seqA_gt.hdf5 not found"),
    ("no_key", {}, "no dataset davis/left/image_raw_ts"),
    ("bad_images", {}, "davis/left/image_raw has shape (3, 100, 100)"),
    ("no_events", {}, "no events"),
    ("ok", {"crop": 255}, "crop=255"),
    ("ok", {"crop": 262}, "crop=262"),
    ("ok", {"dt": 2}, "dt=2"),
    ("ok", {"dt": 4}, "too few for a pair at dt=4"),
    ("ok", {"max_pairs": 0}, "max_pairs=0"),
    ("ok", {"test": "seqA"}, "seqA is in both train and test"),
])
def test_mvsec_faults_are_one_line_errors(tmp_path: Path, setup: str, params: dict[str, Any], needle: str) -> None:
    folder = tmp_path / "mvsec"
    if setup != "no_folder":
        write_mvsec(folder, "seqB")
    if setup == "no_gt":
        write_mvsec(folder, "seqA")[1].unlink()
    elif setup == "no_key":
        write_mvsec(folder, "seqA", drop="davis/left/image_raw_ts")
    elif setup == "bad_images":
        write_mvsec(folder, "seqA", image_shape=(100, 100))
    elif setup == "no_events":
        write_mvsec(folder, "seqA", events=[])
    elif setup == "ok":
        write_mvsec(folder, "seqA")
    with pytest.raises(StllrError) as info:
        load_dataset("mvsec", data_dir=tmp_path, **{"train": "seqA", "test": "seqB", **params})
    message = str(info.value)
    assert needle in message and "\n" not in message
    if setup in ("no_gt", "no_key", "bad_images", "no_events"):
        assert str(folder) in message
    assert not (tmp_path / ".stllr_cache").exists()  # refused before anything is written


def test_mvsec_needs_data_dir() -> None:
    with pytest.raises(StllrError, match="data_dir"):
        load_dataset("mvsec")


def test_mvsec_bin_events_equal_counts() -> None:
    x = np.arange(10) % 4
    counts = mvsec.bin_events(x, np.zeros(10, int), np.ones(10, int), 2, 8)
    # former half: events 0..4 -> bins 0,0,0,1,1 (floor(j*2/5)); latter: 5..9 the same
    assert counts[:, 0].sum(axis=(1, 2)).tolist() == [3, 2] and counts[:, 2].sum(axis=(1, 2)).tolist() == [3, 2]
    assert counts.sum() == 10 and counts[:, [1, 3]].sum() == 0


# ------------------------------------------------------------------ flow_synthetic


@pytest.fixture(scope="module")
def synthetic() -> tuple[FlowDataset, FlowDataset]:
    return load_dataset("flow_synthetic", n_train=24, n_test=8)


def test_synthetic_shapes_info_and_contract(synthetic: tuple[FlowDataset, FlowDataset]) -> None:
    train, test = synthetic
    assert (len(train), len(test)) == (24, 8)
    info = train.info
    assert (info.task, info.num_classes, info.T, info.input_shape) == ("flow", 2, 5, (4, 32, 32))
    frames, target = train[3]
    assert frames.shape == (5, 4, 32, 32) and target.shape == (4, 32, 32)
    assert frames.dtype == target.dtype == torch.float32
    assert train._source.frames.dtype == np.uint8
    assert 0 <= target[:2].min() and target[:2].max() <= 1
    assert train.labels.tolist() == [0] * 24 and train.groups is None
    assert train.sequences == [("flow_synthetic-train", 0, 24)]
    items = train.__getitems__([3, 0])
    assert torch.equal(items[0][0], frames) and torch.equal(items[0][1], target)
    x, y = FlowDataset.collate(items)
    assert x.shape == (2, 5, 4, 32, 32) and y.shape == (2, 4, 32, 32)
    again = pickle.loads(pickle.dumps(train))
    assert torch.equal(again[5][0], train[5][0])


def test_synthetic_is_deterministic_per_seed() -> None:
    a, a_test = load_dataset("flow_synthetic", n_train=4, n_test=4, seed=3)
    b, _ = load_dataset("flow_synthetic", n_train=4, n_test=4, seed=3)
    c, _ = load_dataset("flow_synthetic", n_train=4, n_test=4, seed=4)
    assert np.array_equal(a._source.frames, b._source.frames)
    assert np.array_equal(a._source.targets, b._source.targets)
    assert not np.array_equal(a._source.targets, c._source.targets)
    assert not np.array_equal(a._source.targets, a_test._source.targets)


def test_synthetic_translation_flow_is_the_shift_everywhere() -> None:
    shift = np.array([[1.25, -0.5]])
    flow = fs.displacement(32, shift, np.zeros(1))
    assert np.allclose(flow[0, 0], 1.25) and np.allclose(flow[0, 1], -0.5)
    train, _ = load_dataset("flow_synthetic", n_train=6, n_test=1, max_rotation=0.0, max_shift=1.5)
    gt = train._source.targets[:, 2:]
    assert np.allclose(gt, gt[:, :, :1, :1], atol=1e-6)  # constant over the image
    assert np.abs(gt).max() <= 1.5 and np.abs(gt).max() > 0
    # rotation: the centre stays, a point at radius r moves by 2 r sin(θ/2)
    rot = fs.displacement(33, np.zeros((1, 2)), np.array([90.0]))
    assert np.allclose(rot[0, :, 16, 16], 0) and np.allclose(rot[0, :, 16, 32], [-16, 16])


def test_synthetic_gt_flow_warps_next_onto_prev(synthetic: tuple[FlowDataset, FlowDataset]) -> None:
    targets = torch.from_numpy(synthetic[0]._source.targets).double()
    warped = warp(targets[:, 1:2], targets[:, 2:4])
    err = (targets[:, 0:1] - warped)[:, :, 4:-4, 4:-4].abs()
    assert err.mean() < 0.01 and err.max() < 0.06
    unwarped = (targets[:, 0:1] - targets[:, 1:2])[:, :, 4:-4, 4:-4].abs()
    assert unwarped.mean() > 5 * err.mean()  # the motion is visible, and the gt explains it


def test_synthetic_events_follow_log_intensity_change(synthetic: tuple[FlowDataset, FlowDataset]) -> None:
    train, _ = synthetic
    contrast = train.info.params["contrast"]
    frames = train._source.frames.astype(np.int64)      # [N, T, 4, H, W]
    targets = train._source.targets.astype(np.float64)
    assert frames.sum(axis=(1, 2, 3, 4)).min() > 50      # every sample has events
    assert frames[:, :, 0:2].sum() > 0 and frames[:, :, 2:4].sum() > 0  # in both halves
    net = (frames[:, :, 0] + frames[:, :, 2] - frames[:, :, 1] - frames[:, :, 3]).sum(1)
    change = (np.log(targets[:, 1]) - np.log(targets[:, 0])) / contrast
    assert np.abs(net - change).max() < 1 + 1e-5        # ON − OFF tracks log I_next − log I_prev
    brighter = change > 2
    assert brighter.any() and (net[brighter] > 0).all()
    on = frames[:, :, [0, 2]].sum((1, 2))
    off = frames[:, :, [1, 3]].sum((1, 2))
    assert (on[brighter] > off[brighter]).all()


@pytest.mark.parametrize("params", [{"size": 30}, {"contrast": 0.0}, {"T": 0}, {"max_shift": -1}])
def test_synthetic_bad_parameter_is_one_line(params: dict[str, Any]) -> None:
    with pytest.raises(StllrError) as info:
        load_dataset("flow_synthetic", **params)
    assert next(iter(params)) in str(info.value) and "\n" not in str(info.value)


def test_registry_entries() -> None:
    assert not DATASETS["flow_synthetic"].needs_files and DATASETS["mvsec"].needs_files
    assert DATASETS["mvsec"].defaults["train"] == ("outdoor_day2",)
    assert mvsec.validate(dict(DATASETS["mvsec"].defaults, dt=4))["T"] == 20


def _blocked(lengths: list[int], block: int) -> FlowDataset:
    from stllr_engine.datasets._base import DatasetInfo
    from stllr_engine.datasets._flow import ArrayFlowSource

    n = sum(lengths)
    spans, at = [], 0
    for k, m in enumerate(lengths):
        spans.append((f"seq{k}", at, at + m))
        at += m
    info = DatasetInfo(name="mvsec", split="train", input_shape=(4, 8, 8), num_classes=2, T=2, task="flow")
    source = ArrayFlowSource(np.zeros((n, 2, 4, 8, 8), np.uint8), np.zeros((n, 4, 8, 8), np.float32))
    return FlowDataset(source, info, spans, grouped=True, block=block)


def test_blocks_of_consecutive_pairs_are_held_out_whole() -> None:
    from stllr_engine.experiment import ExperimentConfig, split_indices

    ds = _blocked([7, 5], block=3)
    assert ds.groups.tolist() == [0, 0, 0, 1, 1, 1, 2, 3, 3, 3, 4, 4]  # blocks never straddle a sequence
    for seed in range(5):
        exp = ExperimentConfig.for_dataset("flow_synthetic", {"n_train": 16, "n_test": 8}, seed=seed,
                                           network={"kind": "flownet", "width": 2, "depth": 1},
                                           data={"val_fraction": 0.25, "val_split": "block"})
        val, train = split_indices(exp, ds)
        g = ds.groups
        assert set(g[val]).isdisjoint(g[train]) and len(val) >= 3 and sorted(val + train) == list(range(12))
    # random-drawn pairs would sit next to training's; 'speaker' is for speech, 'block' for recordings
    with pytest.raises(StllrError, match="val_split='speaker' needs a dataset that records its speakers"):
        split_indices(exp.replace(data=exp.data.__class__(**{**exp.data.to_dict(), "val_split": "speaker"})), ds)
    synthetic, _ = load_dataset("flow_synthetic", n_train=16, n_test=8)
    with pytest.raises(StllrError, match="val_split='block' needs a dataset that records stretches"):
        split_indices(exp, synthetic)


def test_mvsec_a_missing_event_index_gives_its_pairs_no_events(tmp_path: Path) -> None:
    data, _ = write_mvsec(tmp_path / "mvsec", "s")
    write_mvsec(tmp_path / "mvsec", "t")
    with h5py.File(data, "r+") as f:
        del f["davis/left/image_raw_event_inds"]
        f["davis/left/image_raw_event_inds"] = np.array([-1.0, np.nan, 9.0])
    train, _ = load_dataset("mvsec", data_dir=tmp_path, train="s", test="t", T=1)
    # both pairs touch image 1, whose index is unknown: no events (never the recording from its start)
    assert len(train) == 2 and train[0][0].sum() == 0 and train[1][0].sum() == 0
