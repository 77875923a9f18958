"""``stllr status``: where a study folder stands, read from its files alone (no Ray, no lock).

The budget and what is left, runs by status, whether the study is finished, the best
configuration of each rule as the report ranks it (mean validation accuracy over seeds,
then fewer learning MACs) and the size of its Pareto frontier.
"""

from __future__ import annotations

import json
import os
from typing import Any

from stllr_engine.errors import StllrError
from study.schema import STATUSES, read_results

__all__ = ["study_status"]


def _budget(folder: str) -> tuple[int | None, bool]:
    try:
        with open(os.path.join(folder, "budget.json")) as fh:
            d = json.load(fh)
        trials = d["trials"]
        if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
            return None, False
        return trials, bool(d.get("exhausted", False))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, False


def study_status(folder: str) -> dict[str, Any]:
    """The status of a study folder as plain data (``stllr status --json`` prints it)."""
    from spaces import load_study
    from study.plan import Planner

    if not os.path.isfile(os.path.join(folder, "study.yaml")):
        raise StllrError(f"{folder} is not a study folder (no study.yaml): give the folder a sweep wrote")
    spec = load_study(os.path.join(folder, "study.yaml"), check_data=False)
    df = read_results(folder)
    notes = [df.attrs["rebuilt"]] if df.attrs.get("rebuilt") else []
    rows = {str(r["trial_id"]): {k: (None if v != v else v) if isinstance(v, float) else v for k, v in r.items()}
            for r in df.astype(object).where(df.notna(), None).to_dict("records")}
    planner = Planner(spec, folder, 1)
    trained = len(planner.trained(rows))
    baselines = len(planner.trained(rows, role="baseline"))
    tuned = len(planner.trained(rows, role="tuned"))
    budget, exhausted = _budget(folder)
    if budget is None:
        notes.append("budget.json is missing or damaged: resume with --trials N to set the budget")
    counts = {s: int((df["status"] == s).sum()) for s in STATUSES if int((df["status"] == s).sum())}
    runs_dir = os.path.join(folder, "runs")
    unrecorded = [d for d in (os.listdir(runs_dir) if os.path.isdir(runs_dir) else [])
                  if os.path.exists(os.path.join(runs_dir, d, "attempts.log")) and d not in rows]
    if unrecorded:  # started, but the driver stopped before it wrote a row (kill -9 in the first epoch)
        counts["started, not recorded yet"] = len(unrecorded)
    unfinished = counts.get("running", 0) + counts.get("interrupted", 0) + len(unrecorded)
    # equal tuning: every architecture with a chosen S-TLLR configuration gets tuned S-TLLR and BPTT runs
    chosen_archs = set(planner.chosen(rows))
    tuned_archs = {r["arch_id"] for r in rows.values() if r.get("role") == "tuned"}
    baseline_archs = {r["arch_id"] for r in rows.values() if r.get("role") == "baseline"}
    missing_baselines = "bptt" in spec.rules and not chosen_archs <= (baseline_archs & tuned_archs)
    done = budget is not None and (trained >= budget or exhausted) and not unfinished and not missing_baselines
    if counts.get("running") and _locked(folder):
        state = "running"
    elif done:
        state = "finished"
    else:
        state = "unfinished: resume with stllr sweep --resume " + folder
    best, frontier_size = _ranking(folder, notes)
    return {"folder": folder, "state": state, "finished": done, "budget": budget,
            "configurations_trained": trained,
            "configurations_left": None if budget is None else max(0, budget - trained),
            "exhausted": exhausted, "baselines_trained": baselines, "tuned_trained": tuned, "runs": counts, "best": best,
            "frontier_size": frontier_size, "notes": notes}


def _locked(folder: str) -> bool:
    """Whether a sweep holds the folder now."""
    import fcntl

    path = os.path.join(folder, ".sweep.lock")
    if not os.path.exists(path):
        return False
    with open(path) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def _ranking(folder: str, notes: list[str]) -> tuple[dict[str, dict[str, Any]], int | None]:
    """The best configuration per rule and the frontier size, as the report computes them."""
    from reports._configs import config_table, ranked
    from reports._frontier import frontier
    from reports._load import complete_runs, load_study

    try:
        study = load_study(folder)
    except StllrError as exc:
        notes.append(str(exc))
        return {}, None
    from reports._measure import measure_of

    configs = config_table(complete_runs([study]))
    if configs.empty:
        return {}, 0
    m = measure_of(configs)  # accuracy, or a flow study's AEE (ranked lowest first)
    val_mean, val_std, test_mean = f"{m.val_col}_mean", f"{m.val_col}_std", f"{m.test_col}_mean"
    best = {}
    for rule in ("stllr", "bptt"):
        top = ranked(configs[configs["rule"] == rule])
        if len(top):
            r = top.iloc[0]
            best[rule] = {"config_id": str(r["config_id"]), "n_seeds": int(r["n_seeds"]), "measure": m.name,
                          **{k: float(r[k]) for k in (val_mean, val_std, test_mean)}}
            if best[rule][val_std] != best[rule][val_std]:
                best[rule][val_std] = 0.0
    return best, int(len(frontier(configs, study.objectives)))
