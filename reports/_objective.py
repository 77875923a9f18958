"""Rule × objective, the 2×2 of DESIGN §8: how much of a difference is the rule, how much the loss?

A study that tunes both rules on both objectives (``baseline.loss`` and ``baseline.stllr_loss``
each ``[per_step, sum_output]``) has, at every matched architecture, four cells: S-TLLR and
BPTT, each on S-TLLR's per-step objective (mean CE(o[t]) over the window) and on the paper's
CE(Σ_t o[t]). Each cell is the best tuned configuration of that rule on that objective (by mean
validation accuracy; S-TLLR ``role="tuned"``, BPTT ``role="baseline"``); its test accuracy per
seed enters paired differences (seed s of every cell shares split, data order and, where shapes
allow, initialisation):

* **objective effect within a rule**: its ``sum_output`` − ``per_step`` test accuracy;
* **interaction**: S-TLLR's objective effect − BPTT's (does the loss matter more to one rule?);
* **paper**: S-TLLR on its own objective − BPTT on CE(Σ_t o[t]), each rule on the objective the
  paper trains it with (the comparison the matched table no longer makes once S-TLLR was tuned
  on CE(Σ_t o[t]) too).

The rule effect at each objective is the verdict's (:mod:`reports._verdict`). Per dataset a seed
is one block (the mean over architectures of its paired difference, as the verdict does); each
effect is a :class:`~reports._claims.Claim` corrected with every other claim of the report.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from reports._claims import Claim
from reports._configs import ranked, seed_values
from reports._matched import loss_of, paired_stats
from reports._verdict import seed_blocks

__all__ = ["objective_table", "objective_effects", "settle_effects", "CELLS", "EFFECTS"]

#: The four cells: (rule, its role in the equal tuning, objective).
CELLS = (("stllr", "tuned", "per_step"), ("stllr", "tuned", "sum_output"),
         ("bptt", "baseline", "per_step"), ("bptt", "baseline", "sum_output"))
#: effect -> (what it says when it holds: higher, lower)
EFFECTS = {
    "stllr": ("S-TLLR is more accurate on CE(Σ_t o[t]) than on its per-step objective",
              "S-TLLR is less accurate on CE(Σ_t o[t]) than on its per-step objective"),
    "bptt": ("BPTT is more accurate on CE(Σ_t o[t]) than on the per-step objective",
             "BPTT is less accurate on CE(Σ_t o[t]) than on the per-step objective"),
    "interaction": ("the objective matters more in S-TLLR's favour than in BPTT's (rule × objective interaction)",
                    "the objective matters more in BPTT's favour than in S-TLLR's (rule × objective interaction)"),
    "paper": ("S-TLLR on its per-step objective is more accurate than BPTT on CE(Σ_t o[t]) (the paper's comparison)",
              "S-TLLR on its per-step objective is less accurate than BPTT on CE(Σ_t o[t]) (the paper's comparison)"),
}


def objective_table(configs: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, arch_id) with all four cells: each cell's configuration, test
    accuracy (mean, seeds) and the per-seed differences (``*_diffs``: JSON ``{seed: value}``)
    of each effect of :data:`EFFECTS`, with their means over the seeds all four share.
    Empty (columns dataset, arch_id only) when no architecture has the four cells."""
    rows: list[dict] = []
    if configs.empty or "role" not in configs.columns:
        return pd.DataFrame(columns=["dataset", "arch_id"])
    for (dataset, arch), g in configs.groupby(["dataset", "arch_id"], sort=True):
        kinds = pd.Series([loss_of(r) for _, r in g.iterrows()], index=g.index, dtype=object)
        cells: dict[tuple[str, str], pd.Series] = {}
        for rule, role, kind in CELLS:
            cand = ranked(g[(g["rule"] == rule) & (g["role"] == role) & (kinds == kind)])
            if cand.empty:
                break
            cells[(rule, kind)] = cand.iloc[0]
        if len(cells) < len(CELLS):
            continue
        first = cells[("stllr", "per_step")]
        row: dict = {"dataset": dataset, "arch_id": arch, "width": first["width"], "depth": first["depth"],
                     "T": first["T"], "learn_steps": first["learn_steps"]}
        by_seed = {}
        for (rule, kind), c in cells.items():
            row[f"{rule}_{kind}_config_id"] = c["config_id"]
            row[f"{rule}_{kind}_test_accuracy_mean"] = float(c["test_accuracy_mean"])
            row[f"{rule}_{kind}_seeds"] = int(c["n_seeds"])
            by_seed[(rule, kind)] = seed_values(c.get("test_accuracy_by_seed"))
        common = sorted(set.intersection(*(set(v) for v in by_seed.values())))
        effect = {
            "stllr": {k: by_seed[("stllr", "sum_output")][k] - by_seed[("stllr", "per_step")][k] for k in common},
            "bptt": {k: by_seed[("bptt", "sum_output")][k] - by_seed[("bptt", "per_step")][k] for k in common},
        }
        effect["interaction"] = {k: effect["stllr"][k] - effect["bptt"][k] for k in common}
        effect["paper"] = {k: by_seed[("stllr", "per_step")][k] - by_seed[("bptt", "sum_output")][k] for k in common}
        row["n_pairs"] = len(common)
        for name, diffs in effect.items():
            row[f"{name}_diffs"] = json.dumps({str(k): v for k, v in diffs.items()})
            row[f"{name}_effect"] = float(np.mean(list(diffs.values()))) if diffs else np.nan
        rows.append(row)
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["dataset", "arch_id"])


def objective_effects(table: pd.DataFrame) -> tuple[pd.DataFrame, list[Claim]]:
    """Per dataset and effect: the estimate over seed blocks, its 95% bootstrap interval and
    p-value (:func:`reports._matched.paired_stats`), and the claims (Holm later, then
    :func:`settle_effects`)."""
    rows: list[dict] = []
    claims: list[Claim] = []
    cols = ["dataset", "effect", "architectures", "n_seed_blocks", "estimate", "low", "high", "p", "p_holm", "says"]
    if table.empty:
        return pd.DataFrame(columns=cols), claims
    for dataset, g in table.groupby("dataset", sort=True):
        for name, (up, down) in EFFECTS.items():
            blocks = seed_blocks(g, f"{name}_diffs")
            ps = paired_stats(list(blocks.values()))
            key = f"objective:{dataset}:{name}"
            claims.append(Claim(key, f"on {dataset}, " + (up if ps["mean"] > 0 else down), ps["mean"], ps["low"],
                                ps["high"], ps["p"], extra={"dataset": dataset, "effect": name, "n": ps["n"]}))
            rows.append({"dataset": dataset, "effect": name, "architectures": len(g), "n_seed_blocks": len(blocks),
                         "estimate": ps["mean"], "low": ps["low"], "high": ps["high"], "p": ps["p"],
                         "p_holm": np.nan, "says": ""})
    return pd.DataFrame(rows, columns=cols), claims


def settle_effects(effects: pd.DataFrame, claims: list[Claim]) -> pd.DataFrame:
    """Write each effect's Holm-adjusted p-value and what the report may say (after :func:`reports._claims.holm`)."""
    out = effects.copy()
    by = {(c.extra.get("dataset"), c.extra.get("effect")): c for c in claims if c.key.startswith("objective:")}
    for i, r in out.iterrows():
        c = by.get((r["dataset"], r["effect"]))
        if c is None:
            continue
        out.at[i, "p_holm"] = c.p_adj
        if not np.isfinite(c.p):
            out.at[i, "says"] = "no test: fewer than 2 paired seeds or no variation"
        elif c.holds():
            out.at[i, "says"] = c.text.split(", ", 1)[1]
        else:
            out.at[i, "says"] = "no difference shown (Holm-corrected)"
    return out
