"""A finding checked across a task family: one study per task instance, side by side.

``stllr report --family DIR [DIR ...]`` reads each study's own report (built first where it is
missing): its verdict on the per-step objective and every claim of its ``claims.csv`` (each
already Holm-corrected within its own report), and the task setting it ran on
(``dataset.options``: the timing task's ``order`` dial, ``shift`` and instance ``seed``). It
writes ``family.csv`` (one row per member and claim) and ``family.md``: the members with their
floors and verdicts, then each claim across the members, and how often it holds and keeps its
sign.

What the family adds, and what it does not: a member's claim holds or not at its own report's
corrected level; across members nothing is corrected again. The sign count comes with a
two-sided sign test that treats the members as independent replicates (instances of one
generator are close to that; dial settings are not replicates of one another, so each dial
setting is also counted on its own). A claim that holds in one member and flips sign in another
is reported as not consistent, whatever its best p-value.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import yaml

from stllr_engine.errors import StllrError

__all__ = ["family_table", "write_family"]

#: dataset options that tell the members of a family apart, in the order they are shown
SETTING_KEYS = ("order", "shift", "seed")


def _member(path: Path) -> dict[str, Any]:
    study = path / "study.yaml"
    if not study.is_file():
        raise StllrError(f"{path}: no study.yaml: --family takes study folders made by `stllr sweep`")
    doc = yaml.safe_load(study.read_text()) or {}
    dataset = (doc.get("dataset") or {}).get("name")
    options = dict((doc.get("dataset") or {}).get("options") or {})
    from stllr_engine.datasets import DATASETS

    if isinstance(dataset, str) and dataset in DATASETS:  # the settings a member left at the dataset's defaults
        options = {**{k: v for k, v in DATASETS[dataset].defaults.items() if k in SETTING_KEYS}, **options}
    report = path / "report"
    if not (report / "claims.csv").is_file() or not (report / "verdict.csv").is_file():
        from reports._report import build_report

        build_report([str(path)], out=str(report))
    claims = pd.read_csv(report / "claims.csv")
    verdict = pd.read_csv(report / "verdict.csv")
    if "measure" in verdict.columns:  # only a flow study's verdict has the column
        raise StllrError(f"{path}: a flow study (measure aee, lower is better): "
                         "--family tabulates classification studies only; use `stllr report DIR...` for it")
    floors = json.loads((path / "floors.json").read_text()) if (path / "floors.json").is_file() else {}
    return {"dir": path, "name": doc.get("name", path.name), "dataset": dataset,
            "options": options, "claims": claims, "verdict": verdict, "floors": floors}


def _floor(floors: dict[str, Any], key: str) -> float | None:
    value = (floors.get(key) or {}).get("test_accuracy") if isinstance(floors.get(key), dict) else None
    return float(value) if value is not None else None


def family_table(dirs: Sequence[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(members, claims)``: one row per member (setting, floors, verdict on its per-step
    objective) and one row per member and claim (estimate, CI, Holm p, holds)."""
    if not dirs:
        raise StllrError("--family needs the study folders of the family's members")
    members, rows = [], []
    for d in dirs:
        m = _member(Path(d))
        setting = {k: m["options"].get(k) for k in SETTING_KEYS}
        v = m["verdict"]
        for col in ("stllr_loss_kind", "bptt_loss_kind"):  # both rules on the per-step objective
            if col in v.columns:
                v = v[v[col].astype(str).map(lambda kinds: "per_step" in kinds.split(";"))]
        first = v.iloc[0] if len(v) else None
        members.append({
            "member": m["name"], "dataset": m["dataset"], **setting,
            "chance": m["floors"].get("chance"),
            "linear_readout": _floor(m["floors"], "linear_readout"),
            "count_readout": _floor(m["floors"], "count_readout"),
            "stllr_test": None if first is None else float(first["stllr_best_test_accuracy"]),
            "bptt_test": None if first is None else float(first["bptt_best_test_accuracy"]),
            "diff": None if first is None else float(first["accuracy_diff"]),
            "diff_lo": None if first is None else float(first["accuracy_diff_lo"]),
            "diff_hi": None if first is None else float(first["accuracy_diff_hi"]),
            "diff_p_holm": None if first is None else float(first["accuracy_diff_p_holm"]),
        })
        for _, c in m["claims"].iterrows():
            key = str(c["key"])
            generic = key.replace(f":{m['dataset']}:", ":", 1)  # the claim, whatever the member
            rows.append({"member": m["name"], **setting, "claim_key": generic, "claim": c["claim"],
                         "estimate": float(c["estimate"]), "low": float(c["low"]), "high": float(c["high"]),
                         "p_holm": float(c["p_holm"]), "holds": str(c["holds"]).lower() == "true"})
    return pd.DataFrame(members), pd.DataFrame(rows)


def _sign_test(k: int, n: int) -> float:
    """Two-sided binomial sign test: k of n estimates of one sign, under p = 1/2."""
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(max(k, n - k), n + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def _pct(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * float(x):.1f}"


def _setting(row: Any) -> str:
    parts = [f"{k} {row[k]:g}" if isinstance(row[k], (int, float)) else f"{k} {row[k]}"
             for k in SETTING_KEYS if row.get(k) is not None and not (isinstance(row[k], float) and math.isnan(row[k]))]
    return ", ".join(parts)


def _claim_text(text: str) -> str:
    """A claim's words without its member's dataset (``on synthetic_temporal, ...``) or its
    member's direction (a family's estimates may point either way; their sign is counted)."""
    text = text.split(", ", 1)[1] if text.startswith("on ") and ", " in text else text
    text = re.sub(r": (lower|higher) is better( where)?", lambda m: ", low → high" + (", where" if m.group(2) else ""),
                  text)
    text = re.sub(r"^S-TLLR reaches a (higher|lower) test accuracy than BPTT", "S-TLLR − BPTT, test accuracy", text)
    text = re.sub(r"^(S-TLLR|BPTT) is (less|more) accurate on CE\(Σ_t o\[t\]\) than on (its|the) per-step objective",
                  r"\1's accuracy, CE(Σ_t o[t]) − the per-step objective", text)
    return text


def _consistency(claims: pd.DataFrame, family_size: int) -> pd.DataFrame:
    """Per claim: in how many of the family's members it exists, holds and keeps the majority's sign."""
    out = []
    for key, g in claims.groupby("claim_key", sort=False):
        present = len(g)
        neg, pos = int((g["estimate"] < 0).sum()), int((g["estimate"] > 0).sum())
        majority_negative = neg >= pos
        k = max(neg, pos)
        holds = g[g["holds"]]
        holds_signs = set((holds["estimate"] > 0).tolist())
        per_order, signs_by_order = [], []
        if "order" in g.columns and g["order"].notna().any():
            for o, go in g.groupby("order"):
                per_order.append(f"order {o:g}: {int(go['holds'].sum())}/{len(go)}")
                n_pos, n_neg = int((go["estimate"] > 0).sum()), int((go["estimate"] < 0).sum())
                signs_by_order.append(f"order {o:g}: {n_pos}+ {n_neg}−")
        # worded as a member in the majority's direction words it (the members' texts name a direction)
        agree = g[(g["estimate"] < 0) if majority_negative else (g["estimate"] > 0)]
        text = _claim_text(str((agree if len(agree) else g)["claim"].iloc[0]))
        consistent = (present == family_size and len(holds) > 0 and len(holds_signs) == 1
                      and k == present and (len(holds_signs) == 0 or holds_signs == {not majority_negative}))
        out.append({"claim_key": key, "claim": text, "members": family_size, "present_in": present,
                    "holds_in": len(holds), "same_sign": k, "ties": present - neg - pos,
                    "sign": "negative" if majority_negative else "positive",
                    "sign_test_p": _sign_test(k, neg + pos), "median_estimate": float(g["estimate"].median()),
                    "holds_by_order": "; ".join(per_order), "signs_by_order": "; ".join(signs_by_order),
                    "consistent": consistent})
    return pd.DataFrame(out)


def write_family(dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Write ``family.csv``, ``family_claims.csv`` and ``family.md`` into ``out``; returns the .md path."""
    members, claims = family_table(dirs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    members.to_csv(out / "family.csv", index=False)
    claims.to_csv(out / "family_claims.csv", index=False)
    summary = _consistency(claims, len(members)) if len(claims) else pd.DataFrame()
    if len(summary):
        summary.to_csv(out / "family_consistency.csv", index=False)
    lines = [f"# One study per task instance: {len(members)} members", ""]
    lines += ["Each member's claims are Holm-corrected within its own report; nothing is corrected again across "
              "members. *Holds in* counts the members where a claim held; *same sign* counts the members whose "
              "estimate has the majority's sign, with a two-sided sign test over the members as replicates.", ""]
    lines += ["## Members", "",
              "| member | setting | chance | linear read-out of frames | read-out of counts | S-TLLR test | BPTT test "
              "| S-TLLR − BPTT [95% CI] | Holm p |", "|---|---|---|---|---|---|---|---|---|"]
    for _, r in members.iterrows():
        ci = (f"{100 * r['diff']:+.1f} [{100 * r['diff_lo']:+.1f}, {100 * r['diff_hi']:+.1f}]"
              if r["diff"] is not None and not math.isnan(r["diff"]) else "–")
        p = f"{r['diff_p_holm']:.3g}" if r["diff_p_holm"] is not None and not math.isnan(r["diff_p_holm"]) else "–"
        lines.append(f"| {r['member']} | {_setting(r)} | {_pct(r['chance'])} | {_pct(r['linear_readout'])} | "
                     f"{_pct(r['count_readout'])} | {_pct(r['stllr_test'])} | {_pct(r['bptt_test'])} | {ci} | {p} |")
    lines += ["", "Accuracies in %, test split; differences in points, paired by seed.", ""]
    if len(summary):
        lines += ["## Claims across the members", "",
                  "| claim (worded in the majority's direction) | in | holds in | same sign | sign test p | "
                  "median estimate | holds, by dial setting | signs, by dial setting | consistent |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for _, s in summary.iterrows():
            n = s["members"]
            ties = f", {s['ties']} zero" if s["ties"] else ""
            lines.append(f"| {s['claim']} | {s['present_in']}/{n} | {s['holds_in']}/{n} | {s['same_sign']}/{n} "
                         f"({s['sign']}{ties}) | {s['sign_test_p']:.3g} | {100 * s['median_estimate']:+.1f} | "
                         f"{s['holds_by_order'] or '–'} | {s['signs_by_order'] or '–'} | "
                         f"{'yes' if s['consistent'] else 'no'} |")
        lines += ["", "*In*: the members whose report makes this claim (a report makes a conditional claim only "
                  "where its chosen surface has the interaction). *Consistent*: every member makes the claim, it "
                  "held in at least one, and every member's estimate has the same sign. Estimates in points "
                  "(test accuracy; Q1 effects from the low to the high level of the factor; Q2 slopes per "
                  "doubling).", ""]
        lines += ["## Each claim, member by member", ""]
        for key, g in claims.groupby("claim_key", sort=False):
            lines += [f"**{_claim_text(str(g['claim'].iloc[0]))}**", "", "| member | setting | estimate [95% CI] | Holm p | holds |",
                      "|---|---|---|---|---|"]
            for _, c in g.iterrows():
                lines.append(f"| {c['member']} | {_setting(c)} | {100 * c['estimate']:+.1f} "
                             f"[{100 * c['low']:+.1f}, {100 * c['high']:+.1f}] | {c['p_holm']:.3g} | "
                             f"{'yes' if c['holds'] else 'no'} |")
            lines.append("")
    path = out / "family.md"
    path.write_text("\n".join(lines) + "\n")
    return path
