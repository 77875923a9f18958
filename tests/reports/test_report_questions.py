"""Q1 answers: inconclusive on noise, a planted effect found with its sign; importance sign for maxima."""

from __future__ import annotations

import numpy as np
import optuna
import pandas as pd
import pytest
from report_cases import synthetic_runs

from reports._configs import config_table
from reports._load import DEFAULT_OBJECTIVES, Objective
from reports import answer_q1, factor_effects, factor_levels, param_importance


def _configs(**kw) -> pd.DataFrame:
    runs = synthetic_runs(**kw)
    return config_table(runs[runs["status"] == "complete"])


def test_pure_noise_is_inconclusive():
    claims = 0
    for seed in range(12):
        configs = _configs(alpha_effect=0.0, width_effect=0.0, stllr_configs=5, seed=100 + seed)
        effects = factor_effects(configs, n_boot=400)
        claims += int((effects["verdict"] != "inconclusive").sum())
        if seed == 0:
            text = " ".join(answer_q1(effects, configs)["shd"])
            assert text.count("inconclusive") == 3, text
            print("\nnoise answer:", text[:200])
    # family-wise 95% per dataset: about 0.6 false claims expected over 12 noise studies
    assert claims <= 2, claims


def test_planted_alpha_post_effect_is_found_with_its_size():
    configs = _configs(alpha_effect=0.03, stllr_configs=5, seed=3)
    effects = factor_effects(configs).set_index("factor")
    a = effects.loc["alpha_post"]
    assert a["verdict"] == "higher is better"
    assert a["effect_lo"] <= 0.06 <= a["effect_hi"]  # true change over [-1, 1] is 2 x 0.03
    assert a["n_configs"] == 30 and a["n_runs"] == 90
    text = " ".join(answer_q1(effects.reset_index(), configs)["shd"])
    assert "α_post: higher is better" in text and "30 configurations, 90 runs" in text
    print("\nplanted:", text[:260])
    neg = factor_effects(_configs(alpha_effect=-0.03, stllr_configs=5, seed=3)).set_index("factor")
    assert neg.loc["alpha_post", "verdict"] == "lower is better"


def test_too_few_configurations_is_inconclusive():
    configs = _configs(alpha_effect=0.2, widths=(64,), depths=(1,), stllr_configs=4)
    effects = factor_effects(configs)
    assert (effects["verdict"] == "inconclusive").all()
    assert effects["reason"].str.startswith("too few configurations").all()


def test_per_layer_factors_are_analysed_when_varied():
    configs = _configs(layer_factors=True, stllr_configs=5)
    effects = factor_effects(configs)
    assert {"layer0_alpha_post", "layer1_alpha_post"} <= set(effects["factor"])
    levels = factor_levels(configs)
    assert {"alpha_post", "layer0_alpha_post"} <= set(levels["factor"])


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


def test_a_joint_fit_wider_than_the_data_is_called_uninformative():
    """Six per-layer terms fit on 14 deep configurations: intervals wider than the accuracies' whole spread."""
    configs = _deep_layer_study(n_deep=14)
    effects = factor_effects(configs, n_boot=400).set_index("factor")
    layer = effects.loc[[f for f in effects.index if f.startswith("layer")]]
    assert len(layer) == 6 and (layer["n_configs"] == 14).all()
    wide = layer[layer["ci_width"] > layer["spread"]]
    assert len(wide) >= 1, layer[["ci_width", "spread"]]
    spans_zero = (wide["effect_lo"] <= 0) & (wide["effect_hi"] >= 0)
    assert spans_zero.any() and (wide.loc[spans_zero, "verdict"] == "inconclusive").all()
    assert wide.loc[spans_zero, "reason"].str.startswith("uninformative").all()
    text = " ".join(answer_q1(effects.reset_index(), configs)["shd"])
    assert "inconclusive — uninformative" in text and "more than the whole spread" in text
    # with many deep configurations the same per-layer fit is informative (narrower than the spread)
    many = factor_effects(_deep_layer_study(n_deep=120), n_boot=400).set_index("factor")
    assert (many.loc["layer1_alpha_post", "ci_width"] < many.loc["layer1_alpha_post", "spread"])
    assert not many["reason"].str.startswith("uninformative").any()


def _small_study(n: int, effect: float, seed: int) -> pd.DataFrame:
    """n configurations, three factors and depth; accuracy rises by ``effect`` across α_post's range."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        a, depth = rng.uniform(-1, 1), int(rng.integers(1, 3))
        rows.append({"dataset": "shd", "rule": "stllr", "config_id": f"c{i}", "n_seeds": 3, "depth": depth,
                     "alpha_post": a, "lambda_post": rng.uniform(0, 1), "lambda_pre": rng.uniform(0, 1),
                     "val_accuracy_mean": 0.7 + effect * a / 2 - 0.03 * (depth - 1) + rng.normal(0, 0.02),
                     "test_accuracy_mean": 0.7, "val_accuracy_std": 0.01, "test_accuracy_std": 0.01})
    return pd.DataFrame(rows)


def test_a_wide_interval_that_excludes_zero_keeps_its_verdict_as_imprecise():
    """A real effect seen in 12 configurations: significant, but poorly sized. The sign stands."""
    configs = _small_study(12, effect=0.08, seed=27)
    a = factor_effects(configs, n_boot=400).set_index("factor").loc["alpha_post"]
    assert a["ci_width"] > a["spread"] and a["effect_lo"] > 0
    assert a["verdict"] == "higher is better" and a["reason"].startswith("imprecise")
    text = " ".join(answer_q1(factor_effects(configs, n_boot=400), configs)["shd"])
    assert "α_post: higher is better" in text and "imprecise: the interval is wider than the whole spread" in text


def test_bonferroni_counts_network_wide_and_per_layer_factors_together():
    effects = factor_effects(_deep_layer_study(n_deep=60), n_boot=200)
    assert len(effects) == 9 and np.allclose(effects["ci_level"], 1 - 0.05 / 9)
    assert np.allclose(factor_effects(_configs(stllr_configs=5), n_boot=200)["ci_level"], 1 - 0.05 / 3)


def test_layer0_that_restates_the_network_wide_factor_is_not_counted_twice():
    configs = _deep_layer_study(n_deep=60)
    levels = set(factor_levels(configs)["factor"])
    assert {"alpha_post", "layer1_alpha_post"} <= levels and "layer0_alpha_post" not in levels
    imp = set(param_importance(configs, (Objective("val_accuracy", "maximize"),))["param"])
    assert "layer0_alpha_post" not in imp and {"alpha_post", "layer1_alpha_post"} <= imp
    # in the per-layer fit over the deep networks layer 0 is a term of its own
    assert "layer0_alpha_post" in set(factor_effects(configs, n_boot=200)["factor"])


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
    text = " ".join(answer_q1(factor_effects(configs, n_boot=50), configs)["shd"])
    assert f"Best S-TLLR configuration by validation accuracy: {tie} " in text
    w = window_table(configs)
    assert w.loc[w["rule"] == "stllr", "best_config_id"].tolist() == [tie]
    assert matched_table(configs)["stllr_config_id"].tolist() == [tie]
