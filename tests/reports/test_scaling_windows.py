"""Q2 with its structure (DESIGN §8): the gap per window and per architecture slice, never pooled;
cost exponents stated from the formulas and checked against the formula columns."""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
from report_cases import synthetic_runs

from reports._claims import N_BOOT, holm
from reports._configs import config_table
from reports._html import Bullets
from reports._matched import matched_table
from reports._scaling import cost_exponents, q2_analysis, q2_items

T = 20


def _runs(gap, *, widths=(64, 128, 256), depths=(1, 2, 4), windows=(5, 20), seeds=3, noise=0.004, shared=0.0,
          objectives=("sum_output",), seed=0):
    """BPTT at 0.8 on every architecture (once per objective); S-TLLR at 0.8 + gap(learn_steps, width,
    depth), two configurations per window (the second a little worse), ``seeds`` runs each. Seed s
    of every configuration of an architecture shares an offset of sd ``shared`` (its split, data
    order and initialisation)."""
    rng = np.random.default_rng(seed)
    rows = []
    for w in widths:
        for d in depths:
            arch = f"rsnn|{w}|{d}|{T}"
            offset = rng.normal(0, shared, seeds)
            cfgs = [("bptt", T, 0.8, 0.0, kind) for kind in objectives]
            cfgs += [("stllr", ls, 0.8 + gap(ls, w, d) - k * 0.01, a, "per_step")
                     for ls in windows for k, a in enumerate((-0.5, 0.5))]
            for i, (rule, ls, acc, a, kind) in enumerate(cfgs):
                cid = f"{arch}|{i}"
                for s in range(seeds):
                    v = acc + offset[s] + rng.normal(0, noise)
                    rows.append({"study": "q2", "trial_id": f"{cid}-s{s}", "config_id": cid, "seed": s,
                                 "dataset": "shd", "rule": rule, "arch_id": arch, "model": "rsnn", "width": w,
                                 "depth": d, "T": T, "learn_steps": ls, "alpha_post": a if rule == "stllr" else np.nan,
                                 "loss_kind": kind, "val_accuracy": v, "test_accuracy": v + rng.normal(0, noise)})
    return pd.DataFrame(rows)


def _depth_at_quarter(ls, w, d):
    """S-TLLR loses 5 points per doubling of depth with learn_steps = T/4; flat with learn_steps = T."""
    return -0.05 * np.log2(d) if ls == T // 4 else 0.0


def test_gap_depends_on_depth_in_one_window_only_and_no_slope_pools_windows():
    configs = config_table(_runs(_depth_at_quarter))
    result = q2_analysis(configs, matched_table(configs))
    claims = {c.key: c for c in holm(result.claims)}
    slopes = result.tables["q2_gap_slopes.csv"]
    assert slopes["window"].notna().all() and set(slopes["window"]) == {0.25, 1.0}
    assert all("|window=" in k for k in claims)
    # 3 widths x 2 windows depth slopes + 3 depths x 2 windows width slopes
    assert len(claims) == 12 and set(slopes["size"]) == {"width", "depth"}
    for w in (64, 128, 256):
        quarter = claims[f"q2:shd:gap~depth|window=0.25,width={w}"]
        assert quarter.holds() and quarter.low < -0.05 < quarter.high, quarter
        assert not claims[f"q2:shd:gap~depth|window=1,width={w}"].holds()
    assert not any(c.holds() for k, c in claims.items() if "gap~width" in k)
    text = " ".join(" ".join(i.items) for i in q2_items(result) if isinstance(i, Bullets))
    assert text.count("S-TLLR loses ground to BPTT as it grows") == 3
    assert "learn_steps/T = 1 (learn_steps 20), width 64; depth 1, 2, 4: " in text
    q = claims["q2:shd:gap~depth|window=0.25,width=128"]
    f = claims["q2:shd:gap~depth|window=1,width=128"]
    print(f"\ndepth slope at T/4 (width 128): {q.estimate:+.4f} [{q.low:+.4f}, {q.high:+.4f}] p_adj {q.p_adj:.2g}; "
          f"at T: {f.estimate:+.4f} [{f.low:+.4f}, {f.high:+.4f}] p_adj {f.p_adj:.2g}")


def test_window_gaps_pick_the_best_configuration_of_each_window_by_validation():
    configs = config_table(_runs(_depth_at_quarter, widths=(64,), depths=(1, 2)))
    gaps = q2_analysis(configs, matched_table(configs), n_boot=200).tables["q2_gap_by_window.csv"]
    assert len(gaps) == 4 and set(gaps["learn_steps"]) == {5, 20}
    assert gaps["stllr_config_id"].str.endswith(("|1", "|3")).all()  # the better of each window's two
    assert (gaps["gap_se"] > 0).all() and (gaps["n_pairs"] == 3).all() and (gaps["gap_df"] == 2).all()


def test_the_gap_is_paired_by_seed():
    """A seed effect both rules share (sd 3 points) cancels in the paired gap, not in the means' difference."""
    configs = config_table(_runs(_depth_at_quarter, shared=0.03, seeds=5, seed=1))
    gaps = q2_analysis(configs, matched_table(configs), n_boot=200).tables["q2_gap_by_window.csv"]
    unpaired = np.sqrt(gaps["stllr_test_accuracy_std"] ** 2 / 5 + gaps["bptt_test_accuracy_std"] ** 2 / 5)
    assert (gaps["gap_se"] < 0.5 * unpaired).mean() > 0.8 and (gaps["gap_df"] == 4).all()
    paired = {c.key: c for c in holm(q2_analysis(configs, matched_table(configs)).claims)}
    keys = [f"q2:shd:gap~depth|window=0.25,width={w}" for w in (64, 128, 256)]
    assert all(paired[k].holds() for k in keys)
    # the same runs without their seeds: Welch's difference of means counts the seed effect as noise
    blind = configs.drop(columns="test_accuracy_by_seed")
    welch = {c.key: c for c in holm(q2_analysis(blind, matched_table(configs)).claims)}
    for k in keys:
        assert paired[k].high - paired[k].low < 0.5 * (welch[k].high - welch[k].low), (paired[k], welch[k])
    print(f"\ndepth slope at T/4, width 64: paired {paired[keys[0]].estimate:+.4f} [{paired[keys[0]].low:+.4f}, "
          f"{paired[keys[0]].high:+.4f}], unpaired [{welch[keys[0]].low:+.4f}, {welch[keys[0]].high:+.4f}]")


def test_each_bptt_objective_is_its_own_comparison():
    configs = config_table(_runs(_depth_at_quarter, widths=(64, 128), depths=(1, 2), objectives=("per_step", "sum_output")))
    result = q2_analysis(configs, matched_table(configs), n_boot=500)
    gaps = result.tables["q2_gap_by_window.csv"]
    assert set(gaps["bptt_loss_kind"]) == {"per_step", "sum_output"} and len(gaps) == 2 * 2 * 2 * 2
    keys = {c.key for c in result.claims}
    assert "q2:shd:gap~depth|window=0.25,width=64,bptt=per_step" in keys
    assert "q2:shd:gap~depth|window=0.25,width=64,bptt=sum_output" in keys
    assert len(keys) == len(result.claims) == 2 * (2 * 2 + 2 * 2)


def test_pure_noise_gap_gives_no_slope_claim():
    held = 0
    for seed in range(5):
        configs = config_table(_runs(lambda ls, w, d: 0.0, seed=10 + seed))
        held += any(c.holds() for c in holm(q2_analysis(configs, matched_table(configs), n_boot=2000).claims))
    assert held <= 1


def _costs_study() -> pd.DataFrame:
    runs = pd.concat([synthetic_runs(study=f"T{t}", T=t, depths=(1, 2, 3), stllr_configs=6, seed=t)
                      for t in (20, 40)], ignore_index=True)
    return config_table(runs[runs["status"] == "complete"])


def _syn(w: int, d: int) -> int:
    """report_cases' synapse count: 70 inputs, 20 classes, recurrent layers."""
    return 70 * w + (d - 1) * w * w + d * w * w + w * 20


def test_cost_exponents_are_the_formulas_and_agree_with_the_formula_columns():
    e = cost_exponents(_costs_study()).set_index(["rule", "cost", "size"])
    expected = {("bptt", "memory", "width"): 1, ("bptt", "memory", "depth"): 1, ("bptt", "memory", "T"): 1,
                ("bptt", "macs", "width"): 2, ("bptt", "macs", "depth"): 1, ("bptt", "macs", "T"): 1,
                ("stllr", "memory", "width"): 1, ("stllr", "memory", "depth"): 1, ("stllr", "memory", "T"): 0,
                ("stllr", "memory", "learn_steps"): 0, ("stllr", "macs", "width"): 2, ("stllr", "macs", "depth"): 1,
                ("stllr", "macs", "T"): 0, ("stllr", "macs", "learn_steps"): 1}
    assert set(e.index) == set(expected)
    for k, v in expected.items():
        assert e.loc[k, "exponent"] == v and e.loc[k, "check"] == "agrees", (k, e.loc[k].to_dict())
    assert not e.loc[("bptt", "macs", "width"), "exact"] and e.loc[("bptt", "memory", "T"), "exact"]
    # the local exponents are ratios of the formula, not a fit: width 64 → 128 at depth 1 is log2(S(128)/S(64))
    local = np.log2(_syn(128, 1) / _syn(64, 1))
    assert np.isclose(e.loc[("bptt", "macs", "width"), "local_min"], local, rtol=1e-12)
    assert np.isclose(e.loc[("bptt", "macs", "width"), "local_max"], np.log2(_syn(256, 3) / _syn(128, 3)))
    # depth: S = a + b·depth with a < 0 for wide layers (the first layer has no feed-forward width² term)
    assert np.isclose(e.loc[("stllr", "macs", "depth"), "local_max"], np.log(_syn(256, 2) / _syn(256, 1)) / np.log(2))
    assert e.loc[("stllr", "memory", "learn_steps"), "measured_max"] == 0.0
    print(f"\nMACs against width: formula exponent 2 (for large width), local {local:.4f} at 64→128")


def test_a_formula_column_that_breaks_the_formula_is_flagged():
    configs = _costs_study()
    bad = configs.copy()
    i = bad.index[(bad["rule"] == "bptt") & (bad["width"] == 128) & (bad["depth"] == 2)][0]
    bad.loc[i, "learning_macs_formula_per_sample_mean"] *= 1.5
    e = cost_exponents(bad).set_index(["rule", "cost", "size"])
    assert e.loc[("bptt", "macs", "width"), "check"] == "DIFFERS"
    assert e.loc[("bptt", "memory", "width"), "check"] == "agrees"


def test_ten_thousand_resamples_by_default():
    assert inspect.signature(q2_analysis).parameters["n_boot"].default == N_BOOT == 10_000
    configs = config_table(_runs(_depth_at_quarter, widths=(64, 128), depths=(1, 2)))
    result = q2_analysis(configs, matched_table(configs))
    assert result.n_boot == 10_000 and all(c.extra["n_boot"] == 10_000 for c in result.claims)


def test_each_window_is_s_tllrs_factor_search_on_its_own_objective():
    """The equal tuning's extra learning-rate trials (role tuned, at the chosen window only) and
    S-TLLR on CE(Σ_t o[t]) would favour one window: the gap per window takes neither."""
    from reports._scaling import window_gaps

    runs = _runs(lambda ls, w, d: 0.0, widths=(64,), depths=(1,))
    runs["role"] = np.where(runs["rule"] == "stllr", "search", "baseline")
    extra = runs[(runs["rule"] == "stllr") & (runs["learn_steps"] == T)].copy()
    for role, kind, tag in (("tuned", "per_step", "t"), ("tuned", "sum_output", "o")):
        e = extra.assign(role=role, loss_kind=kind, config_id=extra["config_id"] + f"|{tag}",
                         trial_id=extra["trial_id"] + f"|{tag}", val_accuracy=0.99, test_accuracy=0.99)
        runs = pd.concat([runs, e])
    configs = config_table(runs)
    gaps = window_gaps(configs, matched_table(configs))
    assert len(gaps) == 2 and not gaps["stllr_config_id"].str.contains(r"\|[to]$").any()
    assert (gaps["gap"].abs() < 0.02).all()  # the planted gap is 0: no 19-point window from the extra runs
    costs = cost_exponents(configs)
    st = costs[(costs["rule"] == "stllr") & (costs["cost"] == "memory") & (costs["size"] == "learn_steps")]
    assert (st["exponent"] == 0).all()  # from S-TLLR on its own objective only
