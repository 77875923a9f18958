"""The verdict and the matched table as DESIGN §8 defines them, checked against numbers computed by hand
from the runs: S-TLLR tuned (or its factor search, said so), one row per BPTT objective, differences
paired by seed, measured and formula cost ratios, floors, stopping, one Holm family; hover text escaped
in the figure objects themselves."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from report_browser import chromium, open_page
from report_cases import fair_runs, synthetic_runs, write_floors, write_study

from reports import build_report, load_studies
from reports import _report
from reports._claims import Claim
from reports._html import fmt, pct


@pytest.fixture(scope="module")
def fair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """A study with tuned S-TLLR, BPTT under two objectives, stopping recorded and floors measured."""
    d = tmp_path_factory.mktemp("fair") / "fair"
    runs = fair_runs()
    write_study(d, runs, name="fair", dataset="digits")
    write_floors(d, chance=0.1, val=0.93, test=0.94)
    out = build_report([d], out=d / "report").parent
    return out, runs


def _chosen(runs: pd.DataFrame, arch: str, rule: str, role: str | None = None, loss: str | None = None) -> pd.DataFrame:
    """By hand: the runs of the configuration with the best mean validation accuracy."""
    r = runs[(runs["arch_id"] == arch) & (runs["rule"] == rule)]
    if role is not None:
        r = r[r["role"] == role]
    if loss is not None:
        r = r[r["loss_kind"] == loss]
    best = r.groupby("config_id")["val_accuracy"].mean().idxmax()
    return r[r["config_id"] == best]


def test_matched_rows_tuned_stllr_per_bptt_objective_paired_by_seed(fair):
    out, runs = fair
    m = pd.read_csv(out / "matched.csv")
    assert len(m) == 4 * 2  # 4 architectures x 2 BPTT objectives
    assert set(m["bptt_loss_kind"]) == {"sum_output", "per_step"} and set(m["stllr_loss_kind"]) == {"per_step"}
    assert m["stllr_tuned"].all() and (m["stllr_role"] == "tuned").all()
    for _, r in m.iterrows():
        s = _chosen(runs, r["arch_id"], "stllr", role="tuned")
        b = _chosen(runs, r["arch_id"], "bptt", loss=r["bptt_loss_kind"])
        assert r["stllr_config_id"] == s["config_id"].iloc[0] and r["bptt_config_id"] == b["config_id"].iloc[0]
        d = (s.set_index("seed")["test_accuracy"] - b.set_index("seed")["test_accuracy"]).dropna()
        assert r["n_pairs"] == len(d) == 5
        assert r["accuracy_diff"] == pytest.approx(d.mean(), abs=1e-12)
        # the seed effect is shared by both rules: pairing removes it, so the paired interval is far
        # narrower than an unpaired one (difference of the means, t interval) would be
        assert r["accuracy_diff_lo"] <= r["accuracy_diff"] <= r["accuracy_diff_hi"]
        unpaired = 2 * stats.t.ppf(0.975, 4) * np.sqrt(s["test_accuracy"].var() / 5 + b["test_accuracy"].var() / 5)
        assert r["accuracy_diff_hi"] - r["accuracy_diff_lo"] < 0.25 * unpaired
        # the tuning each side got, counted by hand
        at = runs[runs["arch_id"] == r["arch_id"]]
        assert r["stllr_search_configs"] == at[at["role"] == "search"]["config_id"].nunique() == 3
        assert r["stllr_search_runs"] == (at["role"] == "search").sum() == 15
        assert r["stllr_tuning_trials"] == at[at["role"] == "tuned"]["config_id"].nunique() == 2
        assert r["bptt_tuning_trials"] == at[(at["rule"] == "bptt") & (at["loss_kind"] == r["bptt_loss_kind"])][
            "config_id"].nunique() == 2
        assert r["chance_accuracy"] == 0.1 and r["linear_readout_test_accuracy"] == 0.94


def test_measured_and_formula_ratios_equal_the_runs_by_hand(fair):
    """MACs and memory ratios, measured and formula, in matched.csv, verdict.csv and the box, from the rows.

    The measured counts differ from the formula ones in this study, so a measured ratio computed the
    wrong way round (or from the formula) fails here, not only in the formula checks.
    """
    out, runs = fair
    m = pd.read_csv(out / "matched.csv")
    v = pd.read_csv(out / "verdict.csv")
    summary = (out / "summary.md").read_text()
    cols = {"mac": "learning_macs_{}_per_sample", "memory": "learning_memory_bytes_{}_per_sample"}
    hand: dict[tuple[str, str, str], list[float]] = {}
    for _, r in m.iterrows():
        s = _chosen(runs, r["arch_id"], "stllr", role="tuned")
        b = _chosen(runs, r["arch_id"], "bptt", loss=r["bptt_loss_kind"])
        for kind, col in cols.items():
            for how in ("measured", "formula"):
                ratio = b[col.format(how)].mean() / s[col.format(how)].mean()
                assert r[f"{kind}_ratio_{how}"] == pytest.approx(ratio, rel=1e-12), (kind, how)
                hand.setdefault((r["bptt_loss_kind"], kind, how), []).append(ratio)
        assert r["mac_ratio_measured"] != pytest.approx(r["mac_ratio_formula"], rel=1e-3)  # the test can tell them apart
        assert r["memory_ratio_measured"] != pytest.approx(r["memory_ratio_formula"], rel=1e-3)
        assert r["mac_ratio_measured"] > 1 and r["memory_ratio_measured"] > 1  # inverted would be < 1
    for _, r in v.iterrows():
        for kind in cols:
            for how in ("measured", "formula"):
                ratios = np.array(hand[(r["bptt_loss_kind"], kind, how)])
                geo = float(np.exp(np.log(ratios).mean()))
                assert r[f"{kind}_ratio_{how}"] == pytest.approx(geo, rel=1e-12)
                assert r[f"{kind}_ratio_{how}_min"] == pytest.approx(ratios.min(), rel=1e-12)
                assert r[f"{kind}_{how}_favours"] == "S-TLLR"
                name = "learning MACs" if kind == "mac" else "learning memory"
                assert f"| {name}, BPTT ÷ S-TLLR, {how} [×] | {fmt(geo)} |" in summary


def _analyse_with_q1_claims(out, monkeypatch, claims):
    """The report's analysis with Q1's claims replaced by ``claims`` (the rest as computed)."""
    original = _report.q1_analysis

    def with_claims(*args, **kwargs):
        r = original(*args, **kwargs)
        r.claims = list(claims)
        return r

    monkeypatch.setattr(_report, "q1_analysis", with_claims)
    return _report.analyse(load_studies([out.parent]))


def test_verdict_is_one_holm_family_and_says_a_side_only_when_it_holds(fair, tmp_path, monkeypatch):
    out, runs = fair
    v = pd.read_csv(out / "verdict.csv").set_index("bptt_loss_kind")
    claims = pd.read_csv(out / "claims.csv")
    keys = list(claims["key"])
    assert [k for k in keys if k.startswith("verdict:")] == ["verdict:digits:accuracy:bptt_per_step",
                                                             "verdict:digits:accuracy:bptt_sum_output"]
    assert all(k.startswith(("verdict:", "q1:", "q2:")) for k in keys)  # one family: every section's claims
    # planted: S-TLLR +3 points over BPTT on CE(sum_t o[t]); equal on the per-step objective
    assert v.loc["sum_output", "accuracy_favours"] == "S-TLLR"
    assert v.loc["per_step", "accuracy_favours"] == "no difference"
    assert v.loc["sum_output", "accuracy_diff"] == pytest.approx(0.03, abs=0.005)
    for kind, r in v.iterrows():  # the verdict's paired difference: mean over seeds of the per-seed mean over archs
        m = pd.read_csv(out / "matched.csv")
        per_seed = pd.DataFrame([json.loads(c) for c in m[m["bptt_loss_kind"] == kind]["paired_diffs"]]).mean()
        assert r["accuracy_diff"] == pytest.approx(per_seed.mean(), abs=1e-12)
        assert r["n_seed_blocks"] == 5
    summary = (out / "summary.md").read_text()
    assert "| test accuracy, S-TLLR − BPTT [points] | +3.1 |" in summary
    assert "no difference at the corrected level" in summary
    # one family: the claims of Q1/Q2 join the verdict's in Holm's correction
    extra = [Claim(f"q1:x{i}", "a factor matters", 0.1, 0.05, 0.15, 0.001 * (i + 1)) for i in range(30)]
    a = _analyse_with_q1_claims(out, monkeypatch, extra)
    assert len(a.claims) == 2 + 30 + len(a.q2.claims) and all(np.isfinite(c.p_adj) for c in a.claims)
    verdict = a.tables["verdict.csv"].set_index("bptt_loss_kind")
    p = verdict.loc["sum_output", "accuracy_diff_p"]
    assert verdict.loc["sum_output", "accuracy_diff_p_holm"] > v.loc["sum_output", "accuracy_diff_p_holm"]
    assert verdict.loc["sum_output", "accuracy_diff_p_holm"] == pytest.approx(
        [c.p_adj for c in a.claims if c.key.endswith("sum_output")][0]) and p < 0.05


def test_untuned_stllr_falls_back_to_its_factor_search_and_says_so(tmp_path):
    runs = fair_runs(tuned=False, bptt_losses=("sum_output",), widths=(64,), depths=(1, 2))
    d = write_study(tmp_path / "s", runs, name="untuned", dataset="digits")
    out = build_report([d], out=tmp_path / "r").parent
    m = pd.read_csv(out / "matched.csv")
    assert len(m) == 2 and not m["stllr_tuned"].any() and (m["stllr_role"] == "search").all()
    for _, r in m.iterrows():
        assert r["stllr_config_id"] == _chosen(runs, r["arch_id"], "stllr", role="search")["config_id"].iloc[0]
        assert r["stllr_tuning_trials"] == 0 and r["stllr_search_configs"] == 3
    summary = (out / "summary.md").read_text()
    assert "S-TLLR tuned: no — factor search only" in summary
    assert "factor search only at 2 of 2 architectures" in summary
    assert "floors not measured" in summary  # no floors.json


def test_stopping_counted_per_rule_and_share_by_patience(fair):
    out, runs = fair
    summary = (out / "summary.md").read_text()
    n = {r: int((runs["rule"] == r).sum()) for r in ("stllr", "bptt")}
    late = {r: int(((runs["rule"] == r) & (runs["stopped_by"] == "max_epochs")).sum()) for r in ("stllr", "bptt")}
    assert late == {"stllr": 1, "bptt": 3}
    assert (f"Stopped at the epoch maximum before patience ran out, possibly still improving (stopped_by = max_epochs): S-TLLR {late['stllr']} of "
            f"{n['stllr']} runs, BPTT {late['bptt']} of {n['bptt']} runs.") in summary
    m = pd.read_csv(out / "matched.csv").drop_duplicates(["arch_id", "stllr_config_id", "bptt_config_id"])
    chosen = runs[runs["config_id"].isin(set(m["stllr_config_id"]) | set(m["bptt_config_id"]))]
    pat = int((chosen["stopped_by"] == "patience").sum())
    assert f"Of the {len(chosen)} runs in the matched table, {pat} ({100 * pat / len(chosen):.0f}%) stopped by patience" \
        in summary
    v = pd.read_csv(out / "verdict.csv").set_index("bptt_loss_kind")
    assert v["matched_runs_max_epochs"].sum() > 0
    full = pd.read_csv(out / "matched.csv")
    for kind in ("sum_output", "per_step"):  # the verdict says how many compared runs did not converge
        mk = full[full["bptt_loss_kind"] == kind]
        ids = set(mk["stllr_config_id"]) | set(mk["bptt_config_id"])
        c = runs[runs["config_id"].isin(ids)]
        assert v.loc[kind, "matched_runs"] == len(c) == 40
        assert v.loc[kind, "matched_runs_max_epochs"] == (c["stopped_by"] == "max_epochs").sum()
        if v.loc[kind, "matched_runs_max_epochs"]:
            assert (f"Not converged: {int(v.loc[kind, 'matched_runs_max_epochs'])} of 40 compared runs stopped at the "
                    "epoch maximum") in summary
    # an older study (no stopped_by anywhere): unknown, not zero; the late-gain note stands in
    old = synthetic_runs(widths=(64,), depths=(1,))
    from reports._configs import config_table
    c = config_table(old[old["status"] == "complete"])
    assert c["n_stopped_max_epochs"].isna().all()


def test_floors_drawn_on_the_accuracy_axes_and_absent_floors_said(fair):
    out, _ = fair
    a = _report.analyse(load_studies([out.parent]))
    _, _, secs, figures = _report.sections(a)
    front = [f.fig for f in figures if f.name.startswith("frontier_")][0]
    ys = sorted(round(s.y0, 6) for s in front.layout.shapes)
    assert ys == [10.0, 93.0]  # chance and the linear read-out's validation accuracy, in %, on a validation axis
    texts = [x.text for x in front.layout.annotations]
    assert "chance 10.0%" in texts and "linear read-out (val) 93.0%" in texts
    proj = [f.fig for f in figures if f.name.startswith("projection_") and "val_accuracy" in f.name]
    assert proj and all(sorted(round(s.y0, 6) for s in p.layout.shapes) == [10.0, 93.0] for p in proj)
    assert "neither rule beats the linear read-out" in (out / "summary.md").read_text()
    # without floors.json: no lines, a note on the figure
    a.floors.clear()
    _, _, _, figures = _report.sections(a)
    front = [f.fig for f in figures if f.name.startswith("frontier_")][0]
    assert not front.layout.shapes and "floors not measured" in [x.text for x in front.layout.annotations]


EVIL_ID = "<script>alert('id')</script>"
EVIL_STUDY = "<img src=x onerror=alert(1)>"


def _strings(value: object) -> list[str]:
    """Every string inside a trace attribute (a string, a list, a tuple or an array of them)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple, np.ndarray)):
        return [s for v in value for s in _strings(v)]
    return [str(value)]


def test_hover_text_of_every_figure_escapes_user_text(tmp_path):
    """The figure objects themselves (not the page, where plotly's JSON writes '<' as \\u003c)."""
    runs = fair_runs(widths=(64,), depths=(1, 2), bptt_losses=("sum_output",))
    runs.loc[runs["config_id"] == runs.loc[runs["role"] == "tuned", "config_id"].iloc[0], "config_id"] = EVIL_ID
    runs["arch_id"] = runs["arch_id"] + "<b>"
    d = write_study(tmp_path / "s", runs, name=EVIL_STUDY, dataset="digits")
    a = _report.analyse(load_studies([d]))
    _, _, _, figures = _report.sections(a)
    assert figures
    seen_escaped = 0
    for f in figures:
        for tr in f.fig.data:
            for attr in ("hovertext", "text", "customdata", "name", "hovertemplate"):
                for s in _strings(getattr(tr, attr, None)):
                    assert "<script" not in s and "<img" not in s and "<b><br>" not in s, (f.name, attr, s[:200])
                    seen_escaped += "&lt;script&gt;" in s
        for ann in f.fig.layout.annotations or ():
            assert "<script" not in str(ann.text) and "<img" not in str(ann.text)
        assert "<script" not in str(f.fig.layout.title.text) and "<img" not in str(f.fig.layout.title.text)
    assert seen_escaped >= 2  # the config is in the frontier figure's and the projections' hover text


def test_collapsed_sections_are_one_line(tmp_path):
    """Q1 with no factor varied: the section shrinks to one line on the page and in the summary."""
    runs = fair_runs(widths=(64,), depths=(1,), bptt_losses=("sum_output",), search_configs=0)
    d = write_study(tmp_path / "s", runs, name="flat", dataset="digits")
    out = build_report([d], out=tmp_path / "r").parent
    summary = (out / "summary.md").read_text()
    q1 = summary.split("## Open question 1")[1].split("\n## ")[0].strip().splitlines()
    assert len([line for line in q1 if line.strip()]) == 2, q1  # the rest of the heading and its one line
    page = (out / "report.html").read_text()
    assert '<details class="collapsed"><summary><h2>Open question 1' in page


def test_units_a_person_reads(fair):
    out, _ = fair
    summary = (out / "summary.md").read_text()
    front = pd.read_csv(out / "frontier.csv")
    assert "val acc [%]" in summary and "MACs formula [M]" in summary and "memory measured [KiB]" in summary
    r = front.iloc[0]
    row = [line for line in summary.splitlines() if f"| {r['config_id']} |" in line][0]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert pct(r["val_accuracy_mean"]) in cells
    assert fmt(r["learning_macs_formula_per_sample_mean"] / 1e6) in cells
    assert fmt(r["learning_memory_bytes_measured_per_sample_mean"] / 1024) in cells
    for c in cells:  # one number per cell
        assert "±" not in c and ";" not in c and " / " not in c


@pytest.mark.skipif(chromium() is None, reason="no Chromium on PATH (Debian: apt-get install chromium) or BROWSER_PATH")
def test_verdict_and_floors_render_in_headless_chromium(fair, tmp_path):
    """The page of a study with both BPTT objectives and floors, at 1300 px: the box, its sides, every figure."""
    out, _ = fair
    keep = os.environ.get("STLLR_TEST_ARTIFACTS")
    slices = Path(keep) / "fair_report" if keep else None
    r = open_page(out / "report.html", tmp_path / "fair.png", width=1300, slices=slices)
    assert r["errors"] == [] and r["dialogs"] == [], r["errors"]
    assert r["figures"] == r["rendered"] > 0
    text = r["verdict_text"]
    assert r["verdict_visible"] and text.count("test accuracy, S-TLLR − BPTT [points]") == 2
    assert "digits — S-TLLR on per_step, BPTT on sum_output" in text and "digits — both on per_step" in text and "floors: chance 10.0%, linear read-out 94.0%" in text
    sides = {(c[0], c[1]) for c in r["favour_cells"]}
    assert ("fav-stllr", "S-TLLR") in sides and ("fav-none", "no difference at the corrected level") in sides
    blue = [c[2] for c in r["favour_cells"] if c[0] == "fav-stllr"]
    grey = [c[2] for c in r["favour_cells"] if c[0] == "fav-none"]
    assert blue and grey and set(blue).isdisjoint(grey)  # the side is seen, not only read
    assert r["page_width"] <= 1300 and r["overflowing_tables"] == [], r["overflowing_tables"]
    assert any(s.startswith("All configurations") for s in r["collapsed"])


def test_paired_stats_never_overstates_a_few_seeds():
    from reports._matched import paired_stats

    two = paired_stats([-0.29, -0.30])  # two seeds of one sign: the bootstrap alone would say p = 1e-4
    assert two["p_bootstrap"] < 0.001 and two["p"] == two["p_t"] > 0.01
    assert two["low"] < -0.29 - 0.05 and two["high"] > -0.30 + 0.05  # the t interval, wider than the two values
    same = paired_stats([-0.269444, -0.269444])  # equal differences (accuracies move in steps of 1/n_test)
    assert np.isnan(same["p"]) and same["mean"] == pytest.approx(-0.269444)
    assert np.isnan(paired_stats([0.1])["p"]) and paired_stats([])["n"] == 0
    many = paired_stats(np.full(12, 0.03) + np.linspace(-0.005, 0.005, 12))
    assert many["p"] < 0.001 and many["low"] > 0


def test_a_section_whose_claims_all_fail_is_one_line(fair, monkeypatch):
    out, _ = fair
    weak = [Claim(f"q1:x{i}", "a factor matters", 0.01, -0.02, 0.04, 0.4) for i in range(3)]
    a = _analyse_with_q1_claims(out, monkeypatch, weak)
    q1 = [s for s in _report.sections(a)[2] if s.title.startswith("Open question 1")][0]
    assert q1.collapsed == "inconclusive: none of its 3 claims holds at the corrected level."


@pytest.mark.parametrize("name", ["reports._matched", "reports._verdict", "reports._configs"])
def test_docstring_examples_of_the_matched_modules(name):
    import doctest
    import importlib

    assert doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS).failed == 0
