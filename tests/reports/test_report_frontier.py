"""Frontier and hypervolume agree with Optuna's own; excluded rows never reach the frontier."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from report_cases import synthetic_runs
from optuna._hypervolume import compute_hypervolume
from optuna.study._multi_objective import _is_pareto_front

from reports._configs import config_table
from reports._load import DEFAULT_OBJECTIVES
from reports import frontier, hypervolume, hypervolume_table, pareto_mask, projections
from reports import matched_table


@pytest.mark.parametrize("k", [2, 3, 4])
def test_pareto_mask_and_hypervolume_equal_optuna(k):
    rng = np.random.default_rng(k)
    for trial in range(20):
        n = int(rng.integers(1, 60 if k < 4 else 30))
        # ties and duplicates on purpose: rounded values
        losses = np.round(rng.uniform(0, 1, (n, k)), 1 if trial % 2 else 3)
        np.testing.assert_array_equal(pareto_mask(losses), _is_pareto_front(losses, assume_unique_lexsorted=False))
        ref = np.full(k, 1.1)
        assert hypervolume(losses, ref) == pytest.approx(compute_hypervolume(losses, ref), rel=1e-12, abs=1e-12)


def _optuna_best(configs, objectives):
    study = optuna.create_study(directions=[o.direction for o in objectives])
    study.add_trials([optuna.trial.create_trial(values=[float(r[f"{o.metric}_mean"]) for o in objectives],
                                                user_attrs={"config_id": r["config_id"]})
                      for _, r in configs.iterrows()])
    return {t.user_attrs["config_id"] for t in study.best_trials}


def test_frontier_equals_optuna_best_trials_on_random_study():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    runs = synthetic_runs(stllr_configs=6, seeds=2, noise=0.03, seed=5)
    configs = config_table(runs[runs["status"] == "complete"].assign(study="s"))
    front = frontier(configs, DEFAULT_OBJECTIVES)
    assert set(front["config_id"]) == _optuna_best(configs, DEFAULT_OBJECTIVES)
    print(f"\nfrontier: {len(front)} of {len(configs)} configurations, as Optuna's best_trials")
    # every frontier point names the runs behind it and shows test accuracy beside it
    for _, r in front.iterrows():
        assert len(r["trial_ids"].split(";")) == r["n_seeds"] == 2
        assert np.isfinite(r["test_accuracy_mean"])
    hv = hypervolume_table(configs, DEFAULT_OBJECTIVES)
    row = hv[hv["rules"] == "all"].iloc[0]
    # the same normalised volume from Optuna's implementation
    from reports._frontier import _losses
    losses = _losses(configs, DEFAULT_OBJECTIVES)
    ideal, nadir = losses.min(0), losses.max(0)
    scaled = (losses - ideal) / (nadir - ideal)
    assert row["hypervolume_normalised"] == pytest.approx(compute_hypervolume(scaled, np.full(3, 1.1)) / 1.1**3)
    assert hv.set_index("rules").loc["all", "hypervolume_normalised"] >= hv.set_index("rules").loc["stllr", "hypervolume_normalised"]
    print("hypervolume (normalised):", dict(zip(hv["rules"], hv["hypervolume_normalised"].round(4))))


def test_excluded_rows_never_reach_the_frontier():
    runs = synthetic_runs()
    from reports._load import _normalise
    from pathlib import Path
    runs = _normalise(runs, "s", "shd", Path("results.parquet"))
    configs = config_table(runs[runs["status"] == "complete"])
    front = frontier(configs, DEFAULT_OBJECTIVES)
    assert not front["config_id"].str.startswith("x-").any()
    assert not any(t.startswith(("pruned", "failed", "running", "infeasible")) for ids in front["trial_ids"]
                   for t in ids.split(";"))
    proj = projections(configs, DEFAULT_OBJECTIVES)
    assert set(proj["config_id"]) == set(configs["config_id"])


def test_matched_table_ratios_match_the_formulas():
    runs = synthetic_runs(T=20, learn_steps=(5,))
    configs = config_table(runs[runs["status"] == "complete"])
    m = matched_table(configs)
    assert len(m) == 6  # 3 widths x 2 depths, each with both rules
    assert np.allclose(m["memory_ratio_formula"], 10.0) and np.allclose(m["memory_ratio_paper"], 10.0)
    expected = np.where(m["alpha_post"] == 0, 2 * 20 / (2 * 5), 2 * 20 / (3 * 5))
    assert np.allclose(m["mac_ratio_formula"], expected) and np.allclose(m["mac_ratio_paper"], expected)
    # selection by validation accuracy: the S-TLLR config chosen is the best by val, not by test
    for _, r in m.iterrows():
        cand = configs[(configs["arch_id"] == r["arch_id"]) & (configs["rule"] == "stllr")]
        assert r["stllr_val_accuracy_mean"] == cand["val_accuracy_mean"].max()
    print("\nmatched:", m[["arch_id", "accuracy_diff", "mac_ratio_formula", "memory_ratio_measured"]].round(3).to_dict("records")[:2])


def test_window_mode_memory_above_bptt_is_explained(tmp_path):
    """S-TLLR's mode comes from config_json; window mode measuring more than BPTT gets a sentence."""
    import json

    from report_cases import write_study
    from reports import build_report, window_memory_note

    runs = synthetic_runs(T=20, learn_steps=(20,), widths=(64,), depths=(1, 2))
    stllr = runs["rule"] == "stllr"
    runs["config_json"] = [json.dumps({"seed": 0, "training": {"rule": r, "stllr": {"mode": "window"}}})
                           for r in runs["rule"]]
    # window mode keeps the window's records: measured above BPTT's for every S-TLLR row
    runs.loc[stllr, "learning_memory_bytes_measured_per_sample"] = 2.0 * runs["learning_memory_bytes_measured_per_sample"].max()
    folder = write_study(tmp_path / "s", runs)
    out = build_report([folder], out=tmp_path / "out").parent
    m = matched_table(config_table(runs[runs["status"] == "complete"].assign(stllr_mode=lambda d: d["rule"].map(
        {"stllr": "window"}))))
    assert (m["stllr_mode"] == "window").all() and (m["memory_ratio_measured"] < 1).all()
    note = window_memory_note(m)
    assert note.startswith(f"In {len(m)} of {len(m)} matched architectures") and "window mode" in note
    summary = (out / "summary.md").read_text()
    assert "S-TLLR measured more learning memory than BPTT" in summary
    assert set(__import__("pandas").read_csv(out / "matched.csv")["stllr_mode"]) == {"window"}
    # the same runs in streaming (or chunked) mode need no explanation
    assert window_memory_note(m.assign(stllr_mode="streaming")) is None
    assert window_memory_note(m.assign(memory_ratio_measured=2.0)) is None
    assert "formula" not in window_memory_note(m.assign(memory_ratio_formula=float("nan"))).split(")")[0]
    # the mode as the loader reads it: S-TLLR rows only, from config_json, robust to odd files
    from reports._load import _stllr_mode
    assert _stllr_mode(json.dumps({"training": {"stllr": {"mode": "streaming"}}}), "stllr") == "streaming"
    assert _stllr_mode(json.dumps({"training": {"stllr": {}}}), "stllr") == "window"  # rows written before the chunked default ran window mode
    for odd in (None, "not json", json.dumps({"training": {"stllr": 3}}), json.dumps({"training": {"stllr": {"mode": None}}})):
        assert _stllr_mode(odd, "stllr") is None
    assert _stllr_mode(json.dumps({"training": {"stllr": {"mode": "window"}}}), "bptt") is None


def test_runs_still_learning_at_the_last_epoch_are_flagged(tmp_path):
    """BPTT's curves still climb at the end of the budget, S-TLLR's are flat: the note names BPTT only."""
    import json

    from report_cases import write_study
    from reports import build_report, still_learning_note
    from reports._load import late_gain

    assert late_gain(json.dumps([{"train_accuracy": a} for a in (0.1, 0.5, 0.6, 0.9)])) == 0.9 - 0.5
    assert np.isnan(late_gain(json.dumps([{"train_accuracy": 0.1}, {"train_accuracy": 0.2}])))  # too short
    assert np.isnan(late_gain("[]")) and np.isnan(late_gain(None)) and np.isnan(late_gain("not json"))

    runs = synthetic_runs(T=20, learn_steps=(20,), widths=(64, 128), depths=(1,))
    rising = json.dumps([{"epoch": e, "train_accuracy": 0.1 * e} for e in range(1, 6)])  # +0.2 over 2 epochs
    flat = json.dumps([{"epoch": e, "train_accuracy": 0.9} for e in range(1, 6)])
    runs["curves_json"] = np.where(runs["rule"] == "bptt", rising, flat)
    out = build_report([write_study(tmp_path / "s", runs)], out=tmp_path / "out").parent
    m = __import__("pandas").read_csv(out / "matched.csv")
    assert np.allclose(m["bptt_late_train_gain"], 0.2) and np.allclose(m["stllr_late_train_gain"], 0.0)
    note = still_learning_note(m)
    assert note.startswith("Not converged at the end of the epoch budget: BPTT in 2 of 2 matched architectures")
    assert "S-TLLR in" not in note and note in (out / "summary.md").read_text()
    assert still_learning_note(m.assign(bptt_late_train_gain=0.0)) is None
