"""The study's searcher: Ray Tune's OptunaSearch as a true multi-objective search, plus
the study's bookkeeping (constraints priced before training, matched BPTT baselines,
seeds as repeats, resumption).

* The Optuna study is built from a define-by-run space (so it stays multi-objective; see
  DESIGN §6) on the study's journal file, and its directions are checked against the
  study file's objectives.
* A proposal that breaks a constraint is priced with the engine's formulas, never
  trained: it is told to Optuna at once (with its constraint values, which constrained
  samplers use) and recorded as ``infeasible`` with the figure that broke it; the search
  asks again. ``trials`` counts the configurations actually trained.
* Every architecture (model, width, depth, T) a search configuration uses gets BPTT
  baselines once: ``baseline_trials`` configurations from a small Optuna study of its own
  (e.g. over the learning rate); the reports take the best of them.
* A configuration that stops before its last epoch (a scheduler stopped it) is told as
  PRUNED, so it never reaches the Pareto front.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from typing import Any

import optuna
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from stllr_engine.errors import StllrError
from study.results import ResultsStore, run_row

__all__ = ["StudySearcher", "config_id_of", "arch_id_of", "MAX_INFEASIBLE_IN_A_ROW"]

log = logging.getLogger(__name__)
MAX_INFEASIBLE_IN_A_ROW = 200


def config_id_of(role: str, rule: str, params: dict[str, Any]) -> str:
    text = json.dumps({"role": role, "rule": rule, "params": params}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def arch_id_of(arch: dict[str, Any]) -> str:
    return f"{arch['model']}|{arch['width']}|{arch['depth']}|{arch['T']}"


class StudySearcher(OptunaSearch):
    """See the module docstring.

    Args:
        spec: the validated study (:func:`spaces.load_study`).
        folder: the study folder (runs write their checkpoints under ``runs/``).
        storage: the Optuna storage (a journal file in the folder).
        store: the results table.
        trials: S-TLLR configurations still to train in this session.
        threads: CPU threads per trial.
    """

    def __init__(self, spec: Any, folder: str, storage: optuna.storages.BaseStorage, store: ResultsStore,
                 trials: int, threads: int):
        self.spec = spec
        self.folder = folder
        self.store = store
        self.remaining = int(trials)
        self.threads = threads
        self.objectives = [o.metric for o in spec.objectives]
        modes = ["max" if o.direction == "maximize" else "min" for o in spec.objectives]
        self._journal = storage
        self._trial_meta: dict[str, dict[str, Any]] = {}
        self._queue: list[dict[str, Any]] = []
        self._baselined: set[str] = set()
        self._last_params: dict[str, Any] = {}
        self.infeasible = 0
        self.exhausted = False
        self._in_flight: set[str] = set()
        super().__init__(space=self._space, metric=list(self.objectives), mode=modes,
                         sampler=spec.make_sampler(), study_name="search", storage=storage)
        assert self._ot_study is not None
        self.study: optuna.Study = self._ot_study
        want = [optuna.study.StudyDirection.MAXIMIZE if m == "max" else optuna.study.StudyDirection.MINIMIZE
                for m in modes]
        if list(self.study.directions) != want:  # DESIGN §6: never trust them
            raise StllrError(f"the Optuna study 'search' in {folder} has directions {self.study.directions}, "
                             f"not the study file's {want}: use a new study folder")

    # -- the define-by-run space ---------------------------------------------------------
    def _space(self, trial: Any) -> None:
        params = self.spec.suggest(trial)
        violations = self.spec.violations(params, "stllr")
        values = self._constraint_values(params)
        trial.set_user_attr("constraints", values)  # for samplers given a constraints_func
        for c, v in zip(self.spec.constraints, values):  # Optuna 5's own constraint record
            trial.set_constraint(f"{c.metric} {c.op} {c.value:g}", v)
        trial.set_user_attr("violations", violations)
        self._last_params = params

    def _constraint_values(self, params: dict[str, Any]) -> list[float]:
        if not self.spec.constraints:
            return [0.0]
        priced = self.spec.price(params, "stllr")
        out = []
        for c in self.spec.constraints:
            v = float(priced[c.metric])
            out.append(v - c.value if c.op == "<=" else c.value - v)
        return out

    # -- Searcher protocol ---------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
        if self._queue:
            cfg = self._queue.pop(0)
            log.info("baseline %s -> tune %s: %s", cfg["arch_id"], trial_id, cfg["params"])
            self._trial_meta[trial_id] = cfg
            return cfg
        if self.remaining <= 0:
            return Searcher.FINISHED
        infeasible = repeated = 0
        while True:
            super().suggest(trial_id)
            ot_trial = self._ot_trials[trial_id]
            params = dict(self._last_params)
            violations = ot_trial.user_attrs.get("violations", [])
            if violations:
                self._record_infeasible(ot_trial, params, violations)
                infeasible += 1
            elif self._tell_if_done(ot_trial, params):
                log.info("search trial %d: %s already ran: told from the results table", ot_trial.number, params)
                repeated += 1  # its runs all ended already (a resumed study): told from the ledger
            elif config_id_of("search", "stllr", params) in self._in_flight:
                # proposed again while it runs: one copy runs, this one is closed as a duplicate
                ot_trial.set_user_attr("duplicate", True)
                log.info("search trial %d: %s is running already: closed as a duplicate", ot_trial.number, params)
                self.study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
                repeated += 1
            else:
                break
            del self._ot_trials[trial_id]
            if infeasible >= MAX_INFEASIBLE_IN_A_ROW:
                raise StllrError(f"the constraints rejected {infeasible} proposals in a row: loosen the constraints "
                                 "or narrow the search space to configurations that fit them")
            if infeasible + repeated >= MAX_INFEASIBLE_IN_A_ROW:
                self.exhausted = True
                log.warning("the sampler proposes only configurations already run: the search space is exhausted")
                return Searcher.FINISHED
        self.remaining -= 1
        log.info("search trial %d -> tune %s: %s (%d left)", ot_trial.number, trial_id, params, self.remaining)
        cfg = self._config("search", "stllr", params, ot_trial.number)
        self._in_flight.add(cfg["config_id"])
        arch = self.spec.arch(params)
        aid = arch_id_of(arch)
        if "bptt" in self.spec.rules and aid not in self._baselined:
            self._baselined.add(aid)
            self._queue.extend(self._baselines(self._arch_params(params), aid))
        self._trial_meta[trial_id] = cfg
        return cfg

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        return None  # multi-objective Optuna takes no intermediate values

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        meta = self._trial_meta.pop(trial_id, None)
        if meta is None:
            return
        self._in_flight.discard(meta["config_id"])
        state, values = self._outcome(result, error, meta["objectives"])
        log.info("tune %s (%s %s) ended: %s %s", trial_id, meta["role"], meta["config_id"], state.name, values)
        if meta["role"] == "search":
            ot_trial = self._ot_trials.pop(trial_id, None)
            if ot_trial is not None:
                self.study.tell(ot_trial, values, state=state)
        else:
            study = optuna.load_study(study_name=meta["optuna_study"], storage=self._journal)
            study.tell(meta["optuna_number"], values, state=state)

    @staticmethod
    def _outcome(result: dict[str, Any] | None, error: bool, objectives: list[str]) -> tuple[Any, Any]:
        TS = optuna.trial.TrialState
        if error or not result:
            return TS.FAIL, None
        if not result.get("config_done"):
            return TS.PRUNED, None  # stopped early: never on the frontier
        if result.get("config_status") != "complete":
            return TS.FAIL, None
        values = [result.get(o) for o in objectives]
        if any(v is None or v != v for v in values):
            return TS.FAIL, None
        return TS.COMPLETE, values if len(values) > 1 else values[0]

    # The journal and the results table are the ledger, not Tune's experiment state.
    def save_to_dir(self, dirpath: str, session_str: str = "default") -> None:
        return None

    def save(self, checkpoint_path: str) -> None:
        return None

    def restore(self, checkpoint_path: str) -> None:
        return None

    # -- configurations ------------------------------------------------------------------
    def _config(self, role: str, rule: str, params: dict[str, Any], number: int,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
        cid = config_id_of(role, rule, params)
        arch_id = arch_id_of(self.spec.arch(params))
        done = [r for r in self.store.rows.values() if r.get("config_id") == cid and r.get("status") == "complete"]
        done_seeds = {int(r["seed"]) for r in done}
        runs = []
        for seed in self.spec.seeds:
            if seed in done_seeds:
                continue
            exp = self.spec.experiment(params, rule, seed)
            runs.append({"trial_id": f"{cid}-s{seed}", "seed": seed, "config": exp.to_dict()})
        objectives = self.objectives if role == "search" else ["val_accuracy"]
        cfg = {"study": self.spec.name, "study_dir": self.folder, "role": role, "rule": rule,
               "config_id": cid, "arch_id": arch_id, "params": params, "runs": runs, "done": done,
               "objectives": objectives, "threads": self.threads, "optuna_number": number}
        cfg.update(extra or {})
        return cfg

    @staticmethod
    def _arch_params(params: dict[str, Any]) -> dict[str, Any]:
        """The searched parameters that fix the architecture (a baseline copies them)."""
        return {k: v for k, v in params.items() if k in ("width", "depth", "T")}

    def _baselines(self, arch: dict[str, Any], aid: str) -> list[dict[str, Any]]:
        name = f"baseline {aid}"
        # each architecture's baseline search draws its own values (seeded by the architecture)
        sampler = optuna.samplers.TPESampler(seed=zlib.crc32(aid.encode()) & 0x7FFFFFFF)
        study = optuna.create_study(study_name=name, storage=self._journal, direction="maximize",
                                    sampler=sampler, load_if_exists=True)
        out = []
        existing = list(study.trials)
        for t in existing:  # a resumed study: baselines proposed before and not ended are run (again)
            if t.state == optuna.trial.TrialState.COMPLETE:
                continue
            full = {**arch, **dict(t.params)}
            if self._ended_rows(config_id_of("baseline", "bptt", full)) is not None:
                continue
            if t.state == optuna.trial.TrialState.RUNNING:
                study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            study.enqueue_trial(dict(t.params))
            again = study.ask()
            out.append(self._baseline_config(arch, study, again.number, self.spec.suggest_baseline(again, arch),
                                             name))
        for _ in range(max(0, self.spec.baseline_trials - len({tuple(sorted(t.params.items())) for t in existing}))):
            new = study.ask()
            params = self.spec.suggest_baseline(new, arch)
            cfg = self._baseline_config(arch, study, new.number, params, name)
            if any(c["config_id"] == cfg["config_id"] for c in out) or self._ended_rows(cfg["config_id"]):
                study.tell(new.number, state=optuna.trial.TrialState.FAIL)  # the same baseline twice: once is enough
                continue
            out.append(cfg)
        return out

    def _baseline_config(self, arch: dict[str, Any], study: Any, number: int, params: dict[str, Any],
                         name: str) -> dict[str, Any]:
        full = {**arch, **params}
        return self._config("baseline", "bptt", full, number, {"optuna_study": name, "baseline_params": params})

    def requeue_baselines(self, search_params: list[dict[str, Any]]) -> None:
        """After a resume: the architectures already searched keep (or finish) their baselines."""
        for params in search_params:
            aid = arch_id_of(self.spec.arch(params))
            if aid not in self._baselined and "bptt" in self.spec.rules:
                self._baselined.add(aid)
                self._queue.extend(self._baselines(self._arch_params(params), aid))

    def _ended_rows(self, cid: str) -> list[dict[str, Any]] | None:
        """The rows of a configuration when every seed's run has ended, else ``None``."""
        rows = [r for r in self.store.rows.values() if r.get("config_id") == cid]
        ended = {int(r["seed"]) for r in rows if r.get("status") in ("complete", "failed", "pruned")}
        return rows if rows and set(self.spec.seeds) <= ended else None

    def _tell_if_done(self, ot_trial: Any, params: dict[str, Any]) -> bool:
        rows = self._ended_rows(config_id_of("search", "stllr", params))
        if rows is None:
            return False
        state, values = self._outcome(_aggregate(rows, self.objectives), False, self.objectives)
        self.study.tell(ot_trial, values, state=state)
        return True

    def _record_infeasible(self, ot_trial: Any, params: dict[str, Any], violations: list[str]) -> None:
        priced = self.spec.price(params, "stllr")
        values = []
        for o, d in zip(self.objectives, self.study.directions):
            if o in priced:
                values.append(float(priced[o]))
            else:
                values.append(0.0 if d == optuna.study.StudyDirection.MAXIMIZE else 1e30)
        self.study.tell(ot_trial, values if len(values) > 1 else values[0])
        cid = config_id_of("search", "stllr", params)
        arch_id = arch_id_of(self.spec.arch(params))
        rows = []
        for seed in self.spec.seeds:
            exp = self.spec.experiment(params, "stllr", seed)
            rows.append(run_row(self.spec.name, f"{cid}-s{seed}", cid, arch_id, "search", exp.to_dict(),
                                "infeasible", reason="; ".join(violations), costs=priced, params=params))
        self.store.upsert(rows)
        self.infeasible += 1
        log.info("search trial %d: %s infeasible: %s", ot_trial.number, params, "; ".join(violations))


def _aggregate(rows: list[dict[str, Any]], objectives: list[str]) -> dict[str, Any]:
    """A configuration's final report rebuilt from its rows (means over seeds)."""
    complete = [r for r in rows if r.get("status") == "complete"]
    out: dict[str, Any] = {"config_done": True,
                           "config_status": "complete" if len(complete) == len(rows) else "failed"}
    for o in objectives:
        vals = [float(r[o]) for r in complete if r.get(o) is not None]
        out[o] = sum(vals) / len(vals) if vals else None
    return out
