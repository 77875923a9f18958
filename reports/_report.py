"""``build_report``: study folders in, one offline HTML page + markdown summary + CSV tables out.

Every analysis is a function returning a DataFrame (written as a CSV); figures are drawn
from those frames; the page is assembled once from them (:mod:`reports._html`).
"""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path
from typing import Callable

import pandas as pd

from reports import _frontier as fr
from reports import _questions as q1
from reports import _scaling as q2
from reports import _window as lw
from reports._configs import config_table
from reports._load import STATUSES, Objective, complete_runs, load_studies, objectives_by_dataset, status_counts
from reports._html import Bullets, Figure, Section, Table, Text, fmt, pm, render_html, render_markdown
from reports._matched import matched_table, paper_rows, still_learning_note, window_memory_note
from reports._static import FORMATS, check_available, export_figures
from stllr_engine.errors import StllrError

def _slug(s: object) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(s)).strip("_") or "x"


def _frontier_view(objectives: tuple[Objective, ...]) -> dict:
    view: dict = {"rule": lambda r: fr.rule_name(r["rule"]), "study": "study", "config": "config_id"}
    for o in objectives:
        view[f"{fr.label(o.metric)} ({'max' if o.maximize else 'min'})"] = lambda r, m=o.metric: pm(r, m)
    view["test accuracy (not used to select)"] = lambda r: pm(r, "test_accuracy")
    view["seeds"] = "n_seeds"
    view["trial_ids"] = "trial_ids"
    return view


_MATCHED_VIEW: dict = {
    "dataset": "dataset", "arch": "arch_id", "T": "T", "learn_steps": "learn_steps", "S-TLLR mode": "stllr_mode",
    "BPTT test acc": lambda r: f"{fmt(r['bptt_test_accuracy_mean'])} ± {fmt(r['bptt_test_accuracy_std'])} (n={r['bptt_seeds']})",
    "S-TLLR test acc": lambda r: f"{fmt(r['stllr_test_accuracy_mean'])} ± {fmt(r['stllr_test_accuracy_std'])} (n={r['stllr_seeds']})",
    "acc diff (S-TLLR − BPTT) ± se": lambda r: f"{fmt(r['accuracy_diff'])} ± {fmt(r['accuracy_diff_se'])}",
    "learning MACs BPTT / S-TLLR (formula)": lambda r: f"{fmt(r['bptt_learning_macs_formula'])} / {fmt(r['stllr_learning_macs_formula'])}",
    "MAC ratio formula; measured; paper": lambda r: f"{fmt(r['mac_ratio_formula'])}; {fmt(r['mac_ratio_measured'])}; {fmt(r['mac_ratio_paper'])}",
    "memory bytes BPTT / S-TLLR (formula)": lambda r: f"{fmt(r['bptt_memory_bytes_formula'])} / {fmt(r['stllr_memory_bytes_formula'])}",
    "memory ratio formula; measured; paper": lambda r: f"{fmt(r['memory_ratio_formula'])}; {fmt(r['memory_ratio_measured'])}; {fmt(r['memory_ratio_paper'])}",
    "configs (S-TLLR, BPTT)": lambda r: f"{r['stllr_config_id']}, {r['bptt_config_id']}",
}


def _ci(est: str, lo: str, hi: str) -> Callable[[pd.Series], str]:
    return lambda r: f"{fmt(r[est])} [{fmt(r[lo])}, {fmt(r[hi])}]"


def build_report(dirs: list[str | Path] | tuple[str | Path, ...] | str | Path, out: str | Path | None = None,
                 formats: tuple[str, ...] | list[str] = ()) -> Path:
    """Build the report of one or several study folders.

    Args:
        dirs: study folders (each with ``results.parquet`` and ``study.yaml``); a study may
            still be running (its ``running`` rows are ignored).
        out: output folder; default ``<first dir>/report``.
        formats: static figure formats among ``png``, ``svg``, ``pdf`` (needs kaleido and a
            Chromium; see :mod:`reports._static`).

    Returns:
        The path of ``report.html``; ``summary.md``, the CSV tables and ``figures/`` lie beside it.

    Raises:
        StllrError: a folder, ``results.parquet`` or ``study.yaml`` is missing or damaged, or a
            format is unknown / cannot be exported.
    """
    if isinstance(dirs, (str, Path)):
        dirs = [dirs]
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise StllrError(f"report: unknown figure format {bad[0]!r}; use one of {', '.join(FORMATS)}")
    check_available(tuple(formats))
    studies = load_studies(list(dirs))
    folder = Path(out) if out is not None else Path(dirs[0]) / "report"
    folder.mkdir(parents=True, exist_ok=True)

    runs = complete_runs(studies)
    configs = config_table(runs)
    objs = objectives_by_dataset(studies)
    datasets = sorted(configs["dataset"].unique()) if len(configs) else []
    counts = status_counts(studies)

    tables: dict[str, pd.DataFrame] = {"runs.csv": counts, "configurations.csv": configs}
    front_parts, hv_parts, proj_parts = [], [], []
    for d in datasets:
        c = configs[configs["dataset"] == d]
        front_parts.append(fr.frontier(c, objs[d]))
        hv_parts.append(fr.hypervolume_table(c, objs[d]))
        proj_parts.append(fr.projections(c, objs[d]))
    tables["frontier.csv"] = _concat(front_parts)
    tables["hypervolume.csv"] = _concat(hv_parts)
    tables["projections.csv"] = _concat(proj_parts)
    matched = _ensure(matched_table(configs))
    tables["matched.csv"] = matched
    tables["paper_table2.csv"] = paper_rows(datasets)
    effects, levels = _ensure(q1.factor_effects(configs)), _ensure(q1.factor_levels(configs))
    importance = _concat([q1.param_importance(configs[configs["dataset"] == d], objs[d]) for d in datasets])
    tables.update({"q1_effects.csv": effects, "q1_levels.csv": levels, "q1_importance.csv": importance})
    scaling, exps, gaps, mem = (_ensure(q2.scaling_table(configs)), _ensure(q2.scaling_exponents(configs)),
                                _ensure(q2.gap_scaling(matched)), _ensure(q2.memory_vs_T(configs)))
    tables.update({"q2_scaling.csv": scaling, "q2_exponents.csv": exps, "q2_gap.csv": gaps, "q2_memory_vs_T.csv": mem})
    window = _ensure(lw.window_table(configs))
    tables["window.csv"] = window
    for name, df in tables.items():
        df.to_csv(folder / name, index=False)

    names = ", ".join(s.name for s in studies)
    title = f"S-TLLR vs BPTT: {names}"
    excluded = {st: int(counts[st].sum()) for st in STATUSES if st != "complete"}
    intro = [f"Generated {_dt.datetime.now().isoformat(timespec='seconds')} from "
             f"{', '.join(str(s.dir) for s in studies)}.",
             f"{len(runs)} complete runs in {len(configs)} configurations enter the analyses; excluded: "
             + ", ".join(f"{v} {k}" for k, v in excluded.items()) + ". A configuration is one point (mean over its "
             "seeds, error bars = seed std). Selection uses validation accuracy only; test accuracy is shown beside.",
             "Costs are per sample, learning phase only; 'formula' = DESIGN §4 counts as computed by the engine, "
             "'measured' = the engine's allocation tracker and FLOP counter."]
    intro[1:1] = [f"Study {s.name}: {s.description}" for s in studies if s.description]
    intro += [f"{s.name}: {s.runs.attrs['rebuilt']}" for s in studies if s.runs.attrs.get("rebuilt")]
    sections: list[Section] = [Section("Studies and runs", [Table(counts, "runs.csv", summary=True)])]
    figures: list[Figure] = []
    if not datasets:
        sections.append(Section("No complete runs yet", [Text(
            "No run has status complete yet; the report fills in as the study finishes runs.", summary=True)]))

    for d in datasets:
        c, o = configs[configs["dataset"] == d], objs[d]
        f = tables["frontier.csv"][tables["frontier.csv"]["dataset"] == d]
        sec = Section(f"Frontier — {d}", [Text(
            f"{len(f)} non-dominated configurations of {len(c)} over " +
            ", ".join(f"{fr.label(x.metric)} ({'max' if x.maximize else 'min'})" for x in o) + ".", summary=True),
            Table(f, "frontier.csv", _frontier_view(o), caption=f"Frontier ({d})", summary=True)])
        fig = Figure(fr.frontier_figure(f, o, c, title=f"{d}: frontier (bold) and dominated configurations"),
                     f"frontier_{_slug(d)}", "frontier.csv")
        sec.blocks.append(fig)
        figures.append(fig)
        p = tables["projections.csv"]
        for x, y in p[p["dataset"] == d][["x", "y"]].drop_duplicates().itertuples(index=False):
            pf = Figure(fr.projection_figure(p[p["dataset"] == d], x, y, title=f"{d}: {fr.label(y)} vs {fr.label(x)}"),
                        f"projection_{_slug(d)}_{_slug(x)}_{_slug(y)}", "projections.csv")
            sec.blocks.append(pf)
            figures.append(pf)
        hv = tables["hypervolume.csv"]
        sec.blocks.append(Table(hv[hv["dataset"] == d], "hypervolume.csv", caption=(
            "Hypervolume, normalised (objectives scaled to ideal 0 / worst 1, reference 1.1, divided by 1.1^k)"),
            summary=True))
        sections.append(sec)

    sec = Section("Best S-TLLR vs BPTT at matched architecture (paper Table 2 layout)", [Text(
        "Per arch_id, the best configuration of each rule by mean validation accuracy; test accuracy mean ± std "
        "(n seeds); ratios are BPTT / S-TLLR (> 1: S-TLLR needs less); 'paper' = DESIGN §4 closed forms "
        "(memory T/2, MACs 2T/(3·learn_steps)).", summary=True)])
    if len(matched):
        sec.blocks.append(Table(matched, "matched.csv", _MATCHED_VIEW, summary=True))
        for note in (still_learning_note(matched), window_memory_note(matched)):
            if note:
                sec.blocks.append(Text(note, summary=True))
    else:
        sec.blocks.append(Text("No architecture has complete runs of both rules yet.", summary=True))
    if len(tables["paper_table2.csv"]):
        sec.blocks.append(Table(tables["paper_table2.csv"], "paper_table2.csv",
                                caption="Paper Table 2 (TMLR), for reference; its MACs are a quarter of exact counts "
                                        "and its MB assume ~2 bytes per value (DESIGN §7)", summary=True))
    sections.append(sec)

    answers = q1.answer_q1(effects, configs)
    sec = Section("Open question 1 — the causal / non-causal balance", [Text(
        "Validation accuracy of S-TLLR configurations regressed jointly on the varied factors (other varied "
        "settings as covariates); intervals: bootstrap over configurations, Bonferroni-adjusted over the factors "
        "of a dataset (network-wide and per-layer together); an interval wider than the whole spread of the "
        "configurations' accuracies is flagged: 'uninformative' when it contains zero, 'imprecise' when it does "
        "not (the sign stands, the size is poorly known). Per-layer factors are fit over the configurations that set them (the "
        "deeper networks), where layer 0 takes the network-wide value. α_post < 0 favours causal order, "
        "α_post > 0 synchrony.", summary=True)])
    for d in datasets:
        sec.blocks.append(Text(f"{d}:", summary=True))
        sec.blocks.append(Bullets(answers.get(d, ["inconclusive: no S-TLLR factor was varied."]), summary=True))
    if len(effects):
        sec.blocks.append(Table(effects, "q1_effects.csv", {
            "dataset": "dataset", "factor": "factor", "configs": "n_configs", "runs": "n_runs", "min": "min", "max": "max",
            "effect over range [CI]": _ci("effect", "effect_lo", "effect_hi"), "CI level": "ci_level",
            "spread of configurations": "spread", "verdict": "verdict", "reason": "reason",
            "covariates": "covariates"}))
    for d in sorted(levels["dataset"].unique()) if len(levels) else []:
        fig = Figure(q1.factor_figure(configs, levels, d), f"q1_factors_{_slug(d)}", "q1_levels.csv")
        sec.blocks.append(fig)
        figures.append(fig)
    if len(importance):
        sec.blocks.append(Table(importance, "q1_importance.csv", caption=(
            "Optuna PED-ANOVA importance (study rebuilt from the table; maximised objectives negated); direction "
            "'+' = a higher setting goes with a better objective (Spearman)")))
    sections.append(sec)

    sec = Section("Open question 2 — scaling with width, depth and T", [Text(
        "Costs: log-log exponents over configurations (y ∝ size^b, other varied sizes and learn_steps controlled). "
        "Accuracy and the S-TLLR − BPTT gap: change per doubling. 95% bootstrap intervals.", summary=True)])
    a2 = q2.answer_q2(exps, gaps, configs)
    for d in datasets:
        sec.blocks.append(Text(f"{d}:", summary=True))
        sec.blocks.append(Bullets(a2.get(d, ["inconclusive: nothing to fit."]), summary=True))
    if len(exps):
        sec.blocks.append(Table(exps, "q2_exponents.csv", {
            "dataset": "dataset", "rule": lambda r: fr.rule_name(r["rule"]), "metric": "metric", "size": "size",
            "kind": "kind", "estimate [95% CI]": _ci("estimate", "ci_lo", "ci_hi"), "configs": "n_points",
            "runs": "n_runs", "verdict": "verdict"}))
    if len(gaps):
        sec.blocks.append(Table(gaps, "q2_gap.csv", {
            "dataset": "dataset", "size": "size", "gap change per doubling [95% CI]": _ci("estimate", "ci_lo", "ci_hi"),
            "architectures": "n_points", "runs": "n_runs", "verdict": "verdict"}))
    for d in datasets:
        s = scaling[scaling["dataset"] == d]
        for size in q2.SIZES:
            if s[size].nunique() > 1:
                fig = Figure(q2.scaling_figure(scaling, d, size), f"q2_{_slug(d)}_{size}", "q2_scaling.csv")
                sec.blocks.append(fig)
                figures.append(fig)
        if len(matched[matched["dataset"] == d]):
            fig = Figure(q2.gap_figure(matched, d), f"q2_gap_{_slug(d)}", "matched.csv")
            sec.blocks.append(fig)
            figures.append(fig)
        fig = Figure(q2.memory_T_figure(mem, d), f"q2_memory_T_{_slug(d)}", "q2_memory_vs_T.csv")
        sec.blocks.append(fig)
        figures.append(fig)
    sections.append(sec)

    sec = Section("The learning window (learn_steps)", [Text(
        "S-TLLR validation accuracy (mean over configurations with 95% CI, and the best configuration with its test "
        "accuracy) and learning MACs as a fraction of BPTT's at the same architecture; BPTT at learn_steps = T.",
        summary=True)])
    if len(window):
        sec.blocks.append(Table(window, "window.csv", {
            "dataset": "dataset", "rule": lambda r: fr.rule_name(r["rule"]), "T": "T", "learn_steps": "learn_steps",
            "configs": "n_configs", "runs": "n_runs", "val acc mean [95% CI]": _ci("val_accuracy_mean", "val_accuracy_ci_lo",
                                                                                 "val_accuracy_ci_hi"),
            "best config": "best_config_id", "best val": "best_val_accuracy", "its test": "best_test_accuracy",
            "MACs / BPTT": "mac_fraction_of_bptt", "formula": "mac_fraction_of_bptt_paper"}, summary=True))
        for d in sorted(window["dataset"].unique()):
            fig = Figure(lw.window_figure(window, d), f"window_{_slug(d)}", "window.csv")
            sec.blocks.append(fig)
            figures.append(fig)
    sections.append(sec)
    sections.append(Section("All configurations", [Table(configs, "configurations.csv", {
        "study": "study", "config": "config_id", "rule": lambda r: fr.rule_name(r["rule"]), "arch": "arch_id",
        "learn_steps": "learn_steps", "α_post": "alpha_post", "λ_post": "lambda_post", "λ_pre": "lambda_pre",
        "val acc": lambda r: pm(r, "val_accuracy"), "test acc": lambda r: pm(r, "test_accuracy"),
        "learning MACs": "learning_macs_formula_per_sample_mean",
        "memory bytes": "learning_memory_bytes_formula_per_sample_mean", "seeds": "n_seeds", "trial_ids": "trial_ids"})]))

    path = folder / "report.html"
    tmp = folder / ".report.html.tmp"
    tmp.write_text(render_html(title, intro, sections), encoding="utf-8")
    tmp.replace(path)
    (folder / "summary.md").write_text(render_markdown(title, intro, sections), encoding="utf-8")
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
