"""``spoken_digits`` (issue #17 item 1): SHD's words by TTS voices, in SHD's own format.

A small real set (3 voices x 20 words, espeak-ng and the cochlea model, ~5 s) read back
through the project's ``shd`` loader and through ``tonic.datasets.SHD`` unchanged; the split
by speaker; determinism by seed; generation into the cache once; the one-line errors.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from stllr_engine.datasets import load_dataset, spoken_digits
from stllr_engine.errors import StllrError

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

SMALL = {"speakers": 2, "test_speakers": 1, "repeats": 1}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("spoken")
    summary = spoken_digits.make(folder, **SMALL)
    return folder, summary


def _read(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return {"times": [np.asarray(t) for t in f["spikes/times"]], "units": [np.asarray(u) for u in f["spikes/units"]],
                "labels": np.asarray(f["labels"]), "speaker": np.asarray(f["extra/speaker"]),
                "keys": [k.decode() for k in f["extra/keys"]]}


def test_a_set_in_shds_format_split_by_speaker(small_set):
    folder, summary = small_set
    train, test = _read(folder / "SHD" / "shd_train.h5"), _read(folder / "SHD" / "shd_test.h5")
    assert len(train["labels"]) == 2 * 20 and len(test["labels"]) == 20
    assert train["keys"][0] == "english-zero" and train["keys"][19] == "german-neun" and len(train["keys"]) == 20
    for split in (train, test):
        for s in set(split["speaker"]):  # every voice says every word
            assert sorted(split["labels"][split["speaker"] == s]) == list(range(20))
        for t, u in zip(split["times"], split["units"]):
            assert t.dtype == np.float16 and u.dtype == np.uint16 and len(t) == len(u)
            assert 1000 <= len(t) <= 40_000  # SHD has a few thousand spikes per word
            assert 0.0 <= t.min() and t.max() <= 1.5 and np.all(np.diff(t.astype(np.float64)) >= 0)
            assert u.max() < 700 and len(np.unique(u)) > 100  # spread over the cochlea
    assert not set(train["speaker"]) & set(test["speaker"])  # no test voice in training
    assert summary["test"]["speakers"] == sorted(set(test["speaker"].tolist()))


def test_it_loads_through_the_shd_loader_and_through_tonic_unchanged(small_set):
    import tonic

    folder, _ = small_set
    train, test = load_dataset("shd", data_dir=folder)
    raw = _read(folder / "SHD" / "shd_train.h5")
    assert (len(train), len(test)) == (40, 20) and tuple(train[0][0].shape) == (100, 700)
    x, label = train[3]
    t, u = raw["times"][3].astype(np.float64), raw["units"][3].astype(np.int64)
    inside = t < 1.0
    assert label == raw["labels"][3] and x.sum() == inside.sum()  # every spike of the first second, binned
    assert x[int(t[0] * 100), u[0]] >= 1
    ds = tonic.datasets.SHD(str(folder), train=True)  # as tonic reads SHD: no download attempted
    events, target = ds[3]
    assert target == raw["labels"][3] and len(events) == len(t)
    np.testing.assert_array_equal(events["x"], u)
    assert list(ds.speaker) == raw["speaker"].tolist()


def test_the_same_seed_makes_the_same_set_and_another_seed_another(small_set, tmp_path):
    folder, _ = small_set
    again = spoken_digits.make(tmp_path / "again", **SMALL)
    a, b = _read(folder / "SHD" / "shd_test.h5"), _read(tmp_path / "again" / "SHD" / "shd_test.h5")
    assert again["test"]["speakers"] == sorted(set(b["speaker"].tolist()))
    assert np.array_equal(a["labels"], b["labels"]) and np.array_equal(a["speaker"], b["speaker"])
    assert all(np.array_equal(x, y) for x, y in zip(a["times"], b["times"]))
    assert all(np.array_equal(x, y) for x, y in zip(a["units"], b["units"]))
    recipes = spoken_digits.utterances(spoken_digits.validate_generation({**spoken_digits.GENERATION, **SMALL,
                                                                          "seed": 1}))
    first = spoken_digits.utterances(spoken_digits.validate_generation({**spoken_digits.GENERATION, **SMALL}))
    assert recipes != first


def test_load_dataset_generates_into_the_cache_once(tmp_path, monkeypatch):
    monkeypatch.setenv("STLLR_DATA_CACHE", str(tmp_path))
    train, test = load_dataset("spoken_digits", **SMALL, T=50, bin_ms=20.0)
    assert train.info.name == "spoken_digits" and tuple(train[0][0].shape) == (50, 700) and len(test) == 20
    made = next(tmp_path.glob("spoken_digits/*/SHD/shd_train.h5"))
    stamp = made.stat().st_mtime_ns
    train2, _ = load_dataset("spoken_digits", **SMALL, T=50, bin_ms=20.0)
    assert made.stat().st_mtime_ns == stamp and np.array_equal(train2[5][0].numpy(), train[5][0].numpy())


@pytest.mark.parametrize("params,message", [
    ({"speakers": 0}, "speakers=0 must be an integer >= 1"),
    ({"snr_db": [30, 10]}, "snr_db=[30, 10] must be [low, high] in dB with low <= high"),
    ({"speakers": 400}, "distinct voices available"),
    ({"T": 0}, "T=0 must be an integer >= 1"),
])
def test_bad_parameters_are_one_line_errors(params, message):
    with pytest.raises(StllrError) as err:
        load_dataset("spoken_digits", **params)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_without_espeak_ng_it_says_how_to_install_it(tmp_path):
    code = ("from stllr_engine.datasets import load_dataset\n"
            "load_dataset('spoken_digits', speakers=1, test_speakers=1, repeats=1)")
    env = dict(os.environ, PATH=str(tmp_path), STLLR_DATA_CACHE=str(tmp_path / "cache"))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "espeak-ng, which is not installed: install it (Debian/Ubuntu: apt-get install espeak-ng" in res.stderr
    assert not list((tmp_path / "cache").glob("spoken_digits/*/SHD/*.h5"))


def _stllr(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "study.cli", *args], capture_output=True, text=True, timeout=300,
                          **kw)


def test_the_command_line_makes_a_set_and_a_killed_make_leaves_none(tmp_path):
    res = _stllr("data", "make", "spoken_digits", str(tmp_path / "a"), "--speakers", "1", "--test-speakers", "1",
                 "--repeats", "1", "--json")
    assert res.returncode == 0, res.stderr
    import json

    summary = json.loads(res.stdout)
    assert summary["train"]["samples"] == summary["test"]["samples"] == 20
    bad = _stllr("data", "make", "spoken_digits", str(tmp_path / "b"), "--speakers", "0")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("stllr: error: dataset")
    proc = subprocess.Popen([sys.executable, "-m", "study.cli", "data", "make", "spoken_digits", str(tmp_path / "c"),
                             "--repeats", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list((tmp_path / "c").glob("SHD/shd_*.h5")) and not list((tmp_path / "c").glob("SHD/*.zip"))


def test_a_cache_it_cannot_write_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("STLLR_DATA_CACHE", str(blocker / "cache"))  # under a file: cannot be made
    with pytest.raises(StllrError) as err:
        load_dataset("spoken_digits", **SMALL)
    assert "cannot generate 'spoken_digits' into" in str(err.value) and "STLLR_DATA_CACHE" in str(err.value)
    assert "\n" not in str(err.value) and blocker.read_text() == "not a folder"


def _split_speakers(folder: Path, seed: int, val_split: str = "speaker") -> tuple[set, set, int, int]:
    from stllr_engine.experiment import ExperimentConfig, load_data

    cfg = ExperimentConfig.for_dataset("shd", {"T": 20, "bin_ms": 50.0, "channels": 10},
                                       network={"kind": "mlp", "width": 8, "depth": 1},
                                       data={"data_dir": str(folder), "val_fraction": 0.2, "val_split": val_split,
                                             "cache_dir": str(folder / "cache")}, seed=seed)
    train, val, _ = load_data(cfg)
    groups = train.dataset.dataset.groups
    assert groups is not None
    tr_idx, val_idx = list(train.dataset.indices), list(val.dataset.indices)  # type: ignore[union-attr]
    assert sorted(tr_idx + val_idx) == list(range(len(groups)))  # every training sample once
    return set(groups[tr_idx].tolist()), set(groups[val_idx].tolist()), len(tr_idx), len(val_idx)


def test_validation_held_out_by_speaker_hears_no_training_voice(tmp_path):
    folder = tmp_path / "four"
    spoken_digits.make(folder, speakers=4, test_speakers=1, repeats=1)
    seen = set()
    for seed in range(6):
        tr, va, n_tr, n_va = _split_speakers(folder, seed)
        assert tr and va and not tr & va  # whole voices: none on both sides
        assert (n_tr, n_va) == (60, 20)  # 0.2 of 80 = 16 samples: one voice of 20 covers it
        assert _split_speakers(folder, seed)[1] == va  # fixed by the seed
        seen.add(frozenset(va))
    assert len(seen) > 1  # and another seed holds out another voice
    tr, va, _, _ = _split_speakers(folder, 0, val_split="random")
    assert tr & va  # the random split mixes voices: what val_split: speaker is for


def test_a_speaker_split_of_a_dataset_without_speakers_is_one_line():
    from stllr_engine.experiment import ExperimentConfig, load_data

    cfg = ExperimentConfig.for_dataset("digits", {}, network={"kind": "mlp", "width": 8, "depth": 1},
                                       data={"val_split": "speaker"})
    with pytest.raises(StllrError, match="val_split='speaker' needs a dataset that records its speakers"):
        load_data(cfg)
    with pytest.raises(StllrError, match="val_split='by_voice' is not a way to hold out validation"):
        ExperimentConfig.for_dataset("digits", {}, data={"val_split": "by_voice"})


def test_runs_whose_speaker_splits_differ_in_size_never_share_a_pack(tmp_path):
    """Speakers with unequal sample counts (as in SHD) give seeds splits of unequal sizes: the
    automatic packs group runs by their split sizes, and the members of each pack train."""
    from stllr_engine.experiment import ExperimentConfig, split_sizes
    from stllr_engine.pack_fit import run_pack
    from study.trial import pack_groups

    folder = tmp_path / "uneven"
    spoken_digits.make(folder, speakers=4, test_speakers=1, repeats=1)
    with h5py.File(folder / "SHD" / "shd_train.h5", "r+") as f:  # 80 samples: voices of 10, 20, 20 and 30
        f["extra/speaker"][...] = np.repeat(np.array([7, 8, 9, 10], dtype=np.asarray(f["extra/speaker"]).dtype),
                                            [10, 20, 20, 30])

    def config(seed: int) -> ExperimentConfig:
        return ExperimentConfig.for_dataset("shd", {"T": 10, "bin_ms": 100.0, "channels": 10},
                                            network={"kind": "rsnn", "width": 8, "depth": 1},
                                            training={"epochs": 1, "lr": 1e-2},
                                            data={"data_dir": str(folder), "cache_dir": str(folder / "cache"),
                                                  "val_fraction": 0.2, "val_split": "speaker", "batch_size": 16},
                                            seed=seed)

    exps = [config(s) for s in range(6)]
    sizes = [split_sizes(e) for e in exps]
    assert len(set(sizes)) > 1 and all(t + v == 80 for t, v in sizes)
    groups = pack_groups(exps, 0)
    assert sorted(i for g in groups for i in g) == list(range(6))
    assert all(len({sizes[i] for i in g}) == 1 for g in groups)
    assert any(len(g) > 1 for g in groups)
    packed = [g for g in groups if len(g) > 1][0]
    epochs = list(run_pack([exps[i] for i in packed]))
    assert len(epochs) == 1 and all(m is not None and m["val_accuracy"] >= 0 for m in epochs[0])
