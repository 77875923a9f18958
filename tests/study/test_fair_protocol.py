"""The fair comparison's plan (DESIGN §8), without Ray: paired seeds, equal tuning
settings, the matched baseline's objective and early stopping as the study file sets them."""

from __future__ import annotations

import torch

import spaces
from stllr_engine.experiment import load_data
from stllr_engine.network import build_network
from study.plan import Planner


def _spec(study_file, **changes):
    return spaces.load_study(str(study_file(**changes)))


def test_seed_s_of_both_rules_shares_split_order_and_initialisation(study_file):
    spec = _spec(study_file)
    params = {"width": 32, "alpha_post": -0.5, "learn_steps": 8}
    for seed in (0, 1):
        a = spec.experiment(params, "stllr", seed)
        b = spec.experiment({"width": 32, "learn_steps": 8, "loss": "per_step"}, "bptt", seed)
        (ta, va, _), (tb, vb, _) = load_data(a), load_data(b)
        assert va.dataset.indices == vb.dataset.indices  # the validation split
        order_a = [y.tolist() for _, y in ta]
        order_b = [y.tolist() for _, y in tb]
        assert order_a == order_b  # the data order of the first epoch
        na, nb = build_network(a.network), build_network(b.network)
        for (ka, pa), (kb, pb) in zip(na.state_dict().items(), nb.state_dict().items()):
            assert ka == kb and torch.equal(pa, pb)  # the initialisation
    # another seed is another split
    assert load_data(spec.experiment(params, "stllr", 0))[1].dataset.indices != \
        load_data(spec.experiment(params, "stllr", 1))[1].dataset.indices


def test_both_rules_get_the_same_tuning_settings(study_file):
    spec = _spec(study_file, baseline={"search": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
                                       "trials": 3, "loss": ["per_step", "sum_output"]})
    settings = spec.tuning_settings("mlp|32|1|16")
    assert len(settings) == 3 and len({s["lr"] for s in settings}) == 3
    assert all(1e-3 <= s["lr"] <= 1e-2 for s in settings)
    assert spec.tuning_settings("mlp|32|1|16") == settings  # again on a resume
    assert spec.tuning_settings("mlp|64|1|16") != settings  # each architecture its own draw
    assert spec.baseline_losses == ["per_step", "sum_output"]


def test_the_matched_baseline_learns_s_tllrs_objective_over_the_chosen_window(study_file):
    spec = _spec(study_file, budget={"trials": 4, "epochs": 6, "seeds": [0, 1], "patience": 2})
    bptt = spec.experiment({"width": 32, "learn_steps": 8, "loss": "per_step", "lr": 0.004}, "bptt", 0).training
    assert (bptt.loss_kind, bptt.loss_steps, bptt.lr, bptt.patience, bptt.epochs) == ("per_step", 8, 0.004, 2, 6)
    paper = spec.experiment({"width": 32, "loss": "sum_output"}, "bptt", 0).training
    assert (paper.loss_kind, paper.loss_steps) == ("sum_output", None)
    stllr = spec.experiment({"width": 32, "alpha_post": 0.0, "learn_steps": 8}, "stllr", 0).training
    assert (stllr.loss_kind, stllr.stllr.learn_steps, stllr.patience) == ("per_step", 8, 2)


def test_the_chosen_configuration_is_the_best_mean_validation_accuracy_with_every_seed(study_file):
    spec = _spec(study_file)
    planner = Planner(spec, "/tmp/x", 1)

    def rows(cid, arch, vals, status="complete"):
        return {f"{cid}-s{s}": {"trial_id": f"{cid}-s{s}", "config_id": cid, "arch_id": arch, "role": "search",
                                "status": status, "val_accuracy": v, "params_json": f'{{"id": "{cid}"}}'}
                for s, v in zip((0, 1), vals)}

    all_rows = {**rows("a", "A", [0.8, 0.6]), **rows("b", "A", [0.71, 0.71]), **rows("c", "A", [0.99]),
                **rows("d", "B", [0.5, 0.5], "failed"), **rows("e", "B", [0.4, 0.4])}
    chosen = planner.chosen(all_rows)
    assert chosen["A"][0] == "b" and abs(chosen["A"][2] - 0.71) < 1e-12  # c lacks a seed
    assert chosen["B"][0] == "e"  # d failed


def test_study_file_refusals_for_the_protocol(study_file):
    import pytest

    from stllr_engine.errors import StllrError

    with pytest.raises(StllrError, match=r"baseline.loss: .*not a list of distinct BPTT objectives"):
        _spec(study_file, baseline={"search": {"lr": [0.001, 0.01]}, "trials": 2, "loss": ["per_stp"]})
    with pytest.raises(StllrError, match=r"budget.patience: 0 is not an integer >= 1"):
        _spec(study_file, budget={"trials": 2, "epochs": 3, "patience": 0})
    with pytest.raises(StllrError, match=r"fixed.training.loss: is set elsewhere.*baseline.loss"):
        _spec(study_file, fixed={"training": {"loss": "per_step_all"}})


def test_s_tllr_can_be_tuned_on_the_papers_objective_too(study_file):
    """baseline.stllr_loss [per_step, sum_output] with baseline.loss [per_step, sum_output]: the
    2x2 of rule x objective. S-TLLR on CE(Σ_t o[t]) holds its window to the sequence's end: its
    formula memory is 2·N per window step, priced before training."""
    spec = _spec(study_file, baseline={"search": {"lr": [0.001, 0.01]}, "trials": 2,
                                       "loss": ["per_step", "sum_output"], "stllr_loss": ["per_step", "sum_output"]})
    assert spec.stllr_losses == ["per_step", "sum_output"]
    assert spaces.load_study(str(study_file())).stllr_losses == ["per_step"]  # the default
    params = {"width": 32, "alpha_post": -0.5, "learn_steps": 8}
    seq = spec.experiment({**params, "loss": "sum_output"}, "stllr", 0).training
    own = spec.experiment(params, "stllr", 0).training
    assert (seq.rule, seq.loss_kind, own.loss_kind) == ("stllr", "sum_output", "per_step")
    n = spec.price(params, "stllr")["learning_memory_values_formula_per_sample"]
    assert spec.price({**params, "loss": "sum_output"}, "stllr")["learning_memory_values_formula_per_sample"] == 8 * n
    assert spec.to_dict()["baseline"]["stllr_loss"] == ["per_step", "sum_output"]


def test_s_tllr_objective_refusals(study_file):
    import pytest

    from stllr_engine.errors import StllrError

    with pytest.raises(StllrError, match=r"baseline.stllr_loss: .*not a list of distinct S-TLLR objectives.*"
                                         r"per_step, sum_output"):
        _spec(study_file, baseline={"search": {"lr": [0.001, 0.01]}, "trials": 2, "stllr_loss": ["per_step_all"]})
    with pytest.raises(StllrError, match=r"baseline.stllr_loss: sum_output with fixed.stllr.online: true"):
        _spec(study_file, baseline={"search": {"lr": [0.001, 0.01]}, "trials": 2, "stllr_loss": ["sum_output"]},
              fixed={"training": {"lr": 3e-3}, "stllr": {"online": True}, "data": {"batch_size": 128}})
    spec = _spec(study_file)
    with pytest.raises(StllrError, match="loss='per_step_all' is not an objective S-TLLR learns"):
        spec.experiment({"width": 32, "loss": "per_step_all"}, "stllr", 0)
