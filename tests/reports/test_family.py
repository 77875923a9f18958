"""``stllr report --family``: a finding checked across a task family, member by member.

Members are study folders with their own report's tables (``claims.csv``, ``verdict.csv``)
written here in the report's own columns; the counts, the sign test and the table are checked
by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from reports.family import _sign_test, family_table, write_family
from stllr_engine.errors import StllrError
from study.cli import main


def _member(root: Path, name: str, order: float, seed: int, effect: tuple[float, float, float, bool],
            diff: float) -> Path:
    d = root / name
    (d / "report").mkdir(parents=True)
    (d / "study.yaml").write_text(yaml.safe_dump({"name": name, "dataset": {
        "name": "synthetic_temporal", "options": {"T": 40, "order": order, "seed": seed}}}))
    est, lo, hi, holds = effect
    pd.DataFrame([
        {"key": "q1:synthetic_temporal:effect:alpha_post|lambda_post>0.5",
         "claim": f"α_post: {'lower' if est < 0 else 'higher'} is better where λ_post > 0.5",
         "estimate": est, "low": lo, "high": hi, "p": 0.001 if holds else 0.3, "p_holm": 0.004 if holds else 0.6,
         "holds": holds},
    ]).to_csv(d / "report" / "claims.csv", index=False)
    pd.DataFrame([{"stllr_loss_kind": "per_step", "stllr_best_test_accuracy": 0.9, "bptt_best_test_accuracy": 0.9 - diff,
                   "accuracy_diff": diff, "accuracy_diff_lo": diff - 0.02, "accuracy_diff_hi": diff + 0.02,
                   "accuracy_diff_p_holm": 0.5}]).to_csv(d / "report" / "verdict.csv", index=False)
    return d


def test_the_sign_test_is_the_binomial_tail():
    assert _sign_test(3, 3) == pytest.approx(0.25)  # 2 * (1/8)
    assert _sign_test(9, 9) == pytest.approx(2 / 512)
    assert _sign_test(5, 9) == 1.0
    assert _sign_test(8, 9) == pytest.approx(2 * 10 / 512)


def test_a_family_counts_where_a_claim_holds_and_keeps_its_sign(tmp_path, capsys):
    dirs = [_member(tmp_path, "a", 0.0, 0, (-0.40, -0.60, -0.20, True), 0.03),
            _member(tmp_path, "b", 0.0, 1, (-0.10, -0.30, +0.10, False), -0.01),
            _member(tmp_path, "c", 1.0, 0, (-0.50, -0.70, -0.30, True), 0.05)]
    members, claims = family_table(dirs)
    assert members[["order", "seed"]].values.tolist() == [[0.0, 0], [0.0, 1], [1.0, 0]]
    assert members["shift"].tolist() == [0, 0, 0]  # the dataset's default, filled in
    assert members["diff"].tolist() == pytest.approx([0.03, -0.01, 0.05])
    assert claims["claim_key"].unique().tolist() == ["q1:effect:alpha_post|lambda_post>0.5"]
    out = tmp_path / "fam"
    assert main(["report", "--family", *map(str, dirs), "--out", str(out)]) == 0
    summary = pd.read_csv(out / "family_consistency.csv").iloc[0]
    assert (summary["holds_in"], summary["same_sign"], summary["sign"]) == (2, 3, "negative")
    assert summary["sign_test_p"] == pytest.approx(0.25)
    assert summary["median_estimate"] == pytest.approx(-0.40)
    assert summary["holds_by_order"] == "order 0: 1/2; order 1: 1/1"
    assert summary["signs_by_order"] == "order 0: 0+ 2−; order 1: 0+ 1−"
    assert bool(summary["consistent"])
    md = (out / "family.md").read_text()
    assert "| α_post, low → high, where λ_post > 0.5 | 3/3 | 2/3 | 3/3 (negative) | 0.25 | -40.0 |" in md
    assert "| a | order 0, shift 0, seed 0 |" in md and "+3.0 [+1.0, +5.0]" in md
    # one member pointing the other way: not consistent, whatever the others say
    flip = _member(tmp_path, "d", 1.0, 1, (+0.30, +0.10, +0.50, True), 0.0)
    write_family([*dirs, flip], out)
    summary = pd.read_csv(out / "family_consistency.csv").iloc[0]
    assert (summary["holds_in"], summary["same_sign"]) == (3, 3) and not bool(summary["consistent"])
    assert math.isclose(summary["sign_test_p"], 0.625)


def test_a_claim_some_members_lack_is_not_consistent_and_is_worded_by_the_majority(tmp_path):
    dirs = [_member(tmp_path, "a", 0.0, 0, (-0.40, -0.60, -0.20, True), 0.03),
            _member(tmp_path, "b", 0.0, 1, (-0.30, -0.50, -0.10, True), 0.01),
            _member(tmp_path, "c", 1.0, 0, (+0.05, -0.10, +0.20, False), 0.0)]
    # member c's report makes a second claim that the others lack, in its own words (Q2's phrasing)
    extra = pd.DataFrame([{"key": "q2:synthetic_temporal:gap~depth|window=1", "claim": "S-TLLR gains on BPTT as depth grows",
                           "estimate": 0.2, "low": 0.1, "high": 0.3, "p": 0.01, "p_holm": 0.02, "holds": True}])
    claims = pd.read_csv(dirs[2] / "report" / "claims.csv")
    pd.concat([claims, extra]).to_csv(dirs[2] / "report" / "claims.csv", index=False)
    out = tmp_path / "fam"
    write_family(dirs, out)
    s = pd.read_csv(out / "family_consistency.csv").set_index("claim_key")
    q2 = s.loc["q2:gap~depth|window=1"]
    assert (q2["present_in"], q2["members"], q2["holds_in"]) == (1, 3, 1) and not bool(q2["consistent"])
    q1 = s.loc["q1:effect:alpha_post|lambda_post>0.5"]
    assert (q1["same_sign"], q1["sign"]) == (2, "negative") and not bool(q1["consistent"])  # c points the other way
    assert "| α_post, low → high, where λ_post > 0.5 | 3/3 | 2/3 | 2/3 (negative) |" in (out / "family.md").read_text()


def test_a_folder_that_is_not_a_study_is_one_line(tmp_path):
    with pytest.raises(StllrError, match="no study.yaml: --family takes study folders"):
        family_table([tmp_path])
