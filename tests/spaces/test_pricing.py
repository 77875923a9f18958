"""Pricing without building: no network, no data, exact figures for absurd widths and depths
in milliseconds; the per-run memory check; a space no configuration of which meets a
constraint refused at load; the parameters of one run (``stllr train``)."""

from __future__ import annotations

import re
import time
from typing import Any

import optuna
import pytest
from space_cases import small_study

import stllr_engine.datasets.digits as digits_module
import stllr_engine.datasets.synthetic_temporal as synthetic_module
import stllr_engine.experiment as experiment_module
import stllr_engine.network as network_module
from spaces import load_study
from spaces._study import format_bytes, input_info
from stllr_engine.datasets import load_dataset
from stllr_engine.errors import StllrError

optuna.logging.set_verbosity(optuna.logging.WARNING)
W = 2_000_000_000


@pytest.fixture
def nothing_built(monkeypatch):
    """Building a network or generating / loading data fails the test."""
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pricing must not build a network or load data")

    monkeypatch.setattr(network_module, "build_network", refuse)
    monkeypatch.setattr(experiment_module, "dataset_info", refuse)
    monkeypatch.setattr(experiment_module, "_load", refuse)
    monkeypatch.setattr(digits_module, "load", refuse)
    monkeypatch.setattr(synthetic_module, "load", refuse)


def wide_study(write_study, depth: int = 1500, **changes: Any):
    d = small_study()
    d["search"]["width"] = {"type": "int", "low": 16, "high": W, "log": True}
    d["search"]["depth"]["high"] = depth
    d["constraints"] = ["learning_memory <= 8 MiB"]
    d.update(changes)
    return load_study(str(write_study(d)))


def timed(fn: Any, *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def test_width_2e9_and_depth_1500_priced_exactly_in_milliseconds(write_study, nothing_built):
    spec = wide_study(write_study)  # loading prices the space's extremes: nothing built either
    # digits: 64 inputs, 10 classes, T = 8
    wide = {"width": W, "depth": 2, "lambda_pre": 0.5, "alpha_post": 0.5, "learn_steps": 4, "lr": 1e-3,
            "layer1.alpha_post": 0.0}
    priced, seconds = timed(spec.price, wide, "stllr")
    assert seconds < 0.05, seconds
    assert priced["learning_macs_formula_per_sample"] == 3 * 4 * 64 * W + 2 * 4 * W * W + 2 * 4 * W * 10
    assert priced["forward_macs_formula_per_sample"] == 8 * (64 * W + W * W + W * 10)
    assert priced["learning_memory_bytes_formula_per_sample"] == 2 * 2 * W * 4
    assert spec.violations(wide, "stllr") == ["learning_memory_bytes_formula_per_sample=3.2e+10 > 8.389e+06 (8 MiB)"]
    deep = {"width": 16, "depth": 1500, "lambda_pre": 0.5, "alpha_post": -1.0, "learn_steps": 8, "lr": 1e-3}
    priced, seconds = timed(spec.price, deep, "bptt")
    assert seconds < 0.05, seconds
    S = 64 * 16 + 1499 * 16 * 16 + 16 * 10
    assert priced["learning_macs_formula_per_sample"] == 2 * 8 * S
    assert priced["learning_memory_values_formula_per_sample"] == 8 * 1500 * 16
    layered = {**deep, **{f"layer{i}.alpha_post": 0.0 for i in range(1, 1500, 2)}}  # every other layer: 2 MACs
    priced, seconds = timed(spec.price, layered, "stllr")
    assert seconds < 0.05, seconds
    zero = len(range(1, 1500, 2))  # 750 layers at α_post = 0
    assert priced["learning_macs_formula_per_sample"] == (
        3 * 8 * 64 * 16 + 3 * 8 * (1499 - zero) * 256 + 2 * 8 * zero * 256 + 2 * 8 * 16 * 10)


def test_200_infeasible_proposals_in_seconds(write_study, nothing_built):
    # depth 1..3 (per-layer α_post): at depth 1500 Optuna's own 1499 per-layer suggestions dominate a proposal
    spec = wide_study(write_study, depth=3, constraints=["learning_memory <= 64 KiB"])
    study = optuna.create_study(directions=[o.direction for o in spec.objectives],
                                sampler=optuna.samplers.RandomSampler(seed=3))
    start = time.perf_counter()
    infeasible = 0
    widest = 0
    for _ in range(200):
        trial = study.ask()
        params = spec.suggest(trial)
        broken = spec.violations(params, "stllr")
        slack = spec.constraint_values(params, "stllr")
        N = params["width"] * params["depth"]
        assert slack == [2 * N * 4 - 64 * 2**10]  # S-TLLR keeps two trace values per neuron, fp32
        infeasible += bool(broken)
        widest = max(widest, params["width"])
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, elapsed
    assert infeasible > 100 and widest > 10**8  # log-uniform widths up to 2e9: most too large


def test_embedded_shapes_from_their_parameters(nothing_built):
    assert input_info("digits", {"T": 40}, None, None) == ((64,), 10)
    assert input_info("synthetic_temporal", {"channels": 12, "num_classes": 6}, None, None) == ((12,), 6)
    assert input_info("shd", {"T": 50}, None, None) == ((700,), 20)
    with pytest.raises(StllrError, match=r"synthetic_temporal.*channels"):
        input_info("synthetic_temporal", {"channels": 1}, None, None)


def test_embedded_shapes_match_the_generated_data():
    for name, options in (("digits", {"T": 5}), ("synthetic_temporal", {"channels": 10, "num_classes": 3, "T": 12})):
        train, _ = load_dataset(name, **options)
        assert input_info(name, options, None, None) == (tuple(train.info.input_shape), train.info.num_classes)


def test_memory_need_and_check_fits(write_study):
    d = small_study()
    d["fixed"]["training"] = {"optimizer": "sgd", "momentum": 0.0}
    spec = load_study(str(write_study(d)))
    params = {"width": 16, "depth": 2, "lambda_pre": 0.5, "alpha_post": 0.5, "learn_steps": 4, "lr": 1e-3}
    P = 64 * 16 + 16 + 16 * 16 + 16 + 16 * 10 + 10  # 1482 parameters
    # SGD without momentum: weights + grads; batch 32 (fixed.data), T = 8, 64 inputs, N = 32
    assert spec.memory_need(params, "stllr") == 4 * (2 * P + 32 * (2 * 32 + 8 * 64))
    assert spec.memory_need(params, "bptt") == 4 * (2 * P + 32 * (8 * 32 + 8 * 64))
    assert spec.check_fits(params, "bptt", 10**6) == spec.memory_need(params, "bptt")
    spec = load_study(str(write_study(small_study())))  # Adam
    wide = dict(params, width=W, depth=1)
    P = 64 * W + W + W * 10 + 10
    need = 4 * (4 * P + 32 * (8 * W + 8 * 64))
    assert spec.memory_need(wide, "bptt") == need
    with pytest.raises(StllrError) as e:
        spec.check_fits(wide, "bptt", 24 * 2**30)
    msg = str(e.value)
    assert "\n" not in msg
    assert re.search(r"study\.yaml: the bptt run of mlp width 2000000000, depth 1, T 8, batch 32 needs "
                     r"(\S+ \S+) at least \((\S+ \S+) parameters with gradients and optimiser state, (\S+ \S+) "
                     r"learning memory, (\S+ \S+) input batch\), the node has 24 GiB; use a smaller width", msg), msg
    assert f"needs {format_bytes(need)} at least" in msg and format_bytes(need) == "4.05 TiB"
    with pytest.raises(StllrError, match=r"node_bytes=0 must be a whole number of bytes"):
        spec.check_fits(params, "stllr", 0)
    assert format_bytes(1536) == "1.5 KiB" and format_bytes(5 * 2**60) == "5 EiB"


QUICK = "spaces/quickstart.yaml"


@pytest.mark.parametrize("constraint,message", [
    ("learning_macs <= 9000",
     "constraints[0]: no configuration of the space meets learning_macs_formula_per_sample <= 9000: the cheapest, "
     "width=64, depth=1, T=16, learn_steps=1, alpha_post=0, costs learning_macs_formula_per_sample=9472; raise the "
     "limit or change search.width.low, search.depth.low, search.learn_steps.low, search.alpha_post.low"),
    ("learning_memory <= 511 B",
     "constraints[0]: no configuration of the space meets learning_memory_bytes_formula_per_sample <= 511 B: the "
     "cheapest, width=64, depth=1, T=16, learn_steps=1, alpha_post=0, costs "
     "learning_memory_bytes_formula_per_sample=512; raise the limit or change search.width.low, search.depth.low, "
     "search.learn_steps.low, search.alpha_post.low"),
    ("forward_macs >= 1e6",
     "constraints[0]: no configuration of the space meets forward_macs_formula_per_sample >= 1e6: the dearest, "
     "width=128, depth=2, T=16, learn_steps=16, alpha_post=1, costs forward_macs_formula_per_sample=4.137e+05; "
     "lower the limit or change search.width.high, search.depth.high, search.learn_steps.high, search.alpha_post.high"),
])
def test_a_space_that_cannot_meet_a_constraint_is_refused(constraint, message):
    # quickstart: digits (64 inputs, 10 classes, T=16), width 64|128, depth 1..2, window 1..16, α_post in [-1, 1].
    # Cheapest learning MACs: width 64, depth 1, window 1, α_post = 0: 2·64·64 + 2·64·10 = 9472.
    # Dearest forward MACs: 16 · (64·128 + 128·128 + 128·10) = 413 696.
    with pytest.raises(StllrError) as e:
        load_study("quickstart", {"constraints": [constraint]})
    assert str(e.value) == f"{QUICK}: {message}"


def test_a_space_at_the_limit_loads_and_alpha_zero_only_when_reachable(write_study):
    assert load_study("quickstart", {"constraints": ["learning_macs <= 9472"]}).constraints[0].value == 9472
    assert load_study("quickstart", {"constraints": ["forward_macs >= 413696"]})
    # α_post in [0.5, 1]: 0 is out of reach, so the cheapest window step costs 3 per hidden MAC
    with pytest.raises(StllrError, match=r"costs learning_macs_formula_per_sample=1.357e\+04;"):
        load_study("quickstart", {"constraints": ["learning_macs <= 13567"], "search.alpha_post.low": 0.5})
    assert load_study("quickstart", {"constraints": ["learning_macs <= 13568"], "search.alpha_post.low": 0.5})
    # a grid whose step skips 0: [-1, -0.3, 0.4]
    with pytest.raises(StllrError, match=r"alpha_post=0.4, costs learning_macs_formula_per_sample=1.357e\+04;"):
        load_study("quickstart", {"constraints": ["learning_macs <= 9472"], "search.alpha_post.step": 0.7,
                                  "search.alpha_post.high": 0.4})
    # categorical architecture: its least choice; categorical α_post holding 0
    d = small_study()
    d["search"].update(width=[48, 16, 32], alpha_post=[0.5, 0.0], learn_steps=[3, 2, 8])
    d["constraints"] = ["learning_macs <= 2000"]  # 2·2·64·16 + 2·2·16·10 = 4736 at best
    with pytest.raises(StllrError, match=r"width=16, depth=1, T=8, learn_steps=2, alpha_post=0, costs "
                                         r"learning_macs_formula_per_sample=4736;"):
        load_study(str(write_study(d)))
    d["constraints"] = ["learning_macs <= 4736"]
    assert load_study(str(write_study(d)))


def test_every_preset_reaches_its_constraints(tmp_path):
    spec = load_study("dvs_gesture_vgg9", {"dataset.data_dir": str(tmp_path)}, check_data=False)
    least, greatest = spec.reach()
    assert least["learning_macs_formula_per_sample"].figure <= spec.constraints[0].value
    assert greatest["learning_macs_formula_per_sample"].figure > spec.constraints[0].value


def test_a_vgg_too_deep_for_its_input_is_refused_at_load(write_study, tmp_path):
    d = small_study()
    d.pop("per_layer")
    d["dataset"] = {"name": "dvs_gesture", "data_dir": str(tmp_path)}  # 2×32×32 frames, T = 20
    d["model"] = {"kind": "vgg", "fixed": {"width": 4}}
    d["search"] = {"depth": {"type": "int", "low": 1, "high": 6}, "alpha_post": {"type": "float", "low": -1, "high": 1}}
    d.pop("baseline")
    path = write_study(d)
    with pytest.raises(StllrError) as e:
        load_study(str(path), check_data=False)
    assert str(e.value) == (f"{path}: search: vgg depth 6 halves 32x32 6 times: use an input size divisible by 64 "
                            "or a smaller depth; every configuration of the space must build: check model.fixed and the search ranges")
    spec = load_study(str(path), {"search.depth.high": 5}, check_data=False)
    # the cheapest: one block (2 + 1 convs: 4·32·32 neurons, then 8·32·32), S-TLLR's two traces each
    assert spec.reach()[0]["learning_memory_values_formula_per_sample"].figure == 2 * (4 + 8) * 32 * 32


def run_spec(write_study):
    return load_study(str(write_study(small_study())))


def test_params_for_run_samples_the_rest(write_study):
    spec = run_spec(write_study)
    params, sampled = spec.params_for_run({"alpha_post": "0.5", "width": 32, "depth": 3, "layer2.alpha_post": 0},
                                          seed=4)
    assert params["alpha_post"] == 0.5 and params["width"] == 32 and params["depth"] == 3
    assert params["layer2.alpha_post"] == 0.0 and isinstance(params["layer2.alpha_post"], float)
    assert sorted(sampled) == ["lambda_pre", "layer1.alpha_post", "learn_steps", "lr"]
    assert -1.0 <= params["layer1.alpha_post"] <= 1.0 and 1 <= params["learn_steps"] <= 8
    again, _ = spec.params_for_run({"alpha_post": 0.5, "width": 32, "depth": 3, "layer2.alpha_post": 0.0}, seed=4)
    assert again == params  # seeded
    other, _ = spec.params_for_run({"alpha_post": 0.5, "width": 32, "depth": 3, "layer2.alpha_post": 0.0}, seed=5)
    assert other != params
    everything, none = spec.params_for_run(dict(params))
    assert everything == params and none == []
    assert spec.params_for_run({"lr": "1e-3"})[0]["lr"] == 0.001


@pytest.mark.parametrize("given,pattern", [
    ({"alpha_pst": 0.5}, r"'alpha_pst' is not a search parameter of this study \(did you mean 'alpha_post'\?\); "
                         r"they are: width, depth, lambda_pre, alpha_post, learn_steps, lr, layer<i>\.alpha_post; "
                         r"study-file keys start with a section"),
    ({"lambda_post": 0.5}, r"'lambda_post' is not a search parameter of this study"),
    ({"alpha_post": 2}, r"alpha_post=2: 2 is outside the range \[-1\.0, 1\.0\]; this study searches alpha_post in "
                        r"\[-1\.0, 1\.0\] \(float\): give a value there or leave alpha_post out to sample it"),
    ({"alpha_post": "high"}, r"alpha_post='high': 'high' is not a finite number; this study searches alpha_post in"),
    ({"depth": 2.5}, r"depth=2\.5: 2\.5 is not an integer; this study searches depth in \[1, 3\] \(int\)"),
    ({"depth": True}, r"depth=True: True is not an integer"),
    ({"width": 24}, r"width=24: 24 is not one of the choices \[16, 32\]; this study searches width in one of "
                    r"\[16, 32\]"),
    ({"learn_steps": 9}, r"learn_steps=9: 9 is outside the range \[1, 8\]"),
    ({"lr": 0.5}, r"lr=0\.5: 0\.5 is outside the range \[0\.0001, 0\.01\]; .*\(float, log scale\)"),
    ({"layer1.alpha_post": 1.5}, r"layer1\.alpha_post=1\.5: 1\.5 is outside the range \[-1\.0, 1\.0\]; this study "
                                 r"searches alpha_post in"),
    ({"layer0.alpha_post": 0.5}, r"layer0\.alpha_post: per-layer factors go to layers 1\.\.2 \(layer 0 takes "
                                 r"alpha_post itself, the network has at most 3 hidden layers\)"),
    ({"layer3.alpha_post": 0.5}, r"layer3\.alpha_post: per-layer factors go to layers 1\.\.2"),
    ({"layer2.lambda_pre": 0.5}, r"'layer2\.lambda_pre' is not a search parameter of this study"),
    ({"layer2.alpha_post": 0.5, "depth": 2}, r"layer2\.alpha_post: the network has 2 hidden layer\(s\) at depth 2 "
                                             r"\(per-layer factors for layers 1\.\.1\); give depth as well"),
])
def test_params_for_run_refuses_in_one_line(write_study, given, pattern):
    spec = run_spec(write_study)
    with pytest.raises(StllrError) as e:
        spec.params_for_run(given)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(spec.source + ": ")
    assert re.search(pattern, msg), msg


def test_params_for_run_with_a_grid_step(write_study):
    d = small_study()
    d["search"]["alpha_post"]["step"] = 0.5
    spec = load_study(str(write_study(d)))
    assert spec.params_for_run({"alpha_post": -0.5})[0]["alpha_post"] == -0.5
    with pytest.raises(StllrError, match=r"alpha_post=0\.25: 0\.25 is not on the grid -1\.0, -0\.5, \.\.\. "
                                         r"\(step 0\.5\)"):
        spec.params_for_run({"alpha_post": 0.25})
