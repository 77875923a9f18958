"""The verdict per dataset: is S-TLLR more accurate, cheaper in MACs, cheaper in memory than BPTT?

One row per (dataset, BPTT objective) over the matched architectures (:mod:`reports._matched`):

* **accuracy**: S-TLLR − BPTT test accuracy, paired by seed. Seed s of both rules shares the
  split, the data order and the initialisation, so a seed is one block: its difference is
  the mean over the matched architectures of that seed's paired differences; the estimate
  is the mean over seeds, with a 95% bootstrap interval over seeds and the p-value of
  :func:`reports._matched.paired_stats`. This is a :class:`~reports._claims.Claim`: the
  report corrects it with every other claim (Holm) before it says "in favour of".
* **learning MACs and memory**, measured and formula: BPTT ÷ S-TLLR (> 1: S-TLLR needs
  less), the geometric mean over the matched architectures with the lowest and highest.
  Counts and exact byte measurements carry no sampling noise, so a side is favoured when
  every architecture agrees by more than :data:`EQUAL_WITHIN`.

A flow study (measure AEE, lower is better) gets the same rows with ``aee_*`` in place of
``accuracy_*``: S-TLLR − BPTT test AEE in px, so a positive difference means S-TLLR is *worse*;
its claim says which rule reaches the lower (better) AEE, and ``aee_favours`` names the rule
with the lower AEE when the claim holds. Its floor is the no-motion AEE of the task.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from reports._claims import Claim
from reports._matched import paired_stats
from reports._measure import ACCURACY, Measure, measure_of

#: Ratios within this relative distance of 1 count as "no difference".
EQUAL_WITHIN = 0.01
QUANTITIES = (("mac", "measured"), ("mac", "formula"), ("memory", "measured"), ("memory", "formula"))


def ratio_favours(ratios: pd.Series | np.ndarray) -> str:
    """``"S-TLLR"`` / ``"BPTT"`` when every BPTT ÷ S-TLLR ratio is above / below 1, else ``"no difference"`` or ``"mixed"``.

    >>> ratio_favours([2.0, 3.0]), ratio_favours([0.5]), ratio_favours([1.0, 1.005]), ratio_favours([0.5, 2.0])
    ('S-TLLR', 'BPTT', 'no difference', 'mixed')
    >>> ratio_favours([float("nan")])
    'not measured'
    """
    r = np.asarray(ratios, dtype=float)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return "not measured"
    if np.all(np.abs(r - 1.0) <= EQUAL_WITHIN):
        return "no difference"
    if np.all(r > 1.0 + EQUAL_WITHIN):
        return "S-TLLR"
    if np.all(r < 1.0 - EQUAL_WITHIN):
        return "BPTT"
    return "mixed"


def _geomean(r: np.ndarray) -> float:
    r = r[np.isfinite(r) & (r > 0)]
    return float(np.exp(np.mean(np.log(r)))) if r.size else np.nan


def seed_blocks(g: pd.DataFrame, col: str = "paired_diffs") -> dict[int, float]:
    """Per seed: the mean over architectures (rows) of that seed's paired difference, read from
    ``col`` (JSON ``{seed: difference}``; by default S-TLLR − BPTT)."""
    per: dict[int, list[float]] = {}
    for cell in g.get(col, pd.Series(dtype=object)):
        try:
            items = json.loads(str(cell)).items()
        except (TypeError, ValueError, AttributeError):
            continue
        for k, v in items:
            per.setdefault(int(k), []).append(float(v))
    return {k: float(np.mean(v)) for k, v in sorted(per.items())}


def verdict_table(matched: pd.DataFrame, measure: Measure | None = None) -> tuple[pd.DataFrame, list[Claim]]:
    """The verdict rows (one per dataset and BPTT objective) and their accuracy (or AEE) claims.

    The claims' adjusted p-values are unknown here: call :func:`reports._claims.holm` over
    every claim of the report, then :func:`settle` to write the directions into the table.
    ``measure``: default :func:`reports._measure.measure_of` ``matched``.
    """
    measure = measure or measure_of(matched)
    if measure is not ACCURACY:
        return _verdict_other(matched, measure)
    rows: list[dict] = []
    claims: list[Claim] = []
    if matched.empty:
        return pd.DataFrame(columns=["dataset", "bptt_loss_kind"]), claims
    several = matched.groupby("dataset")["bptt_loss_kind"].nunique()
    for (dataset, kind), g in matched.groupby(["dataset", "bptt_loss_kind"], sort=False):
        blocks = seed_blocks(g)
        ps = paired_stats(list(blocks.values()))
        paired = bool(blocks)
        row = {"dataset": dataset, "bptt_loss_kind": kind,
               "stllr_loss_kind": ";".join(sorted(set(g["stllr_loss_kind"].astype(str)))),
               "architectures": len(g), "stllr_tuned_architectures": int(g["stllr_tuned"].astype(bool).sum()),
               "paired_seeds": ";".join(str(k) for k in blocks), "n_seed_blocks": len(blocks),
               "accuracy_diff": ps["mean"] if paired else float(g["accuracy_diff"].mean()),
               "accuracy_diff_lo": ps["low"], "accuracy_diff_hi": ps["high"],
               "accuracy_diff_p_bootstrap": ps["p_bootstrap"], "accuracy_diff_p_t": ps["p_t"],
               "accuracy_diff_p": ps["p"], "accuracy_diff_p_holm": np.nan, "accuracy_favours": "",
               "stllr_best_test_accuracy": float(g["stllr_test_accuracy_mean"].max()),
               "bptt_best_test_accuracy": float(g["bptt_test_accuracy_mean"].max()),
               "chance_accuracy": float(g["chance_accuracy"].iloc[0]),
               "linear_readout_test_accuracy": float(g["linear_readout_test_accuracy"].iloc[0])}
        row.update(_runs_and_costs(g))
        key = f"verdict:{dataset}:accuracy" + (f":bptt_{kind}" if several[dataset] > 1 else "")
        est = row["accuracy_diff"]
        text = (f"on {dataset}, S-TLLR reaches a {'higher' if est > 0 else 'lower'} test accuracy than BPTT "
                f"(S-TLLR on {row['stllr_loss_kind']}, BPTT on {kind})")
        claims.append(Claim(key, text, est, ps["low"], ps["high"], ps["p"],
                            extra={"dataset": dataset, "bptt_loss_kind": kind, "n": ps["n"]}))
        rows.append(row)
    return pd.DataFrame(rows), claims


def _runs_and_costs(g: pd.DataFrame) -> dict:
    """A dataset's matched runs (and how many stopped at the epoch maximum) and its cost ratios
    (geometric mean, lowest, highest, the side they favour), whatever the measure."""
    st, bp = g.drop_duplicates(["arch_id", "stllr_config_id"]), g.drop_duplicates(["arch_id", "bptt_config_id"])
    late = pd.concat([st["stllr_stopped_max_epochs"], bp["bptt_stopped_max_epochs"]]).astype(float)
    row: dict = {"matched_runs": int(st["stllr_seeds"].sum() + bp["bptt_seeds"].sum()),
                 "matched_runs_max_epochs": float(late.sum()) if late.notna().any() else np.nan}
    for kind_, how in QUANTITIES:
        r = g[f"{kind_}_ratio_{how}"].astype(float).to_numpy()
        fin = r[np.isfinite(r)]
        row[f"{kind_}_ratio_{how}"] = _geomean(r)
        row[f"{kind_}_ratio_{how}_min"] = float(fin.min()) if fin.size else np.nan
        row[f"{kind_}_ratio_{how}_max"] = float(fin.max()) if fin.size else np.nan
        row[f"{kind_}_{how}_favours"] = ratio_favours(r)
    return row


def _verdict_other(matched: pd.DataFrame, measure: Measure) -> tuple[pd.DataFrame, list[Claim]]:
    """:func:`verdict_table` for a measure other than accuracy (AEE: lower is better)."""
    name, test = measure.name, measure.test_col
    rows: list[dict] = []
    claims: list[Claim] = []
    if matched.empty:
        return pd.DataFrame(columns=["dataset", "bptt_loss_kind"]), claims
    several = matched.groupby("dataset")["bptt_loss_kind"].nunique()
    best = np.nanmax if measure.higher_is_better else np.nanmin
    for (dataset, kind), g in matched.groupby(["dataset", "bptt_loss_kind"], sort=False):
        blocks = seed_blocks(g)
        ps = paired_stats(list(blocks.values()))
        paired = bool(blocks)
        est = ps["mean"] if paired else float(g[f"{name}_diff"].mean())
        row = {"dataset": dataset, "bptt_loss_kind": kind, "measure": name,
               "stllr_loss_kind": ";".join(sorted(set(g["stllr_loss_kind"].astype(str)))),
               "architectures": len(g), "stllr_tuned_architectures": int(g["stllr_tuned"].astype(bool).sum()),
               "paired_seeds": ";".join(str(k) for k in blocks), "n_seed_blocks": len(blocks),
               f"{name}_diff": est, f"{name}_diff_lo": ps["low"], f"{name}_diff_hi": ps["high"],
               f"{name}_diff_p_bootstrap": ps["p_bootstrap"], f"{name}_diff_p_t": ps["p_t"],
               f"{name}_diff_p": ps["p"], f"{name}_diff_p_holm": np.nan, f"{name}_favours": "",
               f"{name}_diff_says": measure.diff_sentence(est),
               f"stllr_best_{test}": float(best(g[f"stllr_{test}_mean"].astype(float))),
               f"bptt_best_{test}": float(best(g[f"bptt_{test}_mean"].astype(float))),
               f"no_motion_{test}": float(g[f"no_motion_{test}"].iloc[0]) if f"no_motion_{test}" in g else np.nan}
        row.update(_runs_and_costs(g))
        key = f"verdict:{dataset}:{name}" + (f":bptt_{kind}" if several[dataset] > 1 else "")
        lower = est < 0
        text = (f"on {dataset}, S-TLLR reaches a {'lower' if lower else 'higher'} test {measure.label} than BPTT "
                f"({'better' if lower != measure.higher_is_better else 'worse'}; "
                f"S-TLLR on {row['stllr_loss_kind']}, BPTT on {kind})")
        claims.append(Claim(key, text, est, ps["low"], ps["high"], ps["p"],
                            extra={"dataset": dataset, "bptt_loss_kind": kind, "n": ps["n"], "measure": name}))
        rows.append(row)
    return pd.DataFrame(rows), claims


def settle(verdict: pd.DataFrame, claims: list[Claim]) -> pd.DataFrame:
    """Write each accuracy claim's adjusted p-value and direction into the verdict rows (after Holm).

    ``accuracy_favours``: the rule with the higher accuracy when its claim holds, ``"no
    difference"`` when it does not, or says why no test was possible.
    """
    out = verdict.copy()
    measure = measure_of(out)
    name = measure.name
    by = {(c.extra.get("dataset"), c.extra.get("bptt_loss_kind")): c for c in claims
          if c.key.startswith("verdict:")}
    for i, r in out.iterrows():
        c = by.get((r["dataset"], r["bptt_loss_kind"]))
        if c is None:
            continue
        out.at[i, f"{name}_diff_p_holm"] = c.p_adj
        if not np.isfinite(c.p):
            out.at[i, f"{name}_favours"] = ("no test: fewer than 2 paired seeds" if c.extra.get("n", 0) < 2
                                            else "no test: every seed gives the same difference")
        elif c.holds():  # S-TLLR − BPTT: above 0 favours S-TLLR for accuracy, BPTT for AEE
            out.at[i, f"{name}_favours"] = measure.favours(c.estimate)
        else:
            out.at[i, f"{name}_favours"] = "no difference"
    return out
