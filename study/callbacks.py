"""Driver-side Tune callbacks: the results writer and the progress line.

Both reach the ledger and the searcher through :class:`~study.searcher.DriverOnly`, so
that Tune can pickle them (it does, with its run config).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ray.tune import Callback

from study.plan import Configuration
from study.schema import ENDED, run_row
from study.searcher import DriverOnly

__all__ = ["ResultsWriter", "Progress", "error_line", "fmt_s"]


def fmt_s(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


def error_line(trial: Any) -> str:
    """The last line of a failed trial's error file that names an error."""
    path = getattr(trial, "error_file", None) or ""
    text = ""
    try:
        if path and os.path.exists(path):
            with open(path) as fh:
                text = fh.read()
    except OSError:
        pass
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "error" in ln:
            return ln[:500]
    return lines[-1][:500] if lines else "the trial's worker failed"


def close_runs(ledger: Any, cfg: Configuration, status: str, reason: str) -> None:
    """Rows for the runs of ``cfg`` that have not ended: ``status`` with ``reason``, the
    epochs they trained read from their curves."""
    rows = []
    for run in cfg.runs:
        old = ledger.rows.get(run.trial_id)
        if old is not None and old.get("status") in ENDED:
            continue
        curves: list[dict[str, Any]] = []
        try:
            with open(os.path.join(cfg.folder, "runs", run.trial_id, "curves.json")) as fh:
                curves = [c for c in json.load(fh) if isinstance(c, dict)]
        except (OSError, ValueError):
            pass
        if old is None and not curves and status == "interrupted":
            continue  # never started: nothing to record, the resume plans it anew
        rows.append(run_row(cfg.study, run.trial_id, cfg.config_id, cfg.arch_id, cfg.role, run.config, status,
                            reason=reason, metrics=curves, params=cfg.params))
    if rows:
        ledger.record(rows)


class ResultsWriter(Callback):
    """Records each run's row as it starts (``running``) and ends (driver side)."""

    def __init__(self, ledger: Any, searcher: Any):
        self.live = DriverOnly(ledger=ledger)
        self.searcher = searcher

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        ledger = self.live.ledger
        if result.get("run_row"):
            ledger.record([json.loads(result["run_row"])])
        # the run reporting, and every other member of its pack (study.trial): each is running
        tids = [t for t in str(result.get("run_trial_ids") or "").split(",") if t]
        if result.get("run_trial_id") and result["run_trial_id"] not in tids:
            tids.insert(0, result["run_trial_id"])
        configs = self.searcher.configs_of(trial.trial_id) if tids else []
        for tid in tids:
            if tid not in ledger.rows or ledger.rows[tid].get("status") == "interrupted":
                cfg, run = next(((c, r) for c in configs for r in c.runs if r.trial_id == tid), (None, None))
                if cfg is not None and run is not None:
                    metrics = [{k: v for k, v in result.items() if isinstance(v, (int, float, str, bool))}]
                    ledger.record([run_row(cfg.study, tid, cfg.config_id, cfg.arch_id, cfg.role, run.config,
                                           "running", metrics=metrics, params=cfg.params)])

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        if result.get("run_row"):
            self.live.ledger.record([json.loads(result["run_row"])])
        configs = self._take(trial.trial_id)
        if not result.get("config_done") and not self.searcher.stopping:
            for cfg in configs:
                close_runs(self.live.ledger, cfg, "pruned", "stopped early by the scheduler")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        configs = self._take(trial.trial_id)
        if configs and not self.searcher.stopping:
            line = error_line(trial)
            # a worker that could not write (a full disk) leaves its runs to a resume, never ended
            status = "interrupted" if "cannot write checkpoint" in line else "failed"
            for cfg in configs:
                close_runs(self.live.ledger, cfg, status, line)

    def _take(self, trial_id: str) -> list[Any]:
        """The configurations a trial that ended trained (the searcher, called first, moved them
        to ``finished``); forgotten from there once taken."""
        configs = self.searcher.configs_of(trial_id)
        self.searcher.finished.pop(trial_id, None)
        self.searcher.finished_members.pop(trial_id, None)
        return configs


class Progress(Callback):
    """One line at every change and at least every ``every_s`` seconds: configurations
    trained of the budget, baselines, running and pending trials (waiting for resources,
    with what a trial needs and what is free), failed runs, best so far, ETA."""

    def __init__(self, ledger: Any, searcher: Any, planner: Any, budget: int, need: dict[str, float],
                 every_s: float = 5.0):
        self.live = DriverOnly(ledger=ledger, planner=planner)
        self.searcher = searcher
        self.budget = budget
        self.need = need
        self.every_s = every_s
        self.t0 = time.monotonic()
        self.last_t = 0.0
        self.last_state = ""
        self.start_done = len(planner.trained(ledger.rows))
        self.objective = (searcher.objectives[0], searcher.directions[0])
        self._summary: tuple[int, tuple[int, int, int, int, str]] = (-1, (0, 0, 0, 0, ""))
        self._waiting: tuple[float, str] = (-1e9, "")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        state = self.state(trials)
        # a change of what is done (not the running count, which blinks between two trials) or every_s
        key = state.split(" · running")[0] + (state.split(" · failed")[1] if " · failed" in state else "")
        if key != self.last_state or now - self.last_t >= self.every_s:
            self.last_state, self.last_t = key, now
            print(f"[{fmt_s(now - self.t0)}] {state}{self.eta()}", flush=True)

    def summary(self) -> tuple[int, int, int, int, str]:
        """Configurations of the search and of the equal tuning (S-TLLR, BPTT) trained, failed runs,
        the best run: derived from the rows
        once per change of the ledger (Tune calls ``on_step_end`` many times a second)."""
        ledger = self.live.ledger
        if self._summary[0] != ledger.version:
            rows, planner = ledger.rows, self.live.planner
            failed = sum(1 for r in rows.values() if r.get("status") == "failed")
            metric, direction = self.objective
            complete = [r for r in rows.values() if r.get("status") == "complete"
                        and isinstance(r.get(metric), float)]
            best = ""
            if complete:
                b = (max if direction == "maximize" else min)(complete, key=lambda r: r[metric])
                best = f" · best run {metric} {b[metric]:.4g} ({b['rule']})"
            self._summary = (ledger.version, (len(planner.trained(rows)), len(planner.trained(rows, role="tuned")),
                                              len(planner.trained(rows, role="baseline")), failed, best))
        return self._summary[1]

    def state(self, trials: list) -> str:
        searched, tuned, baselines, failed, best = self.summary()
        running = sum(1 for t in trials if t.status == "RUNNING")
        pending = sum(1 for t in trials if t.status == "PENDING")
        waiting = self.waiting() if pending and not running else ""
        return (f"S-TLLR configurations {searched}/{self.budget} · tuning: S-TLLR {tuned}, BPTT {baselines}"
                f" · running {running}"
                f" · failed runs {failed} · infeasible {self.searcher.infeasible}{best}{waiting}")

    def waiting(self) -> str:
        """What a pending trial waits for; asks Ray at most once a second."""
        if time.monotonic() - self._waiting[0] < 1.0:
            return self._waiting[1]
        self._waiting = (time.monotonic(), self._ask_ray())
        return self._waiting[1]

    def _ask_ray(self) -> str:
        try:
            import ray

            free, total = ray.available_resources(), ray.cluster_resources()
        except Exception:
            return ""
        if all(free.get(k, 0.0) >= v for k, v in self.need.items() if v > 0):
            return ""  # what a trial needs is free: the trial is only starting
        parts = [f"{k} {free.get(k, 0.0):g} of {total.get(k, 0.0):g} free" for k, v in self.need.items() if v > 0]
        needs = ", ".join(f"{v:g} {k}" for k, v in self.need.items() if v > 0)
        return f" · waiting for resources: a trial needs {needs}; {'; '.join(parts)}"

    def eta(self) -> str:
        done = self.summary()[0] - self.start_done
        left = self.budget - self.start_done - done
        if done <= 0 or left <= 0:
            return ""
        return f" · ETA {fmt_s((time.monotonic() - self.t0) / done * left)}"
