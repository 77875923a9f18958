"""What to train: configurations and their runs, as plain data.

A *configuration* is one point of the search (``role="search"``, S-TLLR), or one point of
an architecture's equal tuning (DESIGN §8): S-TLLR at the factors its search chose
(``role="tuned"``) or BPTT (``role="baseline"``), each with the same settings of the
hyper-parameters both rules have (``baseline.search``); it is trained once per seed
of the study, each seed a *run* with its own ``trial_id`` (``<config_id>-s<seed>``) and
results row. The :class:`Planner` turns searched parameters into configurations, leaving
out the seeds whose runs already ended (a resumed study trains only what is missing),
prices infeasible proposals into rows, and reads back from the rows which
configurations are trained (every seed ended) and their mean objectives.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from study.schema import ENDED, run_row

__all__ = ["Run", "Configuration", "Planner", "Outcome", "config_id_of", "arch_id_of", "ARCH_KEYS", "ROLE_RULE"]

#: The searched parameters that fix an architecture (a baseline copies them).
ARCH_KEYS = ("width", "depth", "T")
#: The rule each role trains.
ROLE_RULE = {"search": "stllr", "tuned": "stllr", "baseline": "bptt"}


def config_id_of(role: str, rule: str, params: dict[str, Any]) -> str:
    """A configuration's identity: a hash of its role, rule and parameters.

    >>> config_id_of("search", "stllr", {"width": 64}) == config_id_of("search", "stllr", {"width": 64})
    True
    """
    text = json.dumps({"role": role, "rule": rule, "params": params}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def arch_id_of(arch: dict[str, Any]) -> str:
    """``model|width|depth|T``: runs with the same ``arch_id`` are compared in the matched table."""
    return f"{arch['model']}|{arch['width']}|{arch['depth']}|{arch['T']}"


@dataclass(frozen=True)
class Run:
    """One seed of a configuration: its ``trial_id`` and full experiment config (a dict)."""

    trial_id: str
    seed: int
    config: dict[str, Any]


@dataclass(frozen=True)
class Configuration:
    """A configuration to train, with only the runs still to do.

    ``done`` holds the rows of its runs that ended before (a resume); ``optuna_study`` and
    ``optuna_number`` name the Optuna trial its outcome is told to.
    """

    study: str
    folder: str
    role: str
    rule: str
    config_id: str
    arch_id: str
    params: dict[str, Any]
    runs: tuple[Run, ...]
    done: tuple[dict[str, Any], ...]
    objectives: tuple[str, ...]
    threads: int
    optuna_study: str
    optuna_number: int
    seeds: tuple[int, ...] = field(default=())
    pack: int = 1  # most seeds trained as one pack (0: automatic; see study.trial)

    def to_trial(self) -> dict[str, Any]:
        """The plain dict a Tune trial receives (see :func:`study.trial.run_configuration`)."""
        d = asdict(self)
        d["runs"] = [asdict(r) for r in self.runs]
        d["done"] = [dict(r) for r in self.done]
        return d


@dataclass(frozen=True)
class Outcome:
    """What a configuration's runs add up to: ``state`` is an Optuna state name
    (``COMPLETE``, ``FAIL``, ``PRUNED``) and ``values`` the objectives' means over seeds."""

    state: str
    values: tuple[float, ...] | None
    seeds_complete: int


class Planner:
    """Configurations of one study (see the module docstring).

    Args:
        spec: the validated study (:func:`spaces.load_study`).
        folder: the study folder.
        threads: CPU threads per run.
    """

    def __init__(self, spec: Any, folder: str, threads: int):
        self.spec = spec
        self.folder = folder
        self.threads = threads
        self.seeds = tuple(int(s) for s in spec.seeds)
        self.objectives = tuple(o.metric for o in spec.objectives)

    def arch_id(self, params: dict[str, Any]) -> str:
        return arch_id_of(self.spec.arch(params))

    @staticmethod
    def arch_params(params: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in params.items() if k in ARCH_KEYS}

    def configuration(self, role: str, params: dict[str, Any], rows: dict[str, dict[str, Any]],
                      optuna_study: str, optuna_number: int) -> Configuration:
        """The configuration of ``params``, with a run for each seed whose row has not ended."""
        rule = ROLE_RULE[role]
        cid = config_id_of(role, rule, params)
        runs, done = [], []
        for seed in self.seeds:
            row = rows.get(f"{cid}-s{seed}")
            if row is not None and row.get("status") in ENDED:
                done.append(row)
            else:
                runs.append(Run(f"{cid}-s{seed}", seed, self.spec.experiment(params, rule, seed).to_dict()))
        objectives = self.objectives if role == "search" else (self.spec.measure_columns[0],)
        return Configuration(study=self.spec.name, folder=self.folder, role=role, rule=rule, config_id=cid,
                             arch_id=self.arch_id(params), params=dict(params), runs=tuple(runs), done=tuple(done),
                             objectives=objectives, threads=self.threads, optuna_study=optuna_study,
                             optuna_number=optuna_number, seeds=self.seeds,
                             pack=int(self.spec.resources.get("pack", 1)))

    def infeasible_rows(self, params: dict[str, Any], violations: list[str], priced: dict[str, float],
                        role: str = "search") -> list[dict[str, Any]]:
        """One ``infeasible`` row per seed: priced by the formulas, never trained."""
        rule = ROLE_RULE[role]
        cid = config_id_of(role, rule, params)
        return [run_row(self.spec.name, f"{cid}-s{seed}", cid, self.arch_id(params), role,
                        self.spec.experiment(params, rule, seed).to_dict(), "infeasible",
                        reason="; ".join(violations), costs=priced, params=params)
                for seed in self.seeds]

    def rows_of(self, config_id: str, rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for s in self.seeds if (r := rows.get(f"{config_id}-s{s}")) is not None]

    def ended(self, config_id: str, rows: dict[str, dict[str, Any]]) -> bool:
        """Whether every seed's run of a configuration has ended (it counts as trained)."""
        got = self.rows_of(config_id, rows)
        return len(got) == len(self.seeds) and all(r.get("status") in ENDED for r in got)

    def trained(self, rows: dict[str, dict[str, Any]], role: str = "search") -> dict[str, dict[str, Any]]:
        """``config_id -> params`` of the configurations of ``role`` whose every seed ended."""
        ids = {r["config_id"]: r for r in rows.values() if r.get("role") == role}
        return {cid: json.loads(r.get("params_json") or "{}") for cid, r in sorted(ids.items())
                if self.ended(cid, rows)}

    def chosen(self, rows: dict[str, dict[str, Any]]) -> dict[str, tuple[str, dict[str, Any], float]]:
        """Per architecture, the S-TLLR search configuration the matched comparison uses:
        the best mean validation measure over seeds (the highest ``val_accuracy``, the lowest
        ``val_aee`` for flow) among those whose every seed completed (ties: the smaller config
        id). ``arch_id -> (config_id, params, mean of the measure)``."""
        val_col, _, direction = self.spec.measure_columns
        sign = 1.0 if direction == "maximize" else -1.0
        by_config: dict[str, list[dict[str, Any]]] = {}
        for r in rows.values():
            if r.get("role") == "search":
                by_config.setdefault(r["config_id"], []).append(r)
        best: dict[str, tuple[str, dict[str, Any], float]] = {}
        for cid in sorted(by_config):
            got = self.rows_of(cid, rows)
            vals = [float(v) for r in got if r.get("status") == "complete"
                    and isinstance(v := r.get(val_col), (int, float)) and v == v]
            if len(vals) < len(self.seeds):
                continue
            score = sum(vals) / len(vals)
            aid = got[0]["arch_id"]
            if aid not in best or sign * score > sign * best[aid][2]:
                best[aid] = (cid, json.loads(got[0].get("params_json") or "{}"), score)
        return best

    def outcome(self, run_rows: Iterable[dict[str, Any]], objectives: tuple[str, ...]) -> Outcome:
        """A configuration's outcome from its runs' rows: COMPLETE (with the means over seeds)
        only when every seed completed; PRUNED when a scheduler stopped one; else FAIL."""
        got = list(run_rows)
        complete = [r for r in got if r.get("status") == "complete"]
        if any(r.get("status") == "pruned" for r in got):
            return Outcome("PRUNED", None, len(complete))
        if not got or len(complete) < len(self.seeds):
            return Outcome("FAIL", None, len(complete))
        values = []
        for o in objectives:
            vals = [float(r[o]) for r in complete if isinstance(r.get(o), (int, float))]
            if len(vals) < len(complete) or any(v != v for v in vals):
                return Outcome("FAIL", None, len(complete))
            values.append(sum(vals) / len(vals))
        return Outcome("COMPLETE", tuple(values), len(complete))
