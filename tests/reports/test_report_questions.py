"""Q1's Optuna importance (its sign for maxima, every objective, per-layer factors); the tie-break of the best."""

from __future__ import annotations

import numpy as np
import optuna
import pandas as pd
import pytest
from report_cases import synthetic_runs

from reports._configs import config_table
from reports._load import DEFAULT_OBJECTIVES, Objective
from reports import param_importance


def _configs(**kw) -> pd.DataFrame:
    runs = synthetic_runs(**kw)
    return config_table(runs[runs["status"] == "complete"])


def _planted_tails(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """Accuracy is high only when a is in a narrow band, and very low only when b is."""
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    acc = 0.5 + 0.4 * (np.abs(a - 0.5) < 0.05) - 0.4 * (np.abs(b - 0.5) < 0.05) + rng.normal(0, 0.01, n)
    return pd.DataFrame({"dataset": "shd", "rule": "stllr", "config_id": [f"c{i}" for i in range(n)], "n_seeds": 1,
                         "alpha_post": a, "lambda_pre": b, "val_accuracy_mean": acc, "test_accuracy_mean": acc})


def test_importance_sign_for_a_maximised_objective():
    configs = _planted_tails()
    imp = param_importance(configs, (Objective("val_accuracy", "maximize"),)).set_index("param")["importance"]
    # reaching HIGH accuracy depends on alpha_post (a), not on lambda_pre (b)
    assert imp["alpha_post"] > 0.8 > imp["lambda_pre"], imp.to_dict()
    # Optuna's default ranks LOW values as good: without the negated target it finds b instead
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    dist = optuna.distributions.FloatDistribution(0, 1)
    study.add_trials([optuna.trial.create_trial(params={"alpha_post": r.alpha_post, "lambda_pre": r.lambda_pre},
                                                distributions={"alpha_post": dist, "lambda_pre": dist},
                                                value=r.val_accuracy_mean) for r in configs.itertuples()])
    with pytest.warns(UserWarning, match="low `target` values"):
        naive = optuna.importance.get_param_importances(study, target=lambda t: t.values[0])
    assert naive["lambda_pre"] > naive["alpha_post"]
    print("\nimportance (negated target):", imp.round(3).to_dict(), "naive:", {k: round(v, 3) for k, v in naive.items()})


def test_importance_on_the_synthetic_study_covers_every_objective():
    imp = param_importance(_configs(stllr_configs=5), DEFAULT_OBJECTIVES)
    assert set(imp["objective"]) == {o.metric for o in DEFAULT_OBJECTIVES}
    macs = imp[imp["objective"] == "learning_macs_formula_per_sample"].set_index("param")
    assert macs.loc["learn_steps", "direction"] == "-"  # a longer window costs more MACs: worse


def _deep_layer_study(n_deep: int, seed: int = 0) -> pd.DataFrame:
    """Depth-1 and depth-2 configurations where, as the runner writes them, layer 0 restates the
    network-wide factors and only layer 1 has its own; accuracy is pure noise around 0.7."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(40 + n_deep):
        deep = i >= 40
        f = {"alpha_post": rng.uniform(-1, 1), "lambda_post": rng.uniform(0, 1), "lambda_pre": rng.uniform(0, 1)}
        row = {"dataset": "shd", "rule": "stllr", "config_id": f"c{i:03d}", "n_seeds": 3, "depth": 2 if deep else 1,
               **f, "val_accuracy_mean": 0.7 + rng.normal(0, 0.02), "test_accuracy_mean": 0.7,
               "val_accuracy_std": 0.01, "test_accuracy_std": 0.01}
        for k, v in f.items():
            row[f"layer0_{k}"] = v if deep else np.nan
            row[f"layer1_{k}"] = rng.uniform(0, 1) if deep else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def test_layer0_that_restates_the_network_wide_factor_is_not_counted_twice():
    configs = _deep_layer_study(n_deep=60)
    imp = set(param_importance(configs, (Objective("val_accuracy", "maximize"),))["param"])
    assert "layer0_alpha_post" not in imp and {"alpha_post", "layer1_alpha_post"} <= imp


def test_every_section_names_the_same_best_configuration_when_two_tie():
    """Two S-TLLR configurations tie on validation accuracy: fewer learning MACs wins everywhere."""
    from reports import matched_table, window_table

    runs = synthetic_runs(widths=(64,), depths=(1,), stllr_configs=3, learn_steps=(20,), seed=5)
    runs = runs[runs["status"] == "complete"].copy()
    ids = sorted(runs.loc[runs["rule"] == "stllr", "config_id"].unique())
    top, tie = ids[0], ids[1]  # `tie` has the larger id but, below, fewer MACs: it must win
    runs.loc[runs["config_id"].isin([top, tie]), "val_accuracy"] = 0.99
    runs.loc[runs["config_id"] == tie, "learning_macs_formula_per_sample"] = 1.0
    configs = config_table(runs)
    w = window_table(configs)
    assert w.loc[w["rule"] == "stllr", "best_config_id"].tolist() == [tie]
    assert matched_table(configs)["stllr_config_id"].tolist() == [tie]


def test_q1_when_every_configuration_collapsed_fits_no_surface():
    """Every S-TLLR configuration at chance (e.g. one epoch of a tiny net): the collapse is
    reported, and the surface says why it is missing instead of failing on no data."""
    from reports._questions import q1_analysis

    runs = synthetic_runs(alpha_effect=0.0)
    runs["val_accuracy"] = runs["test_accuracy"] = 0.05  # chance of 20 classes
    res = q1_analysis(config_table(runs), n_boot=200, chance=0.05)
    models = res.tables["q1_surface_models.csv"]
    assert (models["model"] == "none").all()
    assert (models["reason"] == "no configuration above the collapse level").all()
    assert (models["n_collapsed"] == models["n_total"]).all()
