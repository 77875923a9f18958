"""``build_report``: study folders in, one offline HTML page + markdown summary + CSV tables out.

Two phases. :func:`analyse` computes every table of every dataset (matched architectures,
verdict, Q1, Q2, ...) and collects every :class:`~reports._claims.Claim` the report will make
in one list; Holm's correction runs once over that list. Only then :func:`sections` writes
the page, so a sentence says "in favour of" only for a claim that holds after correction.
Every table is a CSV written beside the page; figures are drawn from those frames; the page is
assembled once from them (:mod:`reports._html`).
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from reports import _frontier as fr
from reports import _objective as ob
from reports import _questions as q1
from reports import _scaling as q2
from reports import _window as lw
from reports._claims import N_BOOT, Claim, holm
from reports._configs import config_table
from reports._html import (Block, Bullets, Figure, Section, Table, Text, byte_unit, fmt, mac_unit, pct, render_html,
                           render_markdown, scaled)
from reports._load import (STATUSES, Objective, Study, complete_runs, floors_by_dataset, load_studies,
                           objectives_by_dataset, status_counts)
from reports._measure import ACCURACY, Measure, measure_of_studies
from reports._matched import (paper_rows, still_learning_note, stopping_note, matched_table, tuning_note,
                              window_memory_note)
from reports._static import FORMATS, check_available, export_figures
from reports._verdict import settle, verdict_table
from stllr_engine.errors import StllrError


def _slug(s: object) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(s)).strip("_") or "x"


# -- phase 1: analyses ------------------------------------------------------------------------


@dataclass
class Q1:
    """Open question 1: the response surface of :func:`reports._questions.q1_analysis` (its
    claims and tables) and Optuna's importance beside it."""

    tables: dict[str, pd.DataFrame]
    claims: list[Claim] = field(default_factory=list)
    result: Any = None


@dataclass
class Q2:
    """Open question 2 per depth and per window: :func:`reports._scaling.q2_analysis`."""

    tables: dict[str, pd.DataFrame]
    matched: pd.DataFrame
    claims: list[Claim] = field(default_factory=list)
    result: Any = None


def q1_analysis(configs: pd.DataFrame, objs: dict[str, tuple[Objective, ...]], datasets: list[str],
                floors: dict[str, dict]) -> Q1:
    """Q1's numbers and claims, computed before anything is written (chance from the floors)."""
    chance = {d: float(f["chance"]) for d, f in floors.items()
              if isinstance(f, dict) and f.get("chance") is not None and np.isfinite(float(f["chance"]))}
    r = q1.q1_analysis(configs, chance=chance or None)
    importance = _concat([q1.param_importance(configs[configs["dataset"] == d], objs[d]) for d in datasets])
    return Q1({**r.tables, "q1_importance.csv": importance}, list(r.claims), r)


def q2_analysis(configs: pd.DataFrame, matched: pd.DataFrame) -> Q2:
    """Q2's numbers and claims: the gap per window and size (never pooled), exponents from the formulas."""
    r = q2.q2_analysis(configs, matched)
    return Q2(dict(r.tables), matched, list(r.claims), r)


@dataclass
class Analysis:
    """Everything the page shows, computed before a word of it is written."""

    studies: list[Study]
    runs: pd.DataFrame
    configs: pd.DataFrame
    objectives: dict[str, tuple[Objective, ...]]
    floors: dict[str, dict]
    datasets: list[str]
    tables: dict[str, pd.DataFrame]
    q1: Q1
    q2: Q2
    claims: list[Claim]
    measure: Measure = ACCURACY  # what the studies measure (accuracy, or AEE for a flow study)


#: Sections a flow (AEE) report leaves out, and the one sentence that says why.
LEFT_OUT_FOR_AEE = {
    "Rule × objective (2×2)": "its objectives (per_step, sum_output) are the classification losses; a flow study "
                              "trains on a flow loss",
    "Open question 1 — the causal / non-causal balance": "its response surface, collapse floor (chance) and bounds "
                                                         "are built for a score in [0, 1]",
    "Open question 2 — scaling with width, depth and T": "its gap slopes are fitted for classification scores",
    "The learning window (learn_steps)": "its table and figure are built for classification scores",
}


def _aee_floors(configs: pd.DataFrame, datasets: list[str], measure: Measure) -> dict[str, dict]:
    """The floor of each flow dataset: its no-motion AEE (the same for every run; the mean over configurations)."""
    col = f"{measure.floor_col}_mean"
    out: dict[str, dict] = {}
    for d in datasets:
        v = pd.to_numeric(configs.loc[configs["dataset"] == d, col], errors="coerce") if col in configs else pd.Series()
        v = v[np.isfinite(v)]
        if len(v):
            out[d] = {"no_motion_aee": float(v.mean())}
    return out


def analyse(studies: list[Study]) -> Analysis:
    """Every table and every claim of the report; Holm's correction over all claims, once.

    Studies that measure different things (accuracy and AEE) are refused in one line
    (:func:`reports._measure.measure_of_studies`). A flow study (AEE) gets the frontier, the
    matched table and the verdict in AEE (lower is better), its floor the no-motion AEE; the
    sections of :data:`LEFT_OUT_FOR_AEE` are left out (their CSVs are not written).
    """
    measure = measure_of_studies(studies)
    if measure is not ACCURACY:
        return _analyse_other(studies, measure)
    runs = complete_runs(studies)
    configs = config_table(runs)
    objs = objectives_by_dataset(studies)
    floors = floors_by_dataset(studies)
    datasets = sorted(configs["dataset"].unique()) if len(configs) else []
    tables: dict[str, pd.DataFrame] = {"runs.csv": status_counts(studies), "configurations.csv": configs}
    tables["frontier.csv"] = _concat([fr.frontier(configs[configs["dataset"] == d], objs[d]) for d in datasets])
    tables["hypervolume.csv"] = _concat([fr.hypervolume_table(configs[configs["dataset"] == d], objs[d]) for d in datasets])
    tables["projections.csv"] = _concat([fr.projections(configs[configs["dataset"] == d], objs[d]) for d in datasets])
    matched = _ensure(matched_table(configs, floors))
    tables["matched.csv"] = matched
    tables["paper_table2.csv"] = paper_rows(datasets)
    verdict, claims = verdict_table(matched)
    two_by_two = ob.objective_table(configs)
    tables["rule_objective.csv"] = two_by_two
    effects, objective_claims = ob.objective_effects(two_by_two)
    a1 = q1_analysis(configs, objs, datasets, floors)
    a2 = q2_analysis(configs, matched)
    claims = claims + objective_claims + list(getattr(a1, "claims", [])) + list(getattr(a2, "claims", []))
    holm(claims)  # one family: every claim of the report
    tables["verdict.csv"] = settle(verdict, claims)
    tables["objective_effects.csv"] = ob.settle_effects(effects, claims)
    tables["claims.csv"] = pd.DataFrame([{"key": c.key, "claim": c.text, "estimate": c.estimate, "low": c.low,
                                          "high": c.high, "p": c.p, "p_holm": c.p_adj, "holds": c.holds()}
                                         for c in claims], columns=["key", "claim", "estimate", "low", "high", "p",
                                                                    "p_holm", "holds"])
    tables.update(a1.tables)  # the same frames: items written after Holm (p_adj, holds) reach the CSVs
    tables.update(a2.tables)
    tables["window.csv"] = _ensure(lw.window_table(configs))
    return Analysis(studies, runs, configs, objs, floors, datasets, tables, a1, a2, claims)


def _analyse_other(studies: list[Study], measure: Measure) -> Analysis:
    """:func:`analyse` for a measure other than accuracy: frontier, matched table, verdict (AEE, lower is better)."""
    runs = complete_runs(studies)
    configs = config_table(runs, measure)
    objs = {d: fr.measure_objectives(o, measure) for d, o in objectives_by_dataset(studies).items()}
    datasets = sorted(configs["dataset"].unique()) if len(configs) else []
    floors = _aee_floors(configs, datasets, measure)
    tables: dict[str, pd.DataFrame] = {"runs.csv": status_counts(studies), "configurations.csv": configs}
    tables["frontier.csv"] = _concat([fr.frontier(configs[configs["dataset"] == d], objs[d], measure)
                                      for d in datasets])
    tables["hypervolume.csv"] = _concat([fr.hypervolume_table(configs[configs["dataset"] == d], objs[d], measure)
                                         for d in datasets])
    tables["projections.csv"] = _concat([fr.projections(configs[configs["dataset"] == d], objs[d], measure)
                                         for d in datasets])
    matched = _ensure(matched_table(configs, None, measure))
    tables["matched.csv"] = matched
    verdict, claims = verdict_table(matched, measure)
    if verdict.empty:
        verdict = verdict.assign(measure=pd.Series(dtype=object))
    holm(claims)
    tables["verdict.csv"] = settle(verdict, claims)
    tables["claims.csv"] = pd.DataFrame([{"key": c.key, "claim": c.text, "estimate": c.estimate, "low": c.low,
                                          "high": c.high, "p": c.p, "p_holm": c.p_adj, "holds": c.holds()}
                                         for c in claims], columns=["key", "claim", "estimate", "low", "high", "p",
                                                                    "p_holm", "holds"])
    return Analysis(studies, runs, configs, objs, floors, datasets, tables, Q1({}), Q2({}, matched), claims, measure)


# -- phase 2: the page ------------------------------------------------------------------------


def _units(df: pd.DataFrame, macs: list[str], mem: list[str]) -> tuple[tuple[float, str], tuple[float, str]]:
    """One MAC unit and one byte unit for a table (from every cost column it shows)."""
    m = [df[c] for c in macs if c in df.columns]
    b = [df[c] for c in mem if c in df.columns]
    return (mac_unit(pd.concat(m)) if m else (1.0, "MACs")), (byte_unit(pd.concat(b)) if b else (1, "B"))


_FAVOUR_CLASS = {"S-TLLR": "fav-stllr", "BPTT": "fav-bptt"}


def _text(col: str) -> Callable[[pd.Series], str]:
    """A column already written as text (fmt would read "+3.1" back as a number)."""
    return lambda r: str(r[col])


def _favour_tag(col: str) -> Callable[[pd.Series], str]:
    return lambda r: _FAVOUR_CLASS.get(str(r[col]), "fav-none")


def _verdict_rows(v: pd.Series, measure: Measure = ACCURACY) -> pd.DataFrame:
    """One verdict row (a dataset and BPTT objective) as the box's rows: quantity, estimate, low, high, p, side."""
    n = measure.name
    acc_side = v[f"{n}_favours"]
    if acc_side == "no difference":
        acc_side = "no difference at the corrected level"
    if measure is ACCURACY:
        quantity, f = "test accuracy, S-TLLR − BPTT [points]", (lambda x: pct(x, True))
    else:
        quantity = f"test {measure.label}, S-TLLR − BPTT [{measure.diff_unit}], {measure.better_word} is better"
        f = (lambda x: measure.format(x, True))
    rows = [{"quantity": quantity, "estimate": f(v[f"{n}_diff"]),
             "low": f(v[f"{n}_diff_lo"]), "high": f(v[f"{n}_diff_hi"]),
             "p (Holm)": fmt(v[f"{n}_diff_p_holm"]), "in favour of": acc_side, "side": v[f"{n}_favours"]}]
    names = {"mac": "learning MACs", "memory": "learning memory"}
    for kind, how in (("mac", "measured"), ("mac", "formula"), ("memory", "measured"), ("memory", "formula")):
        side = v[f"{kind}_{how}_favours"]
        rows.append({"quantity": f"{names[kind]}, BPTT ÷ S-TLLR, {how} [×]", "estimate": fmt(v[f"{kind}_ratio_{how}"]),
                     "low": fmt(v[f"{kind}_ratio_{how}_min"]), "high": fmt(v[f"{kind}_ratio_{how}_max"]),
                     "p (Holm)": "", "in favour of": "mixed across architectures" if side == "mixed" else side,
                     "side": side})
    return pd.DataFrame(rows)


def verdict_section(a: Analysis) -> Section:
    """The box at the top: per dataset (and BPTT objective), accuracy, MACs and memory, each with its side."""
    v = a.tables["verdict.csv"]
    sec = Section("Verdict: S-TLLR against BPTT at matched architectures", box=True)
    if v.empty:
        sec.blocks.append(Text("No architecture has complete runs of both rules yet: no verdict.", summary=True))
        return sec
    for _, r in v.iterrows():
        several = (v["dataset"] == r["dataset"]).sum() > 1
        st, bp = str(r["stllr_loss_kind"]), str(r["bptt_loss_kind"])
        objective = f"both on {bp}" if st == bp else f"S-TLLR on {st}, BPTT on {bp}"
        sec.blocks.append(Text(f"{r['dataset']}{' — ' + objective if several else ''}", summary=True, css="lead"))
        floor = _floor_phrase(r, a) if a.measure is ACCURACY else _aee_floor_phrase(r, a.measure)
        sec.blocks.append(Text(
            f"S-TLLR ({r['stllr_loss_kind']}) vs BPTT ({r['bptt_loss_kind']}), {int(r['architectures'])} matched "
            f"architecture(s), {int(r['n_seed_blocks'])} paired seed(s); {_tuned_phrase(r)}; {floor}"
            + _late_phrase(r), summary=True, css="sub"))
        if a.measure is not ACCURACY:
            sec.blocks.append(Text(f"Test {a.measure.label}, S-TLLR − BPTT: {r[f'{a.measure.name}_diff_says']}.",
                                   summary=True, css="sub"))
        rows = _verdict_rows(r, a.measure)
        sec.blocks.append(Table(rows, "verdict.csv", {c: _text(c) for c in (
                                    "quantity", "estimate", "low", "high", "p (Holm)", "in favour of")},
                                summary=True, tags={"in favour of": _favour_tag("side")}, count=False))
    n = len(a.claims)
    m = a.measure
    if m is not ACCURACY:
        sec.blocks.append(Text(
            f"{m.label}: S-TLLR − BPTT test {m.label} in {m.diff_unit}, {m.better_word} is better (a positive "
            "difference means S-TLLR's error is larger: worse), paired by seed (seed s of both rules shares split, "
            "data order and initialisation), averaged over the matched architectures; low/high: 95% interval over "
            "seeds (the wider of bootstrap and t). A side is named only when the p-value, corrected (Holm) over all "
            f"{n} claim{'s' if n != 1 else ''} of this report, is below 0.05. Costs: BPTT ÷ S-TLLR (> 1: S-TLLR "
            "needs less), geometric mean over the matched architectures; low/high: the lowest and highest "
            "architecture.", summary=True, css="note"))
        return sec
    sec.blocks.append(Text(
        "Accuracy: S-TLLR − BPTT test accuracy paired by seed (seed s of both rules shares split, data order and "
        "initialisation), averaged over the matched architectures; low/high: 95% interval over seeds (the wider of "
        "bootstrap and t). A side is named only when the p-value, corrected (Holm) over all "
        f"{n} claim{'s' if n != 1 else ''} of this report, is below 0.05. Costs: BPTT ÷ S-TLLR (> 1: S-TLLR needs "
        "less), geometric mean over the matched architectures; low/high: the lowest and highest architecture.",
        summary=True, css="note"))
    return sec


def _late_phrase(r: pd.Series) -> str:
    late = r.get("matched_runs_max_epochs", np.nan)
    if not np.isfinite(late) or late == 0:
        return ""
    return (f" Not converged: {int(late)} of {int(r['matched_runs'])} compared runs stopped at the epoch maximum, "
            "not by patience.")


def _tuned_phrase(r: pd.Series) -> str:
    n, k = int(r["architectures"]), int(r["stllr_tuned_architectures"])
    if k == 0:
        return "S-TLLR tuned: no — factor search only"
    return f"S-TLLR tuned (BPTT's learning-rate search) at {k} of {n} architecture(s)"


def _floor_phrase(r: pd.Series, a: Analysis) -> str:
    f = a.floors.get(str(r["dataset"]))
    if not f:
        return "floors not measured."
    chance, lin = r["chance_accuracy"], r["linear_readout_test_accuracy"]
    out = f"floors: chance {pct(chance)}%, linear read-out {pct(lin)}% (test)"
    best = max(float(r["stllr_best_test_accuracy"]), float(r["bptt_best_test_accuracy"]))
    if np.isfinite(lin) and np.isfinite(best) and best <= lin:
        out += " — neither rule beats the linear read-out of the input frames"
    elif np.isfinite(chance) and np.isfinite(best) and best <= chance + 0.02:
        out += " — both rules are at chance"
    return out + "."


def _aee_floor_phrase(r: pd.Series, measure: Measure) -> str:
    """The floor of a flow task in the verdict: the no-motion AEE, and whether either rule beats it."""
    zero = float(r.get(f"no_motion_{measure.test_col}", np.nan))
    if not np.isfinite(zero):
        return "floor (no-motion AEE) not measured."
    out = f"floor: no-motion {measure.label} {measure.format(zero)} {measure.unit} (test)"
    best = min(float(r[f"stllr_best_{measure.test_col}"]), float(r[f"bptt_best_{measure.test_col}"]))
    if np.isfinite(best) and best >= zero:
        out += " — neither rule beats predicting no motion"
    return out + "."


def _frontier_view(front: pd.DataFrame, objectives: tuple[Objective, ...], several_studies: bool,
                   measure: Measure = ACCURACY) -> dict:
    (mdiv, mu), (bdiv, bu) = _units(front, [f"{c}_mean" for c in fr.COSTS[:2]], [f"{c}_mean" for c in fr.COSTS[2:]])
    view: dict = {"rule": lambda r: fr.rule_name(r["rule"])}
    if several_studies:
        view["study"] = "study"
    view.update({"config": "config_id", "arch": "arch_id"})
    if "loss_kind" in front.columns:
        view["objective"] = "loss_kind"
    if measure is ACCURACY:
        for m in dict.fromkeys(["val_accuracy", *(o.metric for o in objectives if "accuracy" in o.metric),
                                "test_accuracy"]):
            tag = "val" if m == "val_accuracy" else m.replace("_accuracy", "")
            view[f"{tag} acc [%]"] = lambda r, m=m: pct(r[f"{m}_mean"])
            view[f"{tag} std"] = lambda r, m=m: pct(r[f"{m}_std"])
    else:
        for split, m in (("val", measure.val_col), ("test", measure.test_col)):
            view[measure.column_label(split)] = lambda r, m=m: measure.format(r[f"{m}_mean"])
            view[f"{split} std"] = lambda r, m=m: measure.format(r[f"{m}_std"])
    view[f"MACs formula [{mu.split()[0]}]"] = scaled(f"{fr.COSTS[0]}_mean", mdiv)
    view[f"MACs measured [{mu.split()[0]}]"] = scaled(f"{fr.COSTS[1]}_mean", mdiv)
    view[f"memory measured [{bu}]"] = scaled(f"{fr.COSTS[2]}_mean", bdiv)
    view[f"memory formula [{bu}]"] = scaled(f"{fr.COSTS[3]}_mean", bdiv)
    for o in objectives:
        if not fr.is_score(o.metric) and o.metric not in fr.COSTS:
            view[fr.label(o.metric)] = f"{o.metric}_mean"
    view["seeds"] = "n_seeds"
    return view


def frontier_sections(a: Analysis) -> tuple[list[Section], list[Figure]]:
    sections, figures = [], []
    several = len(a.studies) > 1
    for d in a.datasets:
        c, o = a.configs[a.configs["dataset"] == d], a.objectives[d]
        f = a.tables["frontier.csv"][a.tables["frontier.csv"]["dataset"] == d]
        floors_text = ("lines: the task's floors (chance, linear read-out of the input frames)." if a.measure is ACCURACY
                       else "line: the task's floor, the no-motion AEE (predicting zero flow; test split). AEE in px, "
                            "lower is better.")
        sec = Section(f"Frontier — {d}", [Text(
            f"{len(f)} non-dominated configurations of {len(c)} over " +
            ", ".join(f"{fr.label(x.metric)} ({'max' if x.maximize else 'min'})" for x in o) + ". Points: S-TLLR blue, "
            "BPTT red; " + floors_text, summary=True),
            Table(f, "frontier.csv", _frontier_view(f, o, several, a.measure), caption=f"Frontier ({d})",
                  summary=True)])
        fig = Figure(fr.frontier_figure(f, o, c, title=f"{d}: frontier (large, outlined) and dominated configurations",
                                        floors=a.floors.get(d)), f"frontier_{_slug(d)}", "frontier.csv")
        sec.blocks.append(fig)
        figures.append(fig)
        p = a.tables["projections.csv"]
        p = p[p["dataset"] == d] if len(p) else p
        for x, y in (p[["x", "y"]].drop_duplicates().itertuples(index=False) if len(p) else []):
            pf = Figure(fr.projection_figure(p, x, y, title=f"{d}: {fr.label(y)} vs {fr.label(x)}",
                                             floors=a.floors.get(d)),
                        f"projection_{_slug(d)}_{_slug(x)}_{_slug(y)}", "projections.csv")
            sec.blocks.append(pf)
            figures.append(pf)
        hv = a.tables["hypervolume.csv"]
        sec.blocks.append(Table(hv[hv["dataset"] == d], "hypervolume.csv", {
            "rules": lambda r: {"all": "both", **{k: v[0] for k, v in fr.RULE_STYLE.items()}}.get(r["rules"], r["rules"]),
            "configurations": "configurations", "frontier points": "frontier_points",
            "hypervolume (normalised)": "hypervolume_normalised"}, caption=(
            "Hypervolume, normalised (objectives scaled to ideal 0 / worst 1, reference 1.1, divided by 1.1^k)"),
            summary=True))
        sections.append(sec)
    return sections, figures


def _matched_score_table(a: Analysis, sec: Section, m: pd.DataFrame) -> None:
    """The matched table's score part for a measure other than accuracy (AEE: px, lower is better)."""
    ms = a.measure
    n, t = ms.name, ms.test_col
    f = ms.format
    view: dict = {"dataset": "dataset", "arch": "arch_id", "S-TLLR objective": "stllr_loss_kind",
                  "BPTT objective": "bptt_loss_kind", "S-TLLR tuned": lambda r: "yes" if r["stllr_tuned"] else "no",
                  f"S-TLLR {ms.column_label('test')}": lambda r: f(r[f"stllr_{t}_mean"]),
                  "S-TLLR std": lambda r: f(r[f"stllr_{t}_std"]),
                  f"BPTT {ms.column_label('test')}": lambda r: f(r[f"bptt_{t}_mean"]),
                  "BPTT std": lambda r: f(r[f"bptt_{t}_std"]),
                  "paired seeds": "n_pairs", f"diff [{ms.diff_unit}]": lambda r: f(r[f"{n}_diff"], True),
                  "95% low": lambda r: f(r[f"{n}_diff_lo"], True), "95% high": lambda r: f(r[f"{n}_diff_hi"], True),
                  "S-TLLR − BPTT reads": _text(f"{n}_diff_says"),
                  f"no-motion {ms.label} [{ms.unit}]": lambda r: f(r[f"no_motion_{t}"])}
    sec.blocks.append(Table(m, "matched.csv", view, caption=f"{ms.axis_label} (test split; selection by the lowest "
                                                            f"validation {ms.label})", summary=True))


def matched_section(a: Analysis) -> Section:
    m = a.tables["matched.csv"]
    if a.measure is not ACCURACY:
        ms = a.measure
        sec = Section("Best S-TLLR vs BPTT at matched architecture (paper Table 2 layout)", [Text(
            "Per architecture, S-TLLR at its tuned factors (the same learning-rate search as BPTT) — or, where the "
            "study did not tune it, its best factor-search configuration — against the best BPTT configuration, per "
            f"BPTT objective; both chosen by the lowest mean validation {ms.label}. Test {ms.label} in {ms.unit}, "
            f"{ms.better_word} is better; difference S-TLLR − BPTT in {ms.diff_unit} paired by seed with its 95% "
            "bootstrap interval (a positive difference: S-TLLR's error is larger, worse). Floor: the no-motion "
            f"{ms.label} (predicting zero flow). Cost ratios are BPTT ÷ S-TLLR (> 1: S-TLLR needs less); 'paper' = "
            "DESIGN §4 closed forms.", summary=True)])
    else:
        sec = Section("Best S-TLLR vs BPTT at matched architecture (paper Table 2 layout)", [Text(
        "Per architecture, S-TLLR at its tuned factors (the same learning-rate search as BPTT) — or, where the study did "
        "not tune it, its best factor-search configuration — against the best BPTT configuration, per BPTT objective; "
        "both chosen by mean validation accuracy. Test accuracy in %, difference S-TLLR − BPTT in points paired by seed "
        "with its 95% bootstrap interval; cost ratios are BPTT ÷ S-TLLR (> 1: S-TLLR needs less); 'paper' = DESIGN §4 "
        "closed forms (memory T/2, or T/(2·learn_steps) for S-TLLR on sum_output; MACs 2T/(3·learn_steps)).", summary=True)])
    if m.empty:
        sec.blocks.append(Text("No architecture has complete runs of both rules yet.", summary=True))
        return sec
    several_kinds = m.groupby(["dataset", "arch_id"]).size().max() > 1
    if a.measure is not ACCURACY:
        _matched_score_table(a, sec, m)
        _matched_rest(a, sec, m, several_kinds)
        return sec
    floors = m["chance_accuracy"].notna().any()
    acc: dict = {"dataset": "dataset", "arch": "arch_id", "S-TLLR objective": "stllr_loss_kind",
                 "BPTT objective": "bptt_loss_kind", "S-TLLR tuned": lambda r: "yes" if r["stllr_tuned"] else "no",
                 "S-TLLR test [%]": lambda r: pct(r["stllr_test_accuracy_mean"]),
                 "S-TLLR std": lambda r: pct(r["stllr_test_accuracy_std"]),
                 "BPTT test [%]": lambda r: pct(r["bptt_test_accuracy_mean"]),
                 "BPTT std": lambda r: pct(r["bptt_test_accuracy_std"]),
                 "paired seeds": "n_pairs", "diff [points]": lambda r: pct(r["accuracy_diff"], True),
                 "95% low": lambda r: pct(r["accuracy_diff_lo"], True),
                 "95% high": lambda r: pct(r["accuracy_diff_hi"], True)}
    if floors:
        acc["chance [%]"] = lambda r: pct(r["chance_accuracy"])
        acc["linear read-out [%]"] = lambda r: pct(r["linear_readout_test_accuracy"])
    sec.blocks.append(Table(m, "matched.csv", acc, caption="Accuracy (test split; selection by validation)",
                            summary=True))
    if not floors:
        sec.blocks.append(Text("Floors not measured: the study folder has no floors.json (chance and a linear "
                               "read-out of the input frames), so the table cannot show when both rules fail.",
                               summary=True))
    _matched_rest(a, sec, m, several_kinds)
    return sec


def _matched_rest(a: Analysis, sec: Section, m: pd.DataFrame, several_kinds: bool) -> None:
    """The matched section's cost and tuning tables, its notes and the paper's Table 2 (any measure)."""
    (mdiv, mu), (bdiv, bu) = _units(m, ["bptt_learning_macs_measured", "stllr_learning_macs_measured"],
                                    ["bptt_memory_bytes_measured", "stllr_memory_bytes_measured"])
    objectives = {"objectives S-TLLR / BPTT": lambda r: f"{r['stllr_loss_kind']} / {r['bptt_loss_kind']}"}
    cost: dict = {"dataset": "dataset", "arch": "arch_id", **(objectives if several_kinds else {})}
    cost.update({"S-TLLR learn_steps, mode": lambda r: f"{fmt(r['learn_steps'])}, {r['stllr_mode']}",
                 f"S-TLLR MACs [{mu.split()[0]}]": scaled("stllr_learning_macs_measured", mdiv),
                 f"BPTT MACs [{mu.split()[0]}]": scaled("bptt_learning_macs_measured", mdiv),
                 "MACs × measured": "mac_ratio_measured", "MACs × formula": "mac_ratio_formula",
                 "MACs × paper": "mac_ratio_paper",
                 f"S-TLLR memory [{bu}]": scaled("stllr_memory_bytes_measured", bdiv),
                 f"BPTT memory [{bu}]": scaled("bptt_memory_bytes_measured", bdiv),
                 "memory × measured": "memory_ratio_measured", "memory × formula": "memory_ratio_formula",
                 "memory × paper": "memory_ratio_paper"})
    sec.blocks.append(Table(m, "matched.csv", cost, caption="Learning costs per sample, measured (× = BPTT ÷ S-TLLR; "
                                                            "formula counts are in matched.csv)", summary=True))
    tune: dict = {"dataset": "dataset", "arch": "arch_id", **(objectives if several_kinds else {})}
    tune.update({"S-TLLR config": "stllr_config_id", "BPTT config": "bptt_config_id",
                 "S-TLLR factor search: configs": "stllr_search_configs", "its runs": "stllr_search_runs",
                 "S-TLLR lr trials": "stllr_tuning_trials", "BPTT lr trials": "bptt_tuning_trials",
                 "S-TLLR runs at max epochs": "stllr_stopped_max_epochs",
                 "BPTT runs at max epochs": "bptt_stopped_max_epochs"})
    sec.blocks.append(Table(m, "matched.csv", tune, caption="Tuning each side got, and how its chosen runs stopped",
                            summary=True))
    for note in (tuning_note(m), stopping_note(a.configs, m) or still_learning_note(m), window_memory_note(m)):
        if note:
            sec.blocks.append(Text(note, summary=True))
    if len(a.tables.get("paper_table2.csv", ())):
        sec.blocks.append(Table(a.tables["paper_table2.csv"], "paper_table2.csv", _PAPER_VIEW,
                                caption="Paper Table 2 (TMLR), for reference; its MACs are a quarter of exact counts "
                                        "and its MB assume ~2 bytes per value (DESIGN §7)", summary=True))


def objective_section(a: Analysis) -> Section:
    """The 2×2 of rule × objective (:mod:`reports._objective`), where the study ran all four cells."""
    t, e = a.tables["rule_objective.csv"], a.tables["objective_effects.csv"]
    sec = Section("Rule × objective (2×2)", [Text(
        "Both rules tuned alike on both objectives: S-TLLR's per-step CE over its window (per_step) and the paper's "
        "CE(Σ_t o[t]) (sum_output; S-TLLR then sends the sequence's output error down at every window step, holding "
        "its window to the sequence's end). Test accuracy in % of the best tuned configuration of each cell (chosen "
        "by validation); effects in points, paired by seed, 95% bootstrap interval, p Holm-corrected with every other "
        "claim of the report.", summary=True)])
    cells: dict = {"dataset": "dataset", "arch": "arch_id", "learn_steps": "learn_steps"}
    for rule, name in (("stllr", "S-TLLR"), ("bptt", "BPTT")):
        for kind in ("per_step", "sum_output"):
            cells[f"{name} {kind} [%]"] = (lambda c: lambda r: pct(r[c]))(f"{rule}_{kind}_test_accuracy_mean")
    cells["paired seeds"] = "n_pairs"
    sec.blocks.append(Table(t, "rule_objective.csv", cells, caption="The four cells per architecture", summary=True))
    names = {"stllr": "S-TLLR: sum_output − per_step", "bptt": "BPTT: sum_output − per_step",
             "interaction": "interaction: S-TLLR's − BPTT's",
             "paper": "S-TLLR per_step − BPTT sum_output (the paper's pairing)"}
    view: dict = {"dataset": "dataset", "effect": lambda r: names.get(str(r["effect"]), str(r["effect"])),
            "architectures": "architectures", "seed blocks": "n_seed_blocks",
            "estimate [points]": lambda r: pct(r["estimate"], True), "95% low": lambda r: pct(r["low"], True),
            "95% high": lambda r: pct(r["high"], True), "p (Holm)": lambda r: fmt(r["p_holm"]), "says": "says"}
    sec.blocks.append(Table(e, "objective_effects.csv", view, caption="Effects of the objective, per dataset",
                            summary=True))
    return sec


def _part(col: str, i: int) -> Callable[[pd.Series], str]:
    """One number of a paper cell written "mean ± std"."""
    return lambda r: str(r[col]).split("±")[i].strip() if "±" in str(r[col]) else (str(r[col]) if i == 0 else "–")


_PAPER_VIEW: dict = {
    "dataset": "dataset", "model": "model", "T": "T", "learn_steps": "learn_steps",
    "S-TLLR acc [%]": _part("stllr_accuracy", 0), "S-TLLR std": _part("stllr_accuracy", 1),
    "BPTT acc [%]": _part("bptt_accuracy", 0), "BPTT std": _part("bptt_accuracy", 1),
    "S-TLLR MACs [G]": scaled("stllr_learning_macs", 1e9), "BPTT MACs [G]": scaled("bptt_learning_macs", 1e9),
    "MACs ×": "mac_ratio", "S-TLLR memory [MB]": "stllr_memory_MB", "BPTT memory [MB]": "bptt_memory_MB",
    "memory ×": "memory_ratio"}


def _ci_cols(est: str, lo: str, hi: str, f: Callable[[object], str] = fmt) -> dict:
    return {"estimate": lambda r: f(r[est]), "95% low": lambda r: f(r[lo]), "95% high": lambda r: f(r[hi])}


def q1_items(r: Q1, a: Analysis) -> list[Block]:
    """Q1's page items (sentences, tables, figures), after Holm."""
    items: list[Block] = [Text(
        "Validation accuracy of the S-TLLR configurations as a response surface of the varied factors: additive, "
        "quadratic (interactions and curvature) or ridge-quadratic, chosen by held-out fit. Configurations near "
        "chance (collapsed) are modelled apart. Effects are conditional where the chosen surface has interactions "
        f"(e.g. λ_post where α_post < 0 and where > 0); intervals from {N_BOOT:,} bootstrap resamples of "
        "configurations; a direction is stated only when its Holm-corrected p-value over every claim of this report "
        "is below 0.05. α_post < 0 favours causal order, α_post > 0 synchrony.", summary=True)]
    items += q1.q1_items(r.result)
    importance = r.tables.get("q1_importance.csv", pd.DataFrame())
    if len(importance):
        items.append(Table(importance, "q1_importance.csv", caption=(
            "Optuna PED-ANOVA importance (study rebuilt from the table; maximised objectives negated); direction "
            "'+' = a higher setting goes with a better objective (Spearman). Descriptive: no claim rests on it")))
    return items


def _collapsed(r: Q1 | Q2, verdicts: set, what: str) -> str | None:
    """The one line of a section with nothing to say, or None: no data, or no claim / verdict stands."""
    if r.claims:
        held = sum(c.holds() for c in r.claims)
        return None if held else f"inconclusive: none of its {len(r.claims)} claims holds at the corrected level."
    if not verdicts:
        return f"no data: {what}."
    return "inconclusive on every question it asks." if verdicts <= {"inconclusive"} else None


def q1_section(r: Q1, a: Analysis) -> Section:
    sec = Section("Open question 1 — the causal / non-causal balance", q1_items(r, a))
    models = r.tables.get("q1_surface_models.csv", pd.DataFrame())
    if r.claims:
        sec.collapsed = _collapsed(r, set(), "")
    elif len(models) and "reason" in models.columns:
        reason = "; ".join(sorted({str(x) for x in models["reason"].dropna() if str(x)}))
        sec.collapsed = f"inconclusive: no claim can be made ({reason or 'no surface was fitted'})."
    else:
        sec.collapsed = "no data: no S-TLLR factor was varied."
    return sec


def q2_items(r: Q2, a: Analysis) -> list[Block]:
    """Q2's page items, after Holm."""
    items: list[Block] = [Text(
        "The S-TLLR − BPTT test-accuracy gap against width and against depth, within each learning window "
        "(learn_steps / T) and each value of the other size, never pooled over windows; paired by seed where both "
        f"rules ran the same seeds ({N_BOOT:,} resamples). Cost exponents are stated from the cost formulas and "
        "checked against the formula columns, not fitted.", summary=True)]
    return items + q2.q2_items(r.result)


def q2_section(r: Q2, a: Analysis) -> Section:
    sec = Section("Open question 2 — scaling with width, depth and T", q2_items(r, a))
    sec.collapsed = (_collapsed(r, set(), "") if r.claims else
                     "no data: the study did not vary width or depth at matched architectures with both rules.")
    return sec


def window_section(a: Analysis) -> tuple[Section, list[Figure]]:
    window = a.tables["window.csv"]
    sec = Section("The learning window (learn_steps)", [Text(
        "S-TLLR validation accuracy (mean over configurations with 95% CI, and the best configuration with its test "
        "accuracy) and learning MACs as a fraction of BPTT's at the same architecture; BPTT at learn_steps = T.",
        summary=True)])
    figures: list[Figure] = []
    if window.empty:
        sec.collapsed = "no data: no S-TLLR configuration has finished."
        return sec, figures
    sec.blocks.append(Table(window, "window.csv", {
        "dataset": "dataset", "rule": lambda r: fr.rule_name(r["rule"]), "T": "T", "learn_steps": "learn_steps",
        "configs": "n_configs", "runs": "n_runs",
        **{f"val acc [%] {k}": v for k, v in _ci_cols("val_accuracy_mean", "val_accuracy_ci_lo", "val_accuracy_ci_hi",
                                                       pct).items()},
        "best config": "best_config_id", "best val [%]": lambda r: pct(r["best_val_accuracy"]),
        "its test [%]": lambda r: pct(r["best_test_accuracy"]), "MACs / BPTT": "mac_fraction_of_bptt",
        "formula": "mac_fraction_of_bptt_paper"}, summary=True))
    for d in sorted(window["dataset"].unique()):
        fig = Figure(lw.window_figure(window, d), f"window_{_slug(d)}", "window.csv")
        sec.blocks.append(fig)
        figures.append(fig)
    return sec, figures


def configurations_section(a: Analysis) -> Section:
    c = a.configs
    (mdiv, mu), (bdiv, bu) = _units(c, [f"{x}_mean" for x in fr.COSTS[:2]], [f"{x}_mean" for x in fr.COSTS[2:]])
    view: dict = {"study": "study"} if len(a.studies) > 1 else {}
    view.update({
        "config": "config_id", "rule": lambda r: fr.rule_name(r["rule"]), "role": "role", "arch": "arch_id",
        "objective": "loss_kind", "learn_steps": "learn_steps", "α_post": "alpha_post", "λ_post": "lambda_post",
        "λ_pre": "lambda_pre", "lr": "lr"})
    ms = a.measure
    if ms is ACCURACY:
        view.update({"val [%]": lambda r: pct(r["val_accuracy_mean"]), "val std": lambda r: pct(r["val_accuracy_std"]),
                     "test [%]": lambda r: pct(r["test_accuracy_mean"]),
                     "test std": lambda r: pct(r["test_accuracy_std"])})
    else:
        for split, col in (("val", ms.val_col), ("test", ms.test_col)):
            view[ms.column_label(split)] = lambda r, col=col: ms.format(r[f"{col}_mean"])
            view[f"{split} std"] = lambda r, col=col: ms.format(r[f"{col}_std"])
    view.update({f"MACs [{mu.split()[0]}]": scaled(f"{fr.COSTS[0]}_mean", mdiv),
        f"memory measured [{bu}]": scaled(f"{fr.COSTS[2]}_mean", bdiv),
        f"memory formula [{bu}]": scaled(f"{fr.COSTS[3]}_mean", bdiv), "seeds": "n_seeds"})
    sec = Section("All configurations", [Table(c, "configurations.csv", view)])
    sec.collapsed = f"{len(c)} configurations (mean over seeds), click to show; every column in configurations.csv."
    return sec


def sections(a: Analysis) -> tuple[str, list[str], list[Section], list[Figure]]:
    """The page from an :class:`Analysis`: title, intro lines, sections and the figures among them."""
    counts = a.tables["runs.csv"]
    names = ", ".join(s.name for s in a.studies)
    title = f"S-TLLR vs BPTT: {names}"
    excluded = {st: int(counts[st].sum()) for st in STATUSES if st != "complete"}
    ms = a.measure
    scores = ("Selection uses validation accuracy only; test accuracy is shown beside." if ms is ACCURACY else
              f"This is a flow study: its measure is the {ms.label} (average end-point error, {ms.unit}), "
              f"{ms.better_word} is better. Selection uses the validation {ms.label} only (the lowest is best); "
              f"the test {ms.label} is shown beside.")
    intro = [f"Generated {_dt.datetime.now().isoformat(timespec='seconds')} from "
             f"{', '.join(str(s.dir) for s in a.studies)}.",
             f"{len(a.runs)} complete runs in {len(a.configs)} configurations enter the analyses; excluded: "
             + ", ".join(f"{v} {k}" for k, v in excluded.items()) + ". A configuration is one point (mean over its "
             "seeds, error bars = seed std). " + scores,
             "Costs are per sample, learning phase only; 'formula' = DESIGN §4 counts as computed by the engine, "
             "'measured' = the engine's allocation tracker and FLOP counter. "
             + ("Accuracies in %, memory in KiB/MiB." if ms is ACCURACY else f"{ms.label} in {ms.unit}, memory in "
                                                                              "KiB/MiB.")]
    intro[1:1] = [f"Study {s.name}: {s.description}" for s in a.studies if s.description]
    intro += [f"{s.name}: {s.runs.attrs['rebuilt']}" for s in a.studies if s.runs.attrs.get("rebuilt")]
    out: list[Section] = [verdict_section(a)]
    figures: list[Figure] = []
    out.append(Section("Studies and runs", [Table(counts, "runs.csv", summary=True)]))
    if not a.datasets:
        out.append(Section("No complete runs yet", [Text(
            "No run has status complete yet; the report fills in as the study finishes runs.", summary=True)]))
    secs, figs = frontier_sections(a)
    out += secs
    figures += figs
    out.append(matched_section(a))
    if a.measure is not ACCURACY:
        for heading, why in LEFT_OUT_FOR_AEE.items():
            out.append(Section(heading, [Text(f"Left out of this {a.measure.label} report: {why}; this section is "
                                            f"written for classification studies only.", summary=True)]))
        out.append(configurations_section(a))
        return title, intro, out, figures
    if len(a.tables["rule_objective.csv"]):
        out.append(objective_section(a))
    for sec in (q1_section(a.q1, a), q2_section(a.q2, a)):
        out.append(sec)
        figures += [b for b in sec.blocks if isinstance(b, Figure)]
    sec, figs = window_section(a)
    out.append(sec)
    figures += figs
    out.append(configurations_section(a))
    return title, intro, out, figures


def build_report(dirs: list[str | Path] | tuple[str | Path, ...] | str | Path, out: str | Path | None = None,
                 formats: tuple[str, ...] | list[str] = ()) -> Path:
    """Build the report of one or several study folders.

    Args:
        dirs: study folders (each with ``results.parquet`` and ``study.yaml``; ``floors.json``
            when the sweep measured the task's floors); a study may still be running (its
            ``running`` rows are ignored).
        out: output folder; default ``<first dir>/report``.
        formats: static figure formats among ``png``, ``svg``, ``pdf`` (needs kaleido and a
            Chromium; see :mod:`reports._static`).

    Returns:
        The path of ``report.html``; ``summary.md``, the CSV tables and ``figures/`` lie beside it.

    Raises:
        StllrError: a folder, ``results.parquet`` or ``study.yaml`` is missing or damaged, a
            format is unknown / cannot be exported, or the studies measure different things
            (accuracy and a flow study's AEE).
    """
    if isinstance(dirs, (str, Path)):
        dirs = [dirs]
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise StllrError(f"report: unknown figure format {bad[0]!r}; use one of {', '.join(FORMATS)}")
    check_available(tuple(formats))
    studies = load_studies(list(dirs))
    measure_of_studies(studies)  # accuracy and AEE studies in one report: refused before anything is written
    folder = Path(out) if out is not None else Path(dirs[0]) / "report"
    folder.mkdir(parents=True, exist_ok=True)

    a = analyse(studies)
    title, intro, secs, figures = sections(a)
    for name, df in a.tables.items():  # after the page: its items may add the corrected p-values
        df.to_csv(folder / name, index=False)
    path = folder / "report.html"
    tmp = folder / ".report.html.tmp"
    tmp.write_text(render_html(title, intro, secs), encoding="utf-8")
    tmp.replace(path)
    (folder / "summary.md").write_text(render_markdown(title, intro, secs), encoding="utf-8")
    if formats:
        export_figures({f.name: f.fig for f in figures}, folder / "figures", tuple(formats))
    return path


def _ensure(df: pd.DataFrame) -> pd.DataFrame:
    """An analysis with nothing to say may return a frame without columns; every view selects by dataset."""
    return df if "dataset" in df.columns else pd.DataFrame(columns=["dataset", *df.columns])


def _concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    full = [p for p in parts if len(p)]
    if full:
        return pd.concat(full, ignore_index=True)
    return _ensure(parts[0].iloc[0:0]) if parts else pd.DataFrame(columns=["dataset"])


__all__ = ["Analysis", "Q1", "Q2", "analyse", "build_report", "q1_analysis", "q1_items", "q1_section", "q2_analysis",
           "q2_items", "q2_section", "sections", "verdict_section"]
