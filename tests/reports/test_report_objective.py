"""The 2×2 of rule × objective (reports._objective), from runs with planted effects, checked
against numbers computed by hand; no 2×2 section where a study ran fewer than four cells."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from report_cases import fair_runs, write_study

from reports import build_report
from reports._objective import objective_effects, objective_table


def _report(tmp_path: Path, runs: pd.DataFrame) -> Path:
    d = tmp_path / "study"
    write_study(d, runs, name="two_by_two", dataset="digits")
    return build_report([d], out=d / "report").parent


def _cell(runs: pd.DataFrame, arch: str, rule: str, loss: str) -> pd.Series:
    """By hand: the best (mean validation accuracy) tuned configuration of a cell, test accuracy by seed."""
    role = "tuned" if rule == "stllr" else "baseline"
    r = runs[(runs["arch_id"] == arch) & (runs["rule"] == rule) & (runs["role"] == role) & (runs["loss_kind"] == loss)]
    best = r.groupby("config_id")["val_accuracy"].mean().idxmax()
    return r[r["config_id"] == best].set_index("seed")["test_accuracy"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """S-TLLR gains 6 points on CE(Σ_t o[t]); BPTT is the same on both objectives."""
    runs = fair_runs(stllr_losses=("per_step", "sum_output"), bptt_losses=("per_step", "sum_output"),
                     gain={"stllr": 0.03, "stllr_sum_output": 0.09, "per_step": 0.03, "sum_output": 0.03})
    return _report(tmp_path_factory.mktemp("planted"), runs), runs


def test_the_cells_and_effects_are_the_hand_computed_ones(planted):
    out, runs = planted
    t = pd.read_csv(out / "rule_objective.csv")
    assert len(t) == 4  # every architecture has the four cells
    for _, r in t.iterrows():
        cell = {(rule, loss): _cell(runs, r["arch_id"], rule, loss)
                for rule in ("stllr", "bptt") for loss in ("per_step", "sum_output")}
        for (rule, loss), v in cell.items():
            assert r[f"{rule}_{loss}_test_accuracy_mean"] == pytest.approx(v.mean(), abs=1e-12)
        st = cell[("stllr", "sum_output")] - cell[("stllr", "per_step")]
        bp = cell[("bptt", "sum_output")] - cell[("bptt", "per_step")]
        assert r["n_pairs"] == 5
        assert r["stllr_effect"] == pytest.approx(st.mean(), abs=1e-12)
        assert r["bptt_effect"] == pytest.approx(bp.mean(), abs=1e-12)
        assert r["interaction_effect"] == pytest.approx((st - bp).mean(), abs=1e-12)
        paper = cell[("stllr", "per_step")] - cell[("bptt", "sum_output")]
        assert r["paper_effect"] == pytest.approx(paper.mean(), abs=1e-12)
        assert {int(k): v for k, v in json.loads(r["interaction_diffs"]).items()} == pytest.approx(
            (st - bp).to_dict(), abs=1e-12)


def test_planted_effects_are_claimed_with_the_right_signs_and_no_more(planted):
    out, _ = planted
    e = pd.read_csv(out / "objective_effects.csv").set_index("effect")
    assert e.loc["stllr", "estimate"] == pytest.approx(0.06, abs=0.005)
    assert e.loc["stllr", "p_holm"] < 0.05 and e.loc["stllr", "says"].startswith("S-TLLR is more accurate on CE")
    assert e.loc["interaction", "estimate"] == pytest.approx(0.06, abs=0.005)
    assert e.loc["interaction", "p_holm"] < 0.05 and "in S-TLLR's favour" in e.loc["interaction", "says"]
    for effect in ("bptt", "paper"):  # planted at zero
        assert abs(e.loc[effect, "estimate"]) < 0.005 and e.loc[effect, "says"] == "no difference shown (Holm-corrected)"
    claims = pd.read_csv(out / "claims.csv").set_index("key")
    for effect in ("stllr", "bptt", "interaction", "paper"):  # in the report's one Holm family
        assert claims.loc[f"objective:digits:{effect}", "p_holm"] == pytest.approx(e.loc[effect, "p_holm"])
    # the verdict pairs each BPTT objective with S-TLLR on the same one
    v = pd.read_csv(out / "verdict.csv").set_index("bptt_loss_kind")
    assert v.loc["sum_output", "stllr_loss_kind"] == "sum_output" and v.loc["per_step", "stllr_loss_kind"] == "per_step"
    assert v.loc["sum_output", "accuracy_diff"] == pytest.approx(0.06, abs=0.005)
    assert v.loc["per_step", "accuracy_diff"] == pytest.approx(0.0, abs=0.005)
    # the closed form of memory: S-TLLR on CE(Σ_t o[t]) holds 2·N per window step (T 16, learn_steps 4)
    m = pd.read_csv(out / "matched.csv").set_index("bptt_loss_kind")
    assert set(m.loc["sum_output", "memory_ratio_paper"]) == {16 / (2 * 4)}
    assert set(m.loc["per_step", "memory_ratio_paper"]) == {16 / 2}
    page = (out / "report.html").read_text()
    assert "Rule × objective (2×2)" in page and "S-TLLR: sum_output − per_step" in page


def test_pure_noise_gives_no_claim(tmp_path):
    runs = fair_runs(stllr_losses=("per_step", "sum_output"), bptt_losses=("per_step", "sum_output"),
                     gain={"stllr": 0.03, "stllr_sum_output": 0.03, "per_step": 0.03, "sum_output": 0.03},
                     noise=0.01, seed=7)
    effects, claims = objective_effects(objective_table(_configs(runs)))
    assert len(claims) == 4 and all(np.isfinite(c.p) for c in claims)
    from reports._claims import holm

    holm(claims)
    assert not any(c.holds() for c in claims), [(c.key, c.estimate, c.p_adj) for c in claims]


def test_no_section_without_four_cells(tmp_path):
    out = _report(tmp_path, fair_runs())  # S-TLLR on per_step only: three cells
    assert pd.read_csv(out / "objective_effects.csv").empty
    assert "Rule × objective (2×2)" not in (out / "report.html").read_text()
    m = pd.read_csv(out / "matched.csv")
    assert set(m["stllr_loss_kind"]) == {"per_step"}  # S-TLLR's own objective against both of BPTT's


def _configs(runs: pd.DataFrame) -> pd.DataFrame:
    from reports._configs import config_table

    return config_table(runs)
