"""The report end to end: `stllr report`, the files it writes, escaping, errors, a real browser."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from report_browser import chromium, open_page
from report_cases import synthetic_runs, write_study

from reports import build_report, load_study
from stllr_engine.errors import StllrError
from study.cli import main

XSS_STUDY = "<script>alert(1)</script>"
XSS_DATASET = "<img src=x onerror=alert(2)>"


def _stllr(*args: str) -> subprocess.CompletedProcess[str]:
    """``stllr ARGS`` in this process (the subcommand's wiring and its one-line errors), output captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(args))
    return subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two studies (a malicious study name and dataset in one), reported once through the CLI."""
    root = tmp_path_factory.mktemp("report")
    a = write_study(root / "shd", synthetic_runs(alpha_effect=0.03, stllr_configs=5))
    runs = synthetic_runs(study="evil", dataset=XSS_DATASET, stllr_configs=3, widths=(64, 128), seed=1)
    runs.loc[runs.index[0:3], "config_id"] = '"><svg onload=alert(3)>'
    b = write_study(root / "evil", runs, name=XSS_STUDY, dataset=XSS_DATASET)
    out = root / "out"
    p = _stllr("report", str(a), str(b), "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == str(out / "report.html")
    return out, a


def test_report_files_and_frontier_csv(built):
    out, _ = built
    for name in ("report.html", "summary.md", "frontier.csv", "matched.csv", "hypervolume.csv", "verdict.csv",
                 "claims.csv", "q1_surface_models.csv", "q1_conditional_effects.csv", "q1_collapse.csv",
                 "q1_best_region.csv", "q1_importance.csv", "q2_cost_exponents.csv", "q2_gap_slopes.csv",
                 "q2_gap_by_window.csv", "window.csv", "runs.csv"):
        assert (out / name).is_file(), name
    front = pd.read_csv(out / "frontier.csv")
    assert {"val_accuracy_mean", "learning_macs_formula_per_sample_mean", "learning_memory_bytes_formula_per_sample_mean",
            "test_accuracy_mean", "trial_ids", "n_seeds", "rule"} <= set(front.columns)
    assert set(front["dataset"]) == {"shd", XSS_DATASET}
    ids = {t for s in front["trial_ids"] for t in s.split(";")}
    assert not any(t.startswith(("pruned", "infeasible", "failed", "running")) for t in ids)
    runs = pd.read_csv(out / "runs.csv")
    assert runs[["pruned", "infeasible", "failed", "running"]].to_numpy().min() == 1
    summary = (out / "summary.md").read_text()
    for heading in ("## Frontier — shd", "## Best S-TLLR vs BPTT at matched architecture",
                    "## Open question 1", "## Open question 2", "## The learning window"):
        assert heading in summary
    # the planted α_post effect (+3 points per unit), found by the response surface, survives Holm
    assert "α_post, from -1 to 1: over all configurations: higher is better" in summary
    print(f"\nfrontier.csv: {len(front)} points; summary.md: {len(summary.splitlines())} lines")


def test_plotly_embedded_once_and_user_text_escaped(built):
    out, _ = built
    page = (out / "report.html").read_text()
    assert page.count("* plotly.js v") == 1  # the bundle is inlined once, before the first figure
    assert "<script src=" not in page.replace("<script src=\"data:", "")  # nothing to fetch: opens offline
    assert page.count('class="plotly-graph-div"') >= 10
    for raw in (XSS_STUDY, XSS_DATASET, "<svg onload"):
        assert raw not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_every_number_on_the_page_is_in_a_csv(built):
    """Spot check: the frontier, matched and window tables print cells of their CSVs, rounded (accuracies in %)."""
    out, _ = built
    summary = (out / "summary.md").read_text()
    front = pd.read_csv(out / "frontier.csv")
    from reports._html import fmt, pct
    for v in front["val_accuracy_mean"]:
        assert f"| {pct(float(v))} |" in summary
    matched = pd.read_csv(out / "matched.csv")
    for v in matched["memory_ratio_measured"]:
        assert fmt(float(v)) in summary
    # every Q1 claim's estimate is printed in its sentence, as the claims table has it (accuracies in points)
    claims = pd.read_csv(out / "claims.csv")
    q1 = claims[claims["key"].str.startswith("q1:shd:effect:")]
    assert len(q1) >= 3
    for c in q1.itertuples():
        assert f"{100 * c.estimate:+.2f} points" in summary, c.key


@pytest.mark.skipif(chromium() is None, reason="no Chromium on PATH (Debian: apt-get install chromium) or BROWSER_PATH")
def test_page_renders_in_headless_chromium(built, tmp_path):
    out, _ = built
    shot = tmp_path / "report.png"
    r = open_page(out / "report.html", shot)
    expected = (out / "report.html").read_text().count('class="plotly-graph-div"')
    assert r["figures"] == expected and r["rendered"] == expected, r
    assert r["errors"] == [] and r["dialogs"] == [], r
    assert all(u.startswith(("file:", "data:", "blob:")) for u in r["requests"]), r["requests"]  # offline
    assert r["title"] == f"S-TLLR vs BPTT: shd, {XSS_STUDY}".replace("shd, ", "synthetic, ")  # shown as text
    assert shot.stat().st_size > 10_000
    # the verdict box: drawn first, visible, one block per dataset, its sides coloured by rule
    assert r["verdict_visible"] and r["verdict_top"] < 600, r["verdict_top"]
    text = r["verdict_text"]
    assert text.startswith("Verdict: S-TLLR against BPTT") and text.count("test accuracy, S-TLLR − BPTT") == 2
    assert XSS_DATASET in text  # the dataset's name as text, not markup
    assert len(r["favour_cells"]) == 2 * 5 and all(c[2] != "rgba(0, 0, 0, 0)" for c in r["favour_cells"])
    assert r["page_width"] <= 1300 and r["overflowing_tables"] == [], r["overflowing_tables"]
    keep = os.environ.get("STLLR_TEST_ARTIFACTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "report.png")
    print(f"\nchromium: {r['rendered']}/{r['figures']} figures drawn, {len(r['errors'])} console errors, screenshot {shot}")


def test_missing_or_damaged_study_is_one_line(tmp_path):
    p = _stllr("report", str(tmp_path / "nope"))
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "nope" in p.stderr, p.stderr
    (tmp_path / "empty").mkdir()
    with pytest.raises(StllrError, match="empty has no results.parquet"):
        build_report([tmp_path / "empty"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.parquet").write_bytes(b"PAR1 not really")
    p = _stllr("report", str(bad))
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "bad/results.parquet" in p.stderr, p.stderr
    good = write_study(tmp_path / "yaml", synthetic_runs(widths=(64,)))
    (good / "study.yaml").write_text("name: [unclosed\n")
    with pytest.raises(StllrError, match="study.yaml is not valid YAML"):
        load_study(good)
    (good / "study.yaml").write_text("objectives: [{metric: val_accuracy, direction: up}]\n")
    with pytest.raises(StllrError, match=r"objectives\[0\].direction"):
        load_study(good)
    (good / "study.yaml").write_text("objectives: [{metric: nonsense, direction: max}]\n")
    with pytest.raises(StllrError, match="'nonsense' is not a column"):
        load_study(good)


def test_running_study_and_its_own_objectives(tmp_path):
    runs = synthetic_runs(widths=(64, 128), stllr_configs=3)
    late = runs["config_id"].isin(["c002", "c003"])
    runs.loc[late, "status"] = "running"
    runs.loc[late, ["val_accuracy", "test_accuracy"]] = np.nan
    d = write_study(tmp_path / "live", runs, objectives=[
        {"metric": "val_accuracy", "direction": "maximize"},
        {"metric": "learning_memory_bytes_measured_per_sample", "direction": "minimize"}])
    path = build_report([d])
    assert path == d / "report" / "report.html"
    front = pd.read_csv(path.parent / "frontier.csv")
    assert "learning_macs_formula_per_sample_mean" in front.columns  # kept as a setting column ...
    assert {"val_accuracy_mean", "learning_memory_bytes_measured_per_sample_mean"} <= set(front.columns)
    assert not front["config_id"].isin(["c002", "c003"]).any()
    # ... but the frontier is over the study's two objectives: no point dominates another on them
    v = front[["val_accuracy_mean", "learning_memory_bytes_measured_per_sample_mean"]].to_numpy()
    for i in range(len(v)):
        assert not np.any((v[:, 0] >= v[i, 0]) & (v[:, 1] <= v[i, 1]) & ((v[:, 0] > v[i, 0]) | (v[:, 1] < v[i, 1])))


def test_only_running_rows_still_builds(tmp_path):
    runs = synthetic_runs(widths=(64,), stllr_configs=1)
    runs["status"] = "running"
    path = build_report([write_study(tmp_path / "early", runs)], out=tmp_path / "r")
    assert "No complete runs yet" in (tmp_path / "r" / "summary.md").read_text() and path.is_file()


def test_results_replaced_atomically_while_reading(tmp_path):
    d = write_study(tmp_path / "s", synthetic_runs(widths=(64,)))
    versions = [synthetic_runs(widths=(64,), seed=i) for i in range(3)]
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            tmp = d / ".results.parquet.tmp"
            versions[i % 3].to_parquet(tmp, index=False)
            os.replace(tmp, d / "results.parquet")
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(10):
            assert len(load_study(d).runs) == len(versions[0])
    finally:
        stop.set()
        t.join()


def test_partial_studies_still_build(tmp_path):
    """A baseline-only study and one whose table lacks optional columns both give a page."""
    runs = synthetic_runs(widths=(64, 128), stllr_configs=2)
    bptt = write_study(tmp_path / "bptt", runs[runs["rule"] == "bptt"])
    bare = write_study(tmp_path / "bare", runs.drop(columns=["arch_id", "seed", "wall_time_s", "epochs_done",
                                                             "learning_macs_measured_per_sample"]))
    out = build_report([bptt, bare], out=tmp_path / "r")
    summary = (out.parent / "summary.md").read_text()
    assert "No architecture has complete runs of both rules yet." in summary  # arch_id missing: nothing to match
    assert len(pd.read_csv(out.parent / "frontier.csv")) >= 1
