"""A flow study in the report: AEE (px, lower is better) through the frontier, the matched table,
the verdict and the page; a report that mixes accuracy and AEE studies is refused in one line.

The frames are made by hand so that every expected number is computed here, on paper: a ranking
or a Pareto front that maximised AEE (as accuracy is maximised) picks other configurations.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from report_browser import chromium, open_page
from report_cases import fair_runs, flow_runs, synthetic_runs, write_study

from reports import build_report, load_study
from reports._claims import holm
from reports._configs import best_per_arch, config_table, ranked
from reports._frontier import frontier, hypervolume_table, projections
from reports._load import DEFAULT_OBJECTIVES, Objective
from reports._matched import matched_table
from reports._measure import ACCURACY, AEE, measure_of, measure_of_studies
from reports._report import _verdict_rows, analyse
from reports._verdict import settle, verdict_table
from stllr_engine.errors import StllrError
from study.cli import main


def _run(config_id: str, rule: str, role: str, seed: int, val: float, test: float, *, arch: str = "a1",
         macs: float = 100.0, memory: float = 1000.0, dataset: str = "flow_synthetic", zero: float = 2.5,
         loss: str | None = None) -> dict:
    """One complete flow run as the study side writes it (measure aee; accuracy columns NaN)."""
    return {"study": "flow", "dataset": dataset, "trial_id": f"{config_id}-s{seed}", "config_id": config_id,
            "arch_id": arch, "rule": rule, "role": role, "seed": seed, "status": "complete", "measure": "aee",
            "model": "flownet", "width": 32, "depth": 2, "T": 10, "learn_steps": 5 if rule == "stllr" else 10,
            "loss_kind": loss, "alpha_post": -0.5 if rule == "stllr" else np.nan,
            "val_aee": val, "test_aee": test, "test_outliers_pct": 10.0 * test, "test_zero_aee": zero,
            "val_loss": val, "test_loss": test, "val_accuracy": np.nan, "test_accuracy": np.nan,
            "train_accuracy": np.nan, "learning_macs_formula_per_sample": macs,
            "learning_macs_measured_per_sample": macs, "learning_memory_bytes_measured_per_sample": memory,
            "learning_memory_bytes_formula_per_sample": memory, "stopped_by": "patience", "epochs_trained": 10,
            "best_epoch": 7}


# -- the measure ------------------------------------------------------------------------------


def test_measure_of_reads_the_measure_column():
    assert measure_of(pd.DataFrame({"measure": ["aee", "aee"]})) is AEE
    assert measure_of(pd.DataFrame({"measure": [None, None]})) is ACCURACY  # an older folder: the column empty
    assert measure_of(pd.DataFrame({"val_accuracy": [0.5]})) is ACCURACY  # ... or absent
    with pytest.raises(StllrError, match="mix the measures accuracy and aee"):
        measure_of(pd.DataFrame({"measure": ["aee", "accuracy"]}))
    with pytest.raises(StllrError, match="unknown measure 'iou'"):
        measure_of(pd.DataFrame({"measure": ["iou"]}))
    assert AEE.diff_sentence(0.1) == "S-TLLR's AEE is 0.100 px higher than BPTT's (worse)"
    assert AEE.diff_sentence(-0.25) == "S-TLLR's AEE is 0.250 px lower than BPTT's (better)"
    assert AEE.favours(0.1) == "BPTT" and AEE.favours(-0.1) == "S-TLLR"
    assert ACCURACY.favours(0.1) == "S-TLLR" and ACCURACY.favours(-0.1) == "BPTT"
    assert AEE.axis_label == "AEE (px), lower is better"


# -- the frontier -----------------------------------------------------------------------------


def _front_runs() -> pd.DataFrame:
    # (config, val AEE of seeds 0 and 1, learning MACs): the mean val AEE is the first value +0.05
    points = {"A": (1.0, 100.0), "B": (2.0, 50.0), "C": (1.5, 200.0), "D": (3.0, 60.0), "E": (0.8, 400.0),
              "F": (0.8, 500.0)}
    rows = []
    for cid, (aee, macs) in points.items():
        for seed, d in ((0, 0.0), (1, 0.1)):
            rows.append(_run(cid, "stllr" if cid in "ACE" else "bptt", "tuned" if cid in "ACE" else "baseline", seed,
                             aee + d, aee + d + 0.2, macs=macs))
    return pd.DataFrame(rows)


def test_frontier_keeps_the_lower_aee_cheaper_points():
    configs = config_table(_front_runs())
    assert list(configs["measure"].unique()) == ["aee"]
    np.testing.assert_allclose(configs.set_index("config_id").loc[list("ABCDEF"), "val_aee_mean"],
                               [1.05, 2.05, 1.55, 3.05, 0.85, 0.85])
    two = (Objective("val_aee", "minimize"), Objective("learning_macs_formula_per_sample", "minimize"))
    # A (1.05, 100) dominates C (1.55, 200); B (2.05, 50) dominates D (3.05, 60); E (0.85, 400) dominates F (0.85, 500)
    for objectives in (two, DEFAULT_OBJECTIVES):  # a flow study file that kept the classification objectives
        f = frontier(configs, objectives)
        assert f["config_id"].tolist() == ["E", "A", "B"], objectives  # sorted by val AEE, lowest first
        np.testing.assert_allclose(f["val_aee_mean"], [0.85, 1.05, 2.05])
        np.testing.assert_allclose(f["test_aee_mean"], [1.05, 1.25, 2.25])
        assert "test_accuracy_mean" not in f.columns
    # the hypervolume's reference point is the worst AEE (highest) plus 10 % of the range
    hv = hypervolume_table(configs, two)
    assert hv.loc[hv["rules"] == "all", "frontier_points"].item() == 3
    assert hv.loc[hv["rules"] == "all", "reference_val_aee"].item() == pytest.approx(0.85 + 1.1 * (3.05 - 0.85))
    # the 2-D view puts AEE on y and finds the same front
    p = projections(configs, two)
    assert set(p["y"]) == {"val_aee"} and set(p.loc[p["on_2d_front"], "config_id"]) == {"A", "B", "E"}


# -- the best configuration and the matched table ----------------------------------------------


def _matched_runs() -> pd.DataFrame:
    rows = []
    # S-TLLR tuned: t1 val 1.1 (mean), t2 val 0.9 (lowest: chosen); the factor search s1 (0.5) is not
    # compared where a tuned configuration exists. BPTT: b1 val 1.5 (highest: a maximiser picks it), b2 val 0.75.
    for seed, (t1, t2, s1, b1, b2) in enumerate([(1.0, 0.9, 0.5, 1.5, 0.7), (1.2, 0.9, 0.5, 1.5, 0.8)]):
        rows.append(_run("t1", "stllr", "tuned", seed, t1, 0.5))
        rows.append(_run("t2", "stllr", "tuned", seed, t2, [1.00, 1.20][seed]))
        rows.append(_run("s1", "stllr", "search", seed, s1, 0.4))
        rows.append(_run("b1", "bptt", "baseline", seed, b1, 0.3))
        rows.append(_run("b2", "bptt", "baseline", seed, b2, [0.90, 1.00][seed]))
    return pd.DataFrame(rows)


def test_best_configuration_is_the_lowest_val_aee():
    configs = config_table(_matched_runs())
    assert ranked(configs)["config_id"].tolist() == ["s1", "b2", "t2", "t1", "b1"]
    best = best_per_arch(configs).set_index("rule")["config_id"]
    assert best.to_dict() == {"bptt": "b2", "stllr": "s1"}
    # an accuracy table still ranks highest first (its default unchanged)
    acc = config_table(synthetic_runs(widths=(64,), depths=(1,), stllr_configs=2, seeds=2))
    r = ranked(acc)
    assert r["val_accuracy_mean"].is_monotonic_decreasing and measure_of(acc) is ACCURACY


def test_matched_table_differences_in_px():
    configs = config_table(_matched_runs())
    m = matched_table(configs)
    assert len(m) == 1
    r = m.iloc[0]
    assert (r["stllr_config_id"], r["bptt_config_id"], bool(r["stllr_tuned"])) == ("t2", "b2", True)
    # test AEE by seed: S-TLLR {0: 1.00, 1: 1.20}, BPTT {0: 0.90, 1: 1.00}: differences 0.10, 0.20
    assert r["stllr_test_aee_mean"] == pytest.approx(1.10) and r["bptt_test_aee_mean"] == pytest.approx(0.95)
    assert r["stllr_val_aee_mean"] == pytest.approx(0.90) and r["bptt_val_aee_mean"] == pytest.approx(0.75)
    assert r["n_pairs"] == 2 and r["aee_diff"] == pytest.approx(0.15)
    assert r["aee_diff_se"] == pytest.approx(0.05)
    assert r["aee_diff_says"] == "S-TLLR's AEE is 0.150 px higher than BPTT's (worse)"
    assert r["no_motion_test_aee"] == pytest.approx(2.5)
    assert r["measure"] == "aee"
    assert not {"accuracy_diff", "chance_accuracy", "stllr_test_accuracy_mean"} & set(m.columns)


# -- the verdict ------------------------------------------------------------------------------


def _verdict_runs(sign: float) -> pd.DataFrame:
    """Two architectures, one tuned S-TLLR and one BPTT configuration each, four seeds; S-TLLR − BPTT
    test AEE per seed: a1 0.20, 0.30, 0.25, 0.35 and a2 0.10, 0.20, 0.15, 0.25 (times ``sign``)."""
    rows = []
    diffs = {"a1": [0.20, 0.30, 0.25, 0.35], "a2": [0.10, 0.20, 0.15, 0.25]}
    for arch, ds in diffs.items():
        for seed, d in enumerate(ds):
            base = 1.0 + 0.1 * seed
            rows.append(_run(f"s-{arch}", "stllr", "tuned", seed, base, base + sign * d, arch=arch))
            rows.append(_run(f"b-{arch}", "bptt", "baseline", seed, base, base, arch=arch))
    return pd.DataFrame(rows)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_verdict_sign_and_wording(sign):
    matched = matched_table(config_table(_verdict_runs(sign)))
    verdict, claims = verdict_table(matched)
    holm(claims)
    v = settle(verdict, claims).iloc[0]
    # per seed, the mean over the two architectures: 0.15, 0.25, 0.20, 0.30; their mean 0.225
    assert v["aee_diff"] == pytest.approx(sign * 0.225)
    assert v["n_seed_blocks"] == 4 and v["architectures"] == 2
    blocks = np.array([0.15, 0.25, 0.20, 0.30])
    from scipy import stats
    assert v["aee_diff_p"] == pytest.approx(stats.ttest_1samp(blocks, 0.0).pvalue)  # t over bootstrap here
    assert v["aee_diff_p_holm"] < 0.05
    assert "accuracy_diff" not in verdict.columns and "accuracy_favours" not in verdict.columns
    (claim,) = claims
    assert claim.key == "verdict:flow_synthetic:aee" and claim.holds()
    if sign > 0:  # S-TLLR's error is larger: BPTT is better
        assert v["aee_favours"] == "BPTT"
        assert "S-TLLR reaches a higher test AEE than BPTT (worse" in claim.text
        assert v["aee_diff_says"] == "S-TLLR's AEE is 0.225 px higher than BPTT's (worse)"
    else:
        assert v["aee_favours"] == "S-TLLR"
        assert "S-TLLR reaches a lower test AEE than BPTT (better" in claim.text
        assert v["aee_diff_says"] == "S-TLLR's AEE is 0.225 px lower than BPTT's (better)"
    box = _verdict_rows(v, AEE).iloc[0]
    assert box["quantity"] == "test AEE, S-TLLR − BPTT [px], lower is better"
    assert box["estimate"] == ("+0.225" if sign > 0 else "-0.225")
    assert box["in favour of"] == ("BPTT" if sign > 0 else "S-TLLR")


# -- the report -------------------------------------------------------------------------------


def _stllr(*args: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(args))
    return rc, err.getvalue()


def test_mixing_accuracy_and_aee_studies_is_refused_in_one_line(tmp_path):
    acc = write_study(tmp_path / "shd", synthetic_runs(widths=(64,), depths=(1,), stllr_configs=2, seeds=2))
    flow = write_study(tmp_path / "flow", _verdict_runs(1.0), name="flow", dataset="flow_synthetic")
    with pytest.raises(StllrError) as e:
        build_report([acc, flow], out=tmp_path / "out")
    msg = str(e.value)
    assert "\n" not in msg and "accuracy (synthetic)" in msg and "AEE (flow)" in msg and "separately" in msg
    assert not (tmp_path / "out").exists()  # refused before anything is written
    with pytest.raises(StllrError):
        measure_of_studies([load_study(acc), load_study(flow)])
    rc, err = _stllr("report", str(flow), str(acc), "--out", str(tmp_path / "out2"))
    assert rc == 2 and err.count("\n") == 1 and "cannot share one report" in err, err
    # two flow studies together are one measure
    flow2 = write_study(tmp_path / "flow2", _verdict_runs(-1.0), name="flow2", dataset="flow_other")
    assert analyse([load_study(flow), load_study(flow2)]).measure is AEE


@pytest.fixture(scope="module")
def flow_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("flow")
    runs = flow_runs(fair_runs(study="flow", dataset="flow_synthetic", seeds=4, widths=(64, 128), depths=(1,),
                               bptt_losses=("sum_output",), gain={"stllr": -0.03}), zero_aee=2.0)
    d = write_study(root / "flow", runs, name="flow", dataset="flow_synthetic")
    build_report([d], out=root / "out")
    return root / "out"


def test_flow_report_files_and_numbers(flow_report):
    out = flow_report
    v = pd.read_csv(out / "verdict.csv")
    assert len(v) == 1 and v["measure"].item() == "aee"
    m = pd.read_csv(out / "matched.csv")
    # S-TLLR 3 points of accuracy below BPTT in the source study: 5 px × 0.03 = 0.15 px more AEE, per seed
    np.testing.assert_allclose(m["aee_diff"], 0.15, atol=0.02)
    assert v["aee_diff"].item() == pytest.approx(m["aee_diff"].mean(), abs=1e-9)
    assert v["aee_favours"].item() == "BPTT"
    assert (m["no_motion_test_aee"] == 2.0).all()
    for name in ("rule_objective.csv", "window.csv", "q1_surface_models.csv", "q2_gap_slopes.csv", "paper_table2.csv"):
        assert not (out / name).exists(), name
    summary = (out / "summary.md").read_text()
    assert "accura" not in summary.lower()
    for text in ("| test AEE, S-TLLR − BPTT [px], lower is better | +0.1", "floor: no-motion AEE 2.000 px (test)",
                 "val AEE [px]", "AEE (px), lower is better (test split; selection by the lowest validation AEE)",
                 "S-TLLR's AEE is 0.1", "px higher than BPTT's (worse)", "over validation AEE (min)"):
        assert text in summary, text
    for title in ("Rule × objective (2×2)", "Open question 1", "Open question 2", "The learning window"):
        i = summary.index(f"## {title}")
        assert summary[i:].split("\n\n", 2)[1].startswith("Left out of this AEE report: "), title


@pytest.mark.skipif(chromium() is None, reason="no Chromium on PATH (Debian: apt-get install chromium) or BROWSER_PATH")
def test_flow_page_renders_in_headless_chromium(flow_report, tmp_path):
    page = flow_report / "report.html"
    r = open_page(page, tmp_path / "flow.png")
    html = page.read_text()
    expected = html.count('class="plotly-graph-div"')
    assert expected >= 3 and r["figures"] == expected and r["rendered"] == expected, r
    assert r["errors"] == [] and r["dialogs"] == [], r
    text = r["verdict_text"]
    assert text.startswith("Verdict: S-TLLR against BPTT") and "test AEE, S-TLLR − BPTT [px], lower is better" in text
    assert "accura" not in text.lower()
    assert ["fav-bptt", "BPTT"] in [c[:2] for c in r["favour_cells"]]
    # everything the page says (text, tables, figure titles, axes and hover text), plotly's own bundle aside
    own = re.sub(r"<script[^>]*>.*?</script>", lambda s: "" if "* plotly.js v" in s.group(0) else s.group(0), html,
                 flags=re.S)
    assert "accura" not in own.lower()
    assert "validation AEE (px), lower is better" in own and "no motion (test) 2 px" in own


def test_family_refuses_a_flow_study_in_one_line(tmp_path):
    flow = write_study(tmp_path / "flow", _verdict_runs(1.0), name="flow", dataset="flow_synthetic")
    rc, err = _stllr("report", "--family", str(flow), "--out", str(tmp_path / "family"))
    assert rc == 2 and err.count("\n") == 1 and "flow study (measure aee" in err, err
