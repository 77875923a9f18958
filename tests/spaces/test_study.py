"""StudySpec against real Optuna studies: define-by-run suggestions, baselines, the grid,
samplers, experiments and formula prices checked by hand."""

from __future__ import annotations

import warnings

import optuna
import pytest
from space_cases import small_study

from spaces import load_study
from spaces._names import parse_quantity
from stllr_engine.costs import formula_costs
from stllr_engine.errors import StllrError
from stllr_engine.experiment import ExperimentConfig
from stllr_engine.network import NetworkSpec, build_network
from stllr_engine.stllr import STLLRConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def spec(write_study):
    return load_study(str(write_study()))


def study_for(spec, sampler=None):
    return optuna.create_study(directions=[o.direction for o in spec.objectives],
                               sampler=sampler or optuna.samplers.RandomSampler(seed=1))


def test_suggest_within_bounds_and_per_layer_only_when_deep(spec):
    study = study_for(spec)
    depths = set()
    for _ in range(40):
        params = spec.suggest(study.ask())
        depth = params["depth"]
        depths.add(depth)
        assert params["width"] in (16, 32) and 1 <= depth <= 3
        assert 0.0 <= params["lambda_pre"] <= 1.0 and -1.0 <= params["alpha_post"] <= 1.0
        assert 1 <= params["learn_steps"] <= 8 and 1e-4 <= params["lr"] <= 1e-2
        assert "lambda_post" not in params  # fixed in the file, not suggested
        layered = sorted(k for k in params if k.startswith("layer"))
        assert layered == [f"layer{i}.alpha_post" for i in range(1, depth)]
        assert all(-1.0 <= params[k] <= 1.0 for k in layered)
    assert depths == {1, 2, 3}


def test_directions_and_aliases(spec):
    assert [(o.metric, o.direction) for o in spec.objectives] == [
        ("val_accuracy", "maximize"), ("learning_macs_formula_per_sample", "minimize"),
        ("learning_memory_bytes_measured_per_sample", "minimize")]  # the measured memory (DESIGN §8)
    assert study_for(spec).directions == [optuna.study.StudyDirection.MAXIMIZE,
                                          optuna.study.StudyDirection.MINIMIZE,
                                          optuna.study.StudyDirection.MINIMIZE]


def test_baseline_and_arch(spec):
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    arch = spec.arch({"width": 32, "depth": 2, "lr": 1e-3})
    assert arch == {"model": "mlp", "width": 32, "depth": 2, "T": 8}
    params = spec.suggest_baseline(study.ask(), arch)
    assert list(params) == ["lr"] and 1e-4 <= params["lr"] <= 1e-2
    assert spec.baseline_trials == 2


def test_experiment_of_a_configuration(spec):
    params = {"width": 32, "depth": 2, "lambda_pre": 0.25, "alpha_post": -0.5, "learn_steps": 4, "lr": 2e-3,
              "layer1.alpha_post": 0.75}
    exp = spec.experiment(params, "stllr", 7)
    assert isinstance(exp, ExperimentConfig) and exp.seed == 7
    assert exp.network.input_shape == (64,) and exp.network.num_classes == 10  # from the dataset
    assert (exp.network.width, exp.network.depth, exp.network.gamma, exp.network.theta) == (32, 2, 0.9, 0.5)
    st = exp.training.stllr
    assert (st.lambda_pre, st.lambda_post, st.alpha_post, st.learn_steps) == (0.25, 0.5, -0.5, 4)
    assert st.layer_factors == {1: {"alpha_post": 0.75}}
    assert (exp.training.rule, exp.training.epochs, exp.training.lr) == ("stllr", 1, 2e-3)
    assert exp.data.options["T"] == 8 and exp.data.batch_size == 32
    assert ExperimentConfig.from_json(exp.to_json()) == exp
    bptt = spec.experiment({**{k: params[k] for k in ("width", "depth")}, "lr": 5e-3}, "bptt", 0)
    assert bptt.training.rule == "bptt" and bptt.training.lr == 5e-3 and bptt.network.width == 32
    with pytest.raises(StllrError, match=r"parameter 'widht' is not a search parameter of this study"):
        spec.experiment({"widht": 3}, "stllr", 0)


def test_price_and_violations_by_hand(write_study):
    d = small_study()
    d["constraints"] = ["learning_memory <= 200 B", {"metric": "learning_macs", "op": "<=", "value": "20 k"}]
    spec = load_study(str(write_study(d)))
    params = {"width": 16, "depth": 2, "lambda_pre": 0.5, "alpha_post": 0.5, "learn_steps": 4, "lr": 1e-3,
              "layer1.alpha_post": 0.0}
    # digits: 64 inputs, 10 classes, T=8; synaptic MACs per step: 64·16 + 16·16 + 16·10 = 1440; 32 neurons
    st = spec.price(params, "stllr")
    # layer 1 has alpha_post = 0: 2 MACs; the readout has no non-causal term: 2 MACs
    learning = 3 * 4 * 64 * 16 + 2 * 4 * 16 * 16 + 2 * 4 * 16 * 10
    st = {k: v for k, v in st.items() if k.endswith("_formula_per_sample")}
    assert st == {"forward_macs_formula_per_sample": 8 * 1440, "learning_macs_formula_per_sample": learning,
                  "learning_memory_values_formula_per_sample": 2 * 32,
                  "learning_memory_bytes_formula_per_sample": 2 * 32 * 4}
    bp = spec.price(params, "bptt")
    assert bp["learning_macs_formula_per_sample"] == 2 * 8 * 1440
    assert bp["learning_memory_bytes_formula_per_sample"] == 8 * 32 * 4
    net = build_network(NetworkSpec(kind="mlp", input_shape=(64,), num_classes=10, width=16, depth=2))
    engine = formula_costs(net, "stllr", 8, STLLRConfig(learn_steps=4, alpha_post=0.5,
                                                        layer_factors={1: {"alpha_post": 0.0}}))
    assert engine["learning_memory_bytes_formula_per_sample"] == st["learning_memory_bytes_formula_per_sample"]
    assert spec.violations(params, "stllr") == ["learning_memory_bytes_formula_per_sample=256 > 200 (200 B)"]
    assert spec.constraint_values(params, "stllr") == [56.0, learning - 20_000.0]
    assert spec.violations(dict(params, width=8), "stllr") == []


def test_grid(write_study):
    d = small_study()
    d.pop("per_layer")
    d["search"] = {"width": [16, 32], "depth": {"type": "int", "low": 1, "high": 3},
                   "alpha_post": {"type": "float", "low": -1.0, "high": 1.0, "step": 1.0}}
    d["sampler"] = {"name": "grid", "seed": 3}
    d["budget"]["trials"] = 18
    spec = load_study(str(write_study(d)))
    assert spec.grid() == {"width": [16, 32], "depth": [1, 2, 3], "alpha_post": [-1.0, 0.0, 1.0]}
    sampler = spec.make_sampler()
    assert isinstance(sampler, optuna.samplers.GridSampler)
    study = study_for(spec, sampler)
    seen = set()
    for _ in range(18):
        t = study.ask()
        p = spec.suggest(t)
        seen.add(tuple(sorted(p.items())))
        study.tell(t, [0.5, 1.0, 1.0])
    assert len(seen) == 18  # every grid point once
    d["sampler"] = {"name": "tpe"}
    d["search"]["alpha_post"].pop("step")
    assert load_study(str(write_study(d))).grid() is None


@pytest.mark.parametrize("name,cls", [("tpe", "TPESampler"), ("nsga2", "NSGAIISampler"), ("nsga3", "NSGAIIISampler"),
                                      ("gp", "GPSampler"), ("random", "RandomSampler")])
def test_make_sampler(write_study, name, cls):
    d = small_study()
    d["sampler"] = {"name": name, "seed": 5}
    d["constraints"] = ["learning_memory <= 8 MiB"]
    spec = load_study(str(write_study(d)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no deprecated constraints_func on Optuna 5
        sampler = spec.make_sampler()
    assert type(sampler).__name__ == cls
    assert spec.sampler.options["seed"] == 5


def test_constrained_nsga2_reads_the_trial_constraints(spec):
    # the runner records constraints with Trial.set_constraint; NSGA-II then prefers feasible trials
    study = study_for(spec, spec.make_sampler())
    for i in range(6):
        t = study.ask()
        spec.suggest(t)
        t.set_constraint("learning_memory", 1.0 if i % 2 else -1.0)
        study.tell(t, [0.1 * i, 1.0, 1.0])
    assert [t.constraints for t in study.trials][:2] == [{"learning_memory": -1.0}, {"learning_memory": 1.0}]


def test_same_seed_same_suggestions(spec):
    def run():
        study = study_for(spec, spec.make_sampler())
        out = []
        for _ in range(5):
            t = study.ask()
            out.append(spec.suggest(t))
            study.tell(t, [0.5, 1.0, 1.0])
        return out
    assert run() == run()


def test_overrides_and_frozen_copy(write_study, tmp_path):
    path = write_study()
    spec = load_study(str(path), {"budget.trials": "6", "fixed.training.weight_decay": "1e-4",
                                  "dataset.cache_dir": str(tmp_path)})
    assert spec.trials == 6 and spec.fixed["training"]["weight_decay"] == 1e-4 and spec.cache_dir == str(tmp_path)
    frozen = tmp_path / "frozen.yaml"
    frozen.write_text(spec.to_yaml())
    assert load_study(str(frozen)) == spec
    assert load_study(str(frozen)).to_dict() == spec.to_dict()
    # an S-TLLR-only study (no bptt, no baseline section) reads back too: --resume reads the frozen copy
    alone = load_study(str(path), {"rules": ["stllr"], "baseline": None})
    frozen.write_text(alone.to_yaml())
    assert load_study(str(frozen)) == alone and alone.to_dict()["baseline"] is None


def test_quantities():
    assert parse_quantity("8 MiB") == (8 * 2**20, True)
    assert parse_quantity("1.5 GB") == (1.5e9, True)
    assert parse_quantity("2e9") == (2e9, False)
    assert parse_quantity(3) == (3.0, False)
    assert parse_quantity("8 parsecs") is None and parse_quantity(True) is None
