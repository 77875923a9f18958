"""Every preset loads, validates and survives the frozen-copy round trip; the event presets
carry the paper's settings; the quickstart stays small."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from spaces import PRESET_GROUPS, PRESET_NAMES, load_study, preset_path
from stllr_engine.datasets import DATASETS
from stllr_engine.errors import StllrError
from stllr_engine.network import PRESETS
from stllr_engine.stllr import STLLR_PRESETS

SPACES = Path(preset_path("quickstart")).parent
EVENT = {"shd_rsnn": ("shd", "shd_rsnn", "shd"), "dvs_gesture_vgg9": ("dvs_gesture", "vgg9", "dvs_gesture"),
         "cifar10dvs_vgg9": ("cifar10_dvs", "vgg9", "cifar10_dvs"), "nmnist": ("nmnist", None, None)}


NEEDS_DATA = (*EVENT, "mvsec_flow")


def load(name: str, tmp_path: Path):
    if name in NEEDS_DATA:  # no data here: the data-folder check has its own tests below
        return load_study(name, {"dataset.data_dir": str(tmp_path)}, check_data=False)
    return load_study(name)


def test_preset_names_are_the_yaml_files():
    assert sorted(PRESET_NAMES) == sorted(p.stem for p in SPACES.glob("*.yaml"))
    assert all(n in PRESET_NAMES for group in PRESET_GROUPS.values() for n in group)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_loads_and_round_trips(name, tmp_path):
    spec = load(name, tmp_path)
    assert spec.name == name
    frozen = tmp_path / "study.yaml"
    frozen.write_text(spec.to_yaml())
    again = load_study(str(frozen), check_data=False)
    assert again.to_dict() == spec.to_dict()
    assert again == spec
    assert again.to_yaml().split("\n", 1)[1] == spec.to_yaml().split("\n", 1)[1]  # past the header line


@pytest.mark.parametrize("name", sorted(EVENT))
def test_event_preset_carries_the_paper_settings(name, tmp_path):
    dataset, net_preset, stllr_preset = EVENT[name]
    spec = load(name, tmp_path)
    assert spec.dataset == dataset and spec.data_dir == str(tmp_path)
    for key, value in spec.dataset_options.items():  # the paper's binning is the loader's default
        default = DATASETS[dataset].defaults[key]
        assert value == (list(default) if isinstance(default, tuple) else default) or (
            key == "resolution" and [value, value] == list(default))
    if net_preset is not None:
        ref = PRESETS[net_preset]
        assert spec.model_kind == ref.kind
        for key, value in spec.model_fixed.items():
            assert value == getattr(ref, key), key
    if stllr_preset is not None:  # the official factors and window lie inside the searched ranges
        ref_st = STLLR_PRESETS[stllr_preset]
        for key, p in spec.search.items():
            if hasattr(ref_st, key) and p.type != "categorical":
                assert p.low <= getattr(ref_st, key) <= p.high, key
        assert spec.fixed["stllr"]["alpha_pre"] == ref_st.alpha_pre


@pytest.mark.parametrize("name", sorted(EVENT))
def test_event_preset_needs_its_data_folder(name, tmp_path):
    with pytest.raises(StllrError) as e:
        load_study(name)
    msg = str(e.value)
    assert msg.startswith(f"spaces/{name}.yaml: dataset.data_dir: ") or f"{name}.yaml: dataset.data_dir: " in msg
    assert "--set dataset.data_dir=" in msg and "\n" not in msg
    with pytest.raises(StllrError, match=r"dataset\.data_dir: folder .*nowhere does not exist; give the folder"):
        load_study(name, {"dataset.data_dir": str(tmp_path / "nowhere")})
    with pytest.raises(StllrError, match=r"dataset\.data_dir: .*never downloads"):  # empty folder: the layout check
        load_study(name, {"dataset.data_dir": str(tmp_path)})


def test_shd_with_its_files_in_place_passes_the_data_check(tmp_path):
    (tmp_path / "SHD").mkdir()
    for split in ("train", "test"):
        (tmp_path / "SHD" / f"shd_{split}.h5").write_bytes(b"")
    spec = load_study("shd_rsnn", {"dataset.data_dir": str(tmp_path)})
    assert spec.arch({}) == {"model": "rsnn", "width": 450, "depth": 1, "T": 100}


def test_gesture_constraint_is_bptt_cost(tmp_path):
    spec = load("dvs_gesture_vgg9", tmp_path)
    bptt = spec.price({}, "bptt")["learning_macs_formula_per_sample"]
    assert bptt == 24_206_602_240  # DESIGN §7: 24.2e9 for VGG-9 at 2x32x32, T=20
    assert spec.violations({"learn_steps": 13, "alpha_post": -1.0, "lambda_pre": 0.75, "lambda_post": 0.2}, "stllr") == []
    assert len(spec.violations({"learn_steps": 14, "alpha_post": -1.0, "lambda_pre": 0.75, "lambda_post": 0.2},
                               "stllr")) == 1


def test_quickstart_is_small():
    spec = load_study("quickstart")
    assert spec.dataset in ("digits", "synthetic_temporal") and not DATASETS[spec.dataset].needs_files
    archs = math.prod(len(p.values() or []) for n, p in spec.search.items() if n in ("width", "depth"))
    # the search, then per architecture the equal tuning: S-TLLR and each BPTT objective, the same settings
    tuning = archs * spec.baseline_trials * (len(spec.stllr_losses) + len(spec.baseline_losses)) * len(spec.seeds)
    runs = spec.trials * len(spec.seeds) + tuning
    assert len(spec.objectives) == 3 and "bptt" in spec.rules and spec.patience is not None
    # at most 30 epochs, stopped by patience 3 (all 52 runs stop by patience after 5-26 epochs, measured)
    assert runs <= 52 and spec.epochs <= 30 and spec.patience <= 3


def test_grid_presets_cover_the_grid():
    for name in PRESET_GROUPS["scaling"] + PRESET_GROUPS["balance_factorial"]:
        spec = load_study(name)
        grid = spec.grid()
        assert grid is not None and spec.trials == math.prod(len(v) for v in grid.values())


def test_every_preset_trains_under_the_fair_protocol(tmp_path):
    """DESIGN §8: early stopping, BPTT on S-TLLR's objective, an equal learning-rate tuning."""
    for name in PRESET_NAMES:
        spec = load(name, tmp_path)
        assert spec.patience is not None and spec.patience < spec.epochs, name
        assert spec.baseline_losses[0] == "per_step", name
        if "bptt" in spec.rules:  # both rules get the same learning rates: one fixed, or the same search
            assert "lr" in spec.baseline_search or "lr" in spec.fixed.get("training", {}), name


def test_the_mvsec_preset_carries_the_papers_flow_setting(tmp_path):
    spec = load("mvsec_flow", tmp_path)
    assert spec.dataset == "mvsec" and spec.measure == "aee" and spec.objectives[0].metric == "val_aee"
    assert spec.dataset_options == {"dt": 1, "T": 10, "crop": 256}
    assert spec.fixed["stllr"]["learn_steps"] == 1 and spec.fixed["training"]["lr"] == 5e-5
    assert spec.fixed["training"]["flow_loss"] == "photometric" and spec.fixed["data"]["val_split"] == "block"
    ref = PRESETS["spike_flownet"]
    assert spec.model_kind == ref.kind and all(v == getattr(ref, k) for k, v in spec.model_fixed.items())
