"""Each mistake is one line naming the file, the key and the fix, raised before anything runs."""

from __future__ import annotations

import re

import pytest
from space_cases import small_study

from spaces import load_study
from stllr_engine.errors import StllrError


def error_of(write_study, change=None, text=None, overrides=None) -> str:
    d = small_study()
    if change is not None:
        change(d)
    path = write_study(d, text=text)
    with pytest.raises(StllrError) as e:
        load_study(str(path), overrides)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: ") or msg.startswith(f"{path.name}: ") or str(path.name) in msg.split(":")[0]
    return msg.split(": ", 1)[1]  # past the file name


def set_key(path: str, value):
    def change(d):
        node = d
        keys = path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return change


def drop_key(path: str):
    def change(d):
        node = d
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[k]
        del node[keys[-1]]
    return change


def test_the_small_study_is_valid(write_study):
    spec = load_study(str(write_study()))
    assert spec.name == "small" and spec.baseline_trials == 2


CASES = [
    # unknown keys, with the closest valid one
    ("unknown top key", set_key("budjet", {}), r"^budjet: unknown key \(did you mean 'budget'\?\); valid keys are name, "),
    ("unknown search param", set_key("search.lamda_pre", {"type": "float", "low": 0, "high": 1}),
     r"^search\.lamda_pre: unknown search parameter \(did you mean 'lambda_pre'\?\); searchable: "),
    ("unknown distribution key", set_key("search.lr.hihg", 1.0),
     r"^search\.lr\.hihg: unknown key \(did you mean 'high'\?\); valid keys are type, low, high"),
    ("unknown fixed key", set_key("fixed.training.optimiser", "adam"),
     r"^fixed\.training\.optimiser: unknown key \(did you mean 'optimizer'\?\); valid keys are "),
    ("unknown model field", set_key("model.fixed.gama", 0.5),
     r"^model\.fixed\.gama: unknown key \(did you mean 'gamma'\?\); valid keys are "),
    ("unknown budget key", set_key("budget.epoch", 3), r"^budget\.epoch: unknown key \(did you mean 'epochs'\?\)"),
    # bounds
    ("low > high", set_key("search.alpha_post", {"type": "float", "low": 1.0, "high": -1.0}),
     r"^search\.alpha_post: low 1\.0 > high -1\.0; swap them \(low: -1\.0, high: 1\.0\)$"),
    ("lambda above 1", set_key("search.lambda_pre", {"type": "float", "low": 0.0, "high": 1.5}),
     r"^search\.lambda_pre\.high: lambda_pre=1\.5 is outside \[0, 1\] \(a trace decay\); use a value in \[0, 1\]$"),
    ("lambda below 0 in a categorical", set_key("search.lambda_pre", {"type": "categorical", "choices": [0.5, -0.1]}),
     r"^search\.lambda_pre\.choices\[1\]: lambda_pre=-0\.1 is outside \[0, 1\]"),
    ("fixed lambda outside", set_key("fixed.stllr.lambda_post", 2.0),
     r"^fixed\.stllr: S-TLLR: lambda_post=2\.0 must lie in \[0, 1\]"),
    ("learn_steps > T (searched)", set_key("search.learn_steps", {"type": "int", "low": 1, "high": 12}),
     r"^search\.learn_steps\.high: learn_steps=12 exceeds T=8 \(the dataset's time steps\); use learn_steps <= 8"),
    ("learn_steps > T (fixed)", lambda d: (d["search"].pop("learn_steps"), d["fixed"]["stllr"].update(learn_steps=9)),
     r"^fixed\.stllr\.learn_steps: learn_steps=9 exceeds T=8 .*; use learn_steps <= 8"),
    ("default learn_steps > T", lambda d: (d["search"].pop("learn_steps"), d["dataset"]["options"].update(T=4)),
     r"^fixed\.stllr\.learn_steps: the default learn_steps=5 exceeds T=4; set fixed\.stllr\.learn_steps <= 4"),
    ("a float for an integer", set_key("search.depth", {"type": "float", "low": 1, "high": 3}),
     r"^search\.depth\.type: depth is an integer; use type: int"),
    ("log with low 0", set_key("search.lr", {"type": "float", "low": 0.0, "high": 1e-2, "log": True}),
     r"^search\.lr\.low: a log scale needs low > 0, got 0\.0; raise low above 0 or drop log$"),
    ("engine refuses a bound", set_key("search.lr", {"type": "float", "low": -1e-3, "high": 1e-2}),
     r"^search\.lr\.low: training: lr=-0\.001 must lie in \(0, inf"),
    ("a value instead of a distribution", set_key("search.lr", 0.01),
     r"^search\.lr: 0\.01 is a single value, not a distribution; move it to fixed"),
    ("searched and fixed", set_key("fixed.training.lr", 0.01), r"^search\.lr: lr is also set in fixed\.training; keep it"),
    # names
    ("unknown dataset", set_key("dataset.name", "digitz"),
     r"^dataset\.name: unknown dataset 'digitz' \(did you mean 'digits'\?\); use one of "),
    ("unknown dataset option", set_key("dataset.options.TT", 3),
     r"^dataset\.options\.TT: unknown key \(did you mean 'T'\?\); valid keys are T, test_fraction, seed, image$"),
    ("unknown sampler", set_key("sampler", {"name": "nsga_2", "seed": 0}),
     r"^sampler\.name: unknown sampler 'nsga_2' \(did you mean 'nsga2'\?\); use one of tpe, nsga2, nsga3, gp, random, grid$"),
    ("unknown sampler option", set_key("sampler.populaton_size", 4),
     r"^sampler\.populaton_size: unknown key \(did you mean 'population_size'\?\)"),
    ("unknown objective", set_key("objectives", ["val_accuracy", "learning_mac"]),
     r"^objectives\[1\]\.metric: unknown metric 'learning_mac' \(did you mean 'learning_macs'\?\); use a results column"),
    ("objective on the test set", set_key("objectives", ["test_accuracy"]),
     r"^objectives\[0\]\.metric: test_accuracy is the held-out score .*; use val_accuracy$"),
    ("objective against its sense", set_key("objectives", [{"metric": "accuracy", "direction": "minimize"}]),
     r"^objectives\[0\]\.direction: val_accuracy is better when it is higher; use direction: maximize$"),
    ("no validation split", set_key("fixed.data.val_fraction", 0.0),
     r"^fixed\.data\.val_fraction: is 0, so there is no validation score to select on; use a fraction"),
    ("flow network on classes", set_key("model.kind", "flownet"),
     r"^model\.kind: 'flownet' on dataset '\w+': a flow network needs an optical-flow dataset; use a classifier"),
    ("classifier on flow", set_key("dataset", {"name": "flow_synthetic"}),
     r"^model\.kind: '\w+' on dataset 'flow_synthetic': an optical-flow dataset needs a flow network; use kind: flownet$"),
    ("unknown model", set_key("model.kind", "cnn"), r"^model\.kind: unknown model 'cnn'.*; use one of rsnn, mlp, vgg, flownet$"),
    # constraints
    ("measured metric constraint", set_key("constraints", ["learning_memory_bytes_measured_per_batch <= 1 MiB"]),
     r"^constraints\[0\]: learning_memory_bytes_measured_per_batch cannot be priced before training; constrain a "
     r"formula cost: forward_macs_formula_per_sample, "),
    ("bad constraint operator", set_key("constraints", ["learning_macs < 2e9"]),
     r"^constraints\[0\]: operator '<' is not supported; use <= or >=$"),
    ("bad constraint unit", set_key("constraints", ["learning_macs <= 8 MiB"]),
     r"^constraints\[0\]: learning_macs_formula_per_sample is not counted in bytes; drop the byte unit"),
    ("bad constraint number", set_key("constraints", ["learning_memory <= lots"]),
     r"^constraints\[0\]: 'lots' is not a number with an optional unit; write e\.g\. 8 MiB"),
    # structure
    ("per_layer without depth", set_key("search.depth", {"type": "int", "low": 1, "high": 1}),
     r"^search\.depth: low == high == 1, a fixed value; move it to fixed"),
    ("per_layer factor not searched", set_key("per_layer", ["lambda_post"]),
     r"^per_layer: lambda_post is not searched, .*; add search\.lambda_post or remove lambda_post from per_layer$"),
    ("per_layer at depth 1", lambda d: (d["search"].pop("depth"),),
     r"^per_layer: the network never has more than one hidden layer \(depth 1\); search depth"),
    ("grid with a continuous float", set_key("sampler", {"name": "grid"}),
     r"^sampler\.name: grid needs a fixed set of parameters but per_layer adds parameters"),
    ("grid too small for the budget",
     lambda d: (d.pop("per_layer"), d["search"].clear(), d["search"].update(width=[16, 32]),
                d.update(sampler="grid")),
     r"^budget\.trials: 4 exceeds the grid's 2 points; use trials: 2"),
    ("baseline searches the architecture", set_key("baseline.search.width", [16, 32]),
     r"^baseline\.search\.width: the baseline copies the architecture .*; search only "),
    ("baseline trials without a search", set_key("baseline", {"trials": 3}),
     r"^baseline\.trials: 3 without baseline\.search would train one BPTT configuration several times; add "),
    ("baseline without bptt", set_key("rules", ["stllr"]),
     r"^baseline: rules has no bptt, so there is no baseline to search; add bptt to rules or remove baseline$"),
    ("scheduler with three objectives", set_key("scheduler", {"name": "asha"}),
     r"^scheduler: asha stops trials early by one metric, but the study has 3 objectives; remove scheduler"),
    ("seeds repeated", set_key("budget.seeds", [0, 0]), r"^budget\.seeds: \[0, 0\] is not a list of distinct seeds"),
    ("epochs zero", set_key("budget.epochs", 0), r"^budget\.epochs: 0 is not an integer >= 1"),
    ("missing key", drop_key("model"), r"^model: missing; this key is required"),
    ("a field set elsewhere", set_key("fixed.training.epochs", 3),
     r"^fixed\.training\.epochs: is set elsewhere in a study file; set budget\.epochs instead$"),
    ("gpu share", set_key("resources.gpu", 1.5), r"^resources\.gpu: 1\.5 is not a GPU share"),
    ("storage", set_key("storage", "sqlite"), r"^storage: 'sqlite' is not supported; use journal"),
]


@pytest.mark.parametrize("case,change,pattern", CASES, ids=[c[0] for c in CASES])
def test_one_line_error(write_study, case, change, pattern):
    msg = error_of(write_study, change)
    assert re.search(pattern, msg), msg


def test_missing_data_folder(write_study, tmp_path):
    d = small_study()
    d["dataset"] = {"name": "shd", "options": {"T": 20}, "data_dir": str(tmp_path / "absent")}
    d["search"]["learn_steps"]["high"] = 20
    msg = error_of(write_study, lambda x: x.update(d))
    assert msg == (f"dataset.data_dir: folder {tmp_path / 'absent'} does not exist; give the folder holding SHD/ "
                   "(--set dataset.data_dir=/path)")


def test_yaml_mistakes(write_study):
    assert re.match(r"line 2: key 'name' is given twice in one mapping; keep one",
                    error_of(write_study, text="name: a\nname: b\n"))
    assert re.match(r"line \d+: not valid YAML", error_of(write_study, text="name: [a\n"))
    assert re.match(r"the file must be a mapping", error_of(write_study, text="- a\n").split(": ", 1)[-1]) or \
        "must be a mapping" in error_of(write_study, text="- a\n")


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(StllrError, match=r"^'quikstart' is neither a study file nor a preset \(did you mean "
                                         r"'quickstart'\?\): presets are quickstart, "):
        load_study("quikstart")
    with pytest.raises(StllrError, match=r"nope\.yaml: no such study file; give a path"):
        load_study(str(tmp_path / "nope.yaml"))


def test_override_is_validated_like_the_file(write_study):
    msg = error_of(write_study, overrides={"budget.trials": 0})
    assert msg.startswith("budget.trials: 0 is not an integer >= 1")
    msg = error_of(write_study, overrides={"search.lambda_pre.high": "2"})
    assert msg.startswith("search.lambda_pre.high: lambda_pre=2.0 is outside [0, 1]")
