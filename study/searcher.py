"""The study's searcher: Ray Tune's ``Searcher`` over Optuna's ask/tell.

* ``suggest`` asks the Optuna study ``search`` for a configuration (define-by-run, so a
  multi-objective study stays multi-objective: DESIGN §6), prices it with the formulas and
  either proposes it to Tune or tells Optuna at once: ``infeasible`` (a constraint broken,
  or more memory than any node has; the rows say by how much), already trained (a
  resumed study; told from the rows), or a duplicate of a running one.
* Equal tuning (DESIGN §8): every architecture the search trained gets the same tuning
  for both rules, queued as soon as that architecture's search has ended (the search's
  budget is spent and none of its configurations of that architecture is still training or
  waiting): its choice is then final, and its tuning runs beside the search of the others.
  S-TLLR at the factors its search chose for that architecture (best mean ``val_accuracy``; ``role="tuned"``, under each objective of
  ``baseline.stllr_loss``) and BPTT under each objective
  of ``baseline.loss`` (``role="baseline"``; ``per_step`` over the chosen ``learn_steps``)
  each train the same ``baseline.trials`` settings of ``baseline.search``
  (:meth:`~spaces._study.StudySpec.tuning_settings`), with the same seeds.
* Packs (``resources.pack``, issue #16): a Tune trial trains its configuration's seeds as one
  pack (:mod:`study.trial`) and, without a scheduler, more configurations that can share it
  (same :func:`stllr_engine.pack.pack_key`, data and runtime; :func:`_signature`): queued
  ones, ones held back, and further proposals asked of the search, up to ``resources.pack``
  runs. A proposal of another kind is held for the next trial; with a sampler that does not
  learn from outcomes (``random``, ``grid``) the search is asked on past it, up to
  :data:`LOOKAHEAD_PACKS` packs' worth of proposals, so that packs fill up (a model-based
  sampler stops at the first one of another kind: proposals asked ahead are proposals made
  without the outcomes that would have informed them). Each configuration keeps its
  own Optuna trial and is told its own outcome (``member_outcomes`` of the trial's last
  report). With a scheduler (ASHA) packs never span configurations: it would stop a pack on
  the curve of one of them.
* ``on_trial_result`` stores the mean validation accuracy over seeds per epoch as Optuna
  intermediate values; ``on_trial_complete`` tells the configuration's outcome: COMPLETE
  with the means over seeds, PRUNED when a scheduler stopped it, FAIL otherwise. After an
  interrupt nothing is told: the trial stays RUNNING and ``--resume`` closes it.

Tune pickles its searcher: this one holds only plain data; the live Optuna studies, the
ledger and the study spec sit behind :class:`DriverOnly`, which pickles as empty.
"""

from __future__ import annotations

import logging
import zlib
from typing import Any

from stllr_engine.errors import StllrError
from study.plan import ROLE_RULE, Configuration, Planner, config_id_of
from study.schema import ENDED
from study.trial import AUTO_PACK, auto_pack_size

try:
    from ray.tune.search import Searcher
except ImportError:  # pragma: no cover - Ray is a dependency; this keeps the module importable for docs
    Searcher = object  # type: ignore[misc,assignment]

__all__ = ["StudySearcher", "DriverOnly", "MAX_REJECTED_IN_A_ROW"]

log = logging.getLogger(__name__)

#: Proposals rejected in a row (infeasible or already trained) before the search gives up.
MAX_REJECTED_IN_A_ROW = 200
#: With a sampler that does not learn from outcomes, how many packs' worth of proposals one
#: pack may ask of the search to fill itself (those of another kind wait in ``held``).
LOOKAHEAD_PACKS = 2
#: The samplers whose proposals do not depend on the outcomes told to them.
OUTCOME_FREE_SAMPLERS = ("random", "grid")


def _signature(cfg: Configuration) -> str | None:
    """What configurations must share to train in one pack (``None``: this one trains alone):
    the engine's :func:`stllr_engine.pack.pack_key` of its runs, their data and runtime."""
    import json

    from stllr_engine.experiment import ExperimentConfig
    from stllr_engine.pack import pack_key
    from study.trial import packable

    if not cfg.runs:
        return None
    e = ExperimentConfig.from_dict(cfg.runs[0].config)
    if not packable(e):
        return None
    return json.dumps([pack_key(e.network.to_dict(), e.training), e.data.to_dict(), e.runtime.to_dict()],
                      sort_keys=True, default=str)


class DriverOnly:
    """Live objects that must never leave the driver: pickles as empty (a copy is detached)."""

    def __init__(self, **objects: Any):
        self.objects: dict[str, Any] = objects

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.objects = {}

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["objects"][name]
        except KeyError:
            raise RuntimeError(f"{name} lives on the driver: this is a pickled copy of the searcher") from None


def _metric_names(study: Any, names: list[str]) -> None:
    """Name the objectives (optuna-dashboard shows them); experimental in Optuna, hence quiet."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.set_metric_names(names)


class StudySearcher(Searcher):  # type: ignore[misc]
    """See the module docstring.

    Args:
        spec: the validated study (:func:`spaces.load_study`).
        ledger: the open :class:`~study.ledger.Ledger` (rows, journal).
        planner: the study's :class:`~study.plan.Planner`.
        remaining: S-TLLR configurations still to train.
        node_bytes: memory of the largest node (a run needing more is refused), or ``None``.
    """

    def __init__(self, spec: Any, ledger: Any, planner: Planner, remaining: int, node_bytes: int | None = None):
        super().__init__(metric=None, mode=None)
        self.live = DriverOnly(spec=spec, ledger=ledger, planner=planner, studies={})
        self.objectives = tuple(o.metric for o in spec.objectives)
        self.directions = tuple(o.direction for o in spec.objectives)
        self.with_baselines = "bptt" in spec.rules
        self.remaining = int(remaining)
        self.node_bytes = node_bytes
        self.in_flight: dict[str, Configuration] = {}
        self.finished: dict[str, Configuration] = {}  # ended, until the callbacks (called after) take them
        # a Tune trial trains a pack of configurations (module docstring): all of them, first = in_flight's
        self.members: dict[str, list[Configuration]] = {}
        self.finished_members: dict[str, list[Configuration]] = {}
        self.member_oids: dict[str, dict[str, int]] = {}
        self.held: list[Configuration] = []  # proposed by the sampler, waiting for a pack of their kind
        self.gathering: list[Configuration] = []
        pack = int(spec.resources.get("pack", 1))
        self.pack_setting = pack
        self.pack_limit = AUTO_PACK if pack == 0 else pack
        # across configurations only without a scheduler: one would stop a pack on one member's curve
        self.cross_pack = self.pack_limit > 1 and spec.scheduler is None
        self.optuna_ids: dict[str, int] = {}  # tune trial id -> Optuna's internal trial id
        self.epoch_values: dict[str, dict[int, dict[int, float]]] = {}  # tune id -> epoch -> seed -> val
        self.queue: list[Configuration] = []
        self.tuning_queued = False  # every architecture's tuning is queued
        self.tuned_archs: set[str] = set()  # architectures whose tuning is queued
        self.completions = 0  # Tune trials ended (a new choice may be final)
        self.tuning_looked: tuple[int, frozenset[str]] | None = None
        self.lookahead = spec.sampler[0] in OUTCOME_FREE_SAMPLERS
        self.infeasible = 0
        self.exhausted = False
        self.stopping = False

    # -- Optuna studies, built lazily on the driver ----------------------------------------
    def _study(self, name: str) -> Any:
        import optuna

        studies = self.live.studies
        if name not in studies:
            storage = self.live.ledger.storage
            if name == "search":
                study = optuna.create_study(study_name="search", storage=storage, sampler=self.live.spec.make_sampler(),
                                            directions=list(self.directions), load_if_exists=True)
                want = [optuna.study.StudyDirection.MAXIMIZE if d == "maximize" else
                        optuna.study.StudyDirection.MINIMIZE for d in self.directions]
                if list(study.directions) != want:  # DESIGN §6: never trust them
                    raise StllrError(f"the Optuna study 'search' in {self.live.ledger.folder} has directions "
                                     f"{study.directions}, not the study file's {want}: use a new study folder")
                _metric_names(study, list(self.objectives))
            else:  # "tuned <arch>" / "baseline <arch> <loss>": the settings are enqueued (tuning_settings)
                sampler = optuna.samplers.RandomSampler(seed=zlib.crc32(name.encode()) & 0x7FFFFFFF)
                val_col, _, direction = self.live.spec.measure_columns
                study = optuna.create_study(study_name=name, storage=storage, direction=direction, sampler=sampler,
                                            load_if_exists=True)
                _metric_names(study, [val_col])
            studies[name] = study
        return studies[name]

    # -- Searcher protocol -----------------------------------------------------------------
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
        if self.stopping:
            return Searcher.FINISHED
        while True:
            while self.queue:
                cfg = self.queue.pop(0)
                if cfg.config_id in self._busy():
                    continue
                return self._propose(trial_id, self._gather(cfg))
            if self.held:
                return self._propose(trial_id, self._gather(self.held.pop(0)))
            if self.remaining > 0 and not self.exhausted:
                found = self._next_search_config()
                if found is not None:
                    self.remaining -= 1
                    return self._propose(trial_id, self._gather(found))
                if not self.exhausted:
                    return Searcher.FINISHED
            if not self.with_baselines or self.tuning_queued:
                return Searcher.FINISHED
            searching = {c.arch_id for c in [*self.in_flight_configs(), *self.held, *self.gathering]
                         if c.role == "search"}
            looked = (self.completions, frozenset(searching))
            if looked != self.tuning_looked:  # Tune asks often while it waits: look again only when it matters
                self.tuning_looked = looked
                self.queue_tuning(still_searching=searching)
            if not self.queue and searching:
                return None  # the other architectures' tuning waits for their search's choice: Tune asks again

    # -- packs of configurations ---------------------------------------------------------------
    def in_flight_configs(self) -> list[Configuration]:
        """Every configuration a running Tune trial trains (the members of its pack)."""
        return [c for tid, first in self.in_flight.items() for c in self.members.get(tid, [first])]

    def configs_of(self, trial_id: str) -> list[Configuration]:
        """The configurations a Tune trial trains (or trained, until the callbacks have seen its end)."""
        if trial_id in self.in_flight:
            return self.members.get(trial_id, [self.in_flight[trial_id]])
        if trial_id in self.finished:
            return self.finished_members.get(trial_id, [self.finished[trial_id]])
        return []

    def _busy(self) -> set[str]:
        return {c.config_id for c in [*self.in_flight_configs(), *self.held, *self.gathering]}

    def _gather(self, first: Configuration) -> list[Configuration]:
        """``first`` and, where packs span configurations (``resources.pack``, no scheduler),
        more configurations that share its pack (queued, held, or asked of the search) while
        their runs fit in ``pack_limit`` members. A proposal of another kind waits in ``held``."""
        sig = _signature(first) if self.cross_pack else None
        if sig is None:
            return [first]
        group, members = [first], len(first.runs)
        limit = self._pack_limit(first)
        self.gathering = group
        try:
            for pool in (self.queue, self.held):
                for c in list(pool):
                    if members + len(c.runs) > limit:
                        break
                    if c.config_id not in self._busy() and _signature(c) == sig:
                        pool.remove(c)
                        group.append(c)
                        members += len(c.runs)
            # asked of the search: until the first proposal of another kind (model-based samplers),
            # or past such ones up to LOOKAHEAD_PACKS packs' worth (outcome-free ones); they are held
            ask = LOOKAHEAD_PACKS * max(1, limit // max(1, len(first.runs))) if self.lookahead else 1
            while (first.role == "search" and self.remaining > 0 and not self.exhausted
                   and members + len(first.runs) <= limit and ask > 0):
                found = self._next_search_config()
                if found is None:
                    break
                self.remaining -= 1
                if _signature(found) != sig or members + len(found.runs) > limit:
                    self.held.append(found)
                    if not self.lookahead or _signature(found) == sig:  # a model-based sampler; or the pack is full
                        break
                    ask -= 1
                    continue
                group.append(found)
                members += len(found.runs)
        finally:
            self.gathering = []
        return group

    def _pack_limit(self, cfg: Configuration) -> int:
        """Most members of a pack that starts with ``cfg``: ``resources.pack``, or automatic
        (:func:`study.trial.auto_pack_size`: fewer where the largest node's memory calls for it)."""
        if self.pack_setting != 0 or not cfg.runs:
            return self.pack_limit
        from stllr_engine.experiment import ExperimentConfig

        return auto_pack_size(ExperimentConfig.from_dict(cfg.runs[0].config), self.node_bytes)

    def _propose(self, trial_id: str, group: list[Configuration]) -> dict[str, Any]:
        cfg = group[0]
        self.in_flight[trial_id] = cfg
        self.members[trial_id] = group
        self.member_oids[trial_id] = {}
        for c in group:
            study = self._study(c.optuna_study)
            trial = study._storage.get_trial(study._storage.get_trial_id_from_study_id_trial_number(
                study._study_id, c.optuna_number))
            self.member_oids[trial_id][c.config_id] = trial._trial_id
            for key, value in (("config_id", c.config_id), ("arch_id", c.arch_id), ("rule", c.rule),
                               ("role", c.role), ("run_ids", [f"{c.config_id}-s{s}" for s in c.seeds])):
                study._storage.set_trial_user_attr(trial._trial_id, key, value)
            log.info("%s %s -> tune %s: %s (%d runs to do)", c.role, c.config_id, trial_id, c.params, len(c.runs))
        self.optuna_ids[trial_id] = self.member_oids[trial_id][cfg.config_id]
        out = cfg.to_trial()
        if len(group) > 1:
            out["pack_members"] = [c.to_trial() for c in group[1:]]
        return out

    def _next_search_config(self) -> Configuration | None:
        import optuna

        ledger, planner, spec = self.live.ledger, self.live.planner, self.live.spec
        study = self._study("search")
        rejected = infeasible = 0
        while True:
            trial = study.ask()
            params = spec.suggest(trial)
            cid = config_id_of("search", "stllr", params)
            values = spec.constraint_values(params, "stllr") if spec.constraints else []
            for c, v in zip(spec.constraints, values):  # constrained samplers read these (Optuna >= 5)
                if hasattr(trial, "set_constraint"):
                    trial.set_constraint(str(c), v)
            trial.set_user_attr("constraints", values or [0.0])
            violations = spec.violations(params, "stllr") + self._memory_violation(params)
            if violations:
                self._tell_infeasible(study, trial, params, violations)
                infeasible += 1
                rejected += 1
            elif planner.ended(cid, ledger.rows):  # a resumed study: trained already, told from its rows
                outcome = planner.outcome(planner.rows_of(cid, ledger.rows), self.objectives)
                study.tell(trial, list(outcome.values) if outcome.values else None,
                           state=getattr(optuna.trial.TrialState, outcome.state))
                rejected += 1
            elif cid in self._busy():
                trial.set_user_attr("duplicate", True)  # proposed again while it runs: one copy runs
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                rejected += 1
            else:
                return planner.configuration("search", params, ledger.rows, "search", trial.number)
            if infeasible >= MAX_REJECTED_IN_A_ROW:
                raise StllrError(f"the constraints (or the nodes' memory) rejected {infeasible} proposals in a row: "
                                 "loosen the constraints or narrow the search space to configurations that fit")
            if rejected >= MAX_REJECTED_IN_A_ROW:
                self.exhausted = True
                log.warning("the sampler proposes only configurations already trained: the space is exhausted")
                return None

    def _memory_violation(self, params: dict[str, Any], rule: str = "stllr") -> list[str]:
        """A run that needs more memory than the largest node has, by the formulas (one line)."""
        if self.node_bytes is None:
            return []
        try:
            self.live.spec.check_fits(params, rule, self.node_bytes)
        except StllrError as exc:
            return [str(exc)]
        return []

    def _tell_infeasible(self, study: Any, trial: Any, params: dict[str, Any], violations: list[str]) -> None:
        priced = self.live.spec.price(params, "stllr")
        values = [float(priced[o]) if o in priced else (0.0 if d == "maximize" else 1e30)
                  for o, d in zip(self.objectives, self.directions)]
        trial.set_user_attr("violations", violations)
        study.tell(trial, values)
        self.live.ledger.record(self.live.planner.infeasible_rows(params, violations, priced))
        self.infeasible += 1
        log.info("search trial %d: %s infeasible: %s", trial.number, params, "; ".join(violations))

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """Per-epoch validation measure (accuracy, or AEE for flow), mean over the seeds that reached the epoch."""
        oid = self.optuna_ids.get(trial_id)
        col = self.live.spec.measure_columns[0]
        val = result.get(f"{col}_run", result.get(col))
        epoch, seed = result.get("epoch"), result.get("seed")
        if oid is None or not isinstance(val, (int, float)) or epoch is None or seed is None or val != val:
            return
        by_epoch = self.epoch_values.setdefault(trial_id, {}).setdefault(int(epoch), {})
        by_epoch[int(seed)] = float(val)
        try:  # a curve for the dashboard: never worth stopping the sweep for
            self.live.ledger.storage.set_trial_intermediate_value(oid, int(epoch),
                                                                  sum(by_epoch.values()) / len(by_epoch))
        except Exception as exc:  # e.g. the trial was closed meanwhile
            log.warning("intermediate value of tune %s not stored: %s", trial_id, exc)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        import optuna

        import json

        self.completions += 1
        cfg = self.in_flight.pop(trial_id, None)
        group = self.members.pop(trial_id, [cfg] if cfg is not None else [])
        oids = self.member_oids.pop(trial_id, {})
        self.optuna_ids.pop(trial_id, None)
        self.epoch_values.pop(trial_id, None)
        if cfg is not None:
            self.finished[trial_id] = cfg
            self.finished_members[trial_id] = group
        if cfg is None or self.stopping:
            return  # interrupted: the Optuna trials stay RUNNING; --resume closes and re-proposes them
        outcomes = json.loads((result or {}).get("member_outcomes") or "{}")
        storage = self.live.ledger.storage
        for c in group:
            # each member of a pack is told its own outcome (study.trial's member_outcomes)
            own = result if c is cfg else ({**outcomes[c.config_id], "config_done": (result or {}).get("config_done")}
                                           if c.config_id in outcomes else None)
            state, values = self._outcome(own, error, c.objectives)
            oid = oids.get(c.config_id)
            test_col = self.live.spec.measure_columns[1]
            if oid is not None and own and isinstance(own.get(f"{test_col}_mean"), (int, float)):
                storage.set_trial_user_attr(oid, test_col, float(own[f"{test_col}_mean"]))
            log.info("tune %s (%s %s) ended: %s %s", trial_id, c.role, c.config_id, state, values)
            study = self._study(c.optuna_study)
            study.tell(c.optuna_number, values, state=getattr(optuna.trial.TrialState, state))

    @staticmethod
    def _outcome(result: dict[str, Any] | None, error: bool, objectives: tuple[str, ...]) -> tuple[str, Any]:
        if error or not result:
            return "FAIL", None
        if not result.get("config_done"):
            return "PRUNED", None  # stopped early by a scheduler: never on the frontier
        if result.get("config_status") != "complete":
            return "FAIL", None
        values = [result.get(o) for o in objectives]
        if any(not isinstance(v, (int, float)) or v != v for v in values):
            return "FAIL", None
        return "COMPLETE", values if len(values) > 1 else values[0]


    # -- equal tuning ------------------------------------------------------------------------
    def queue_tuning(self, still_searching: set[str] | frozenset[str] = frozenset()) -> None:
        """Queue the equal tuning of every architecture the search trained (module docstring)
        but those in ``still_searching`` (their search configurations are training or waiting)
        and those queued before: the configurations whose runs have not all ended (a resume
        trains only those). With nothing still searching, every architecture's is queued."""
        self.tuning_queued = not still_searching
        spec, planner, rows = self.live.spec, self.live.planner, self.live.ledger.rows
        busy = self._busy() | {c.config_id for c in self.queue}
        for aid, (chosen_id, chosen, score) in sorted(planner.chosen(rows).items()):
            if aid in still_searching or aid in self.tuned_archs:
                continue
            self.tuned_archs.add(aid)
            arch = planner.arch_params(chosen)
            settings = spec.tuning_settings(aid)
            log.info("tuning %s: S-TLLR at %s (val %.4f) and BPTT, %d settings of %s", aid, chosen_id, score,
                     len(settings), ", ".join(spec.baseline_search) or "nothing")
            for values in settings:
                for loss in spec.stllr_losses:  # per_step, S-TLLR's own, keeps the name (and ids) it always had
                    own = loss == "per_step"
                    self._queue_tuned("tuned", f"tuned {aid}" if own else f"tuned {aid} {loss}",
                                      {**chosen, **values} if own else {**chosen, **values, "loss": loss}, busy,
                                      chosen_id)
                for loss in spec.baseline_losses:
                    params = {**arch, **values, "loss": loss}
                    if loss == "per_step" and "learn_steps" in chosen:
                        params["learn_steps"] = chosen["learn_steps"]  # S-TLLR's window, its objective
                    self._queue_tuned("baseline", f"baseline {aid} {loss}", params, busy, chosen_id)

    def _queue_tuned(self, role: str, study_name: str, params: dict[str, Any], busy: set[str], chosen_id: str) -> None:
        import optuna

        planner, rows = self.live.planner, self.live.ledger.rows
        rule = ROLE_RULE[role]
        cid = config_id_of(role, rule, params)
        if planner.ended(cid, rows) or cid in busy or any(r.get("status") == "infeasible"
                                                          for r in planner.rows_of(cid, rows)):
            return
        busy.add(cid)
        study = self._study(study_name)
        study.set_user_attr("chosen", chosen_id)
        shared = {k: v for k, v in params.items() if k in self.live.spec.baseline_search}
        study.enqueue_trial(shared)
        trial = study.ask()
        self.live.spec.suggest_baseline(trial)  # the enqueued values, recorded in the trial
        too_big = self._memory_violation(params, rule)
        if too_big:  # BPTT keeps T·N values per sample: it may not fit where S-TLLR does
            trial.set_user_attr("violations", too_big)
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            self.live.ledger.record(planner.infeasible_rows(params, too_big, self.live.spec.price(params, rule),
                                                            role=role))
            return
        self.queue.append(planner.configuration(role, params, rows, study_name, trial.number))

    def resume_searches(self) -> None:
        """After a resume: search configurations with runs but not every seed ended are proposed
        again first (their missing seeds only), whatever Optuna recorded for them."""
        import json

        import optuna

        planner, rows = self.live.planner, self.live.ledger.rows
        study = self._study("search")
        waiting = [t.system_attrs.get("fixed_params") for t in
                   study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))]
        for r in sorted(rows.values(), key=lambda r: str(r.get("trial_id"))):
            if r.get("role") != "search" or r.get("status") == "infeasible" or planner.ended(r["config_id"], rows):
                continue
            params = json.loads(r.get("params_json") or "{}")
            if params and params not in waiting:
                study.enqueue_trial(params, user_attrs={"unfinished": r["config_id"]})
                waiting.append(params)

    # The journal and the results table are the ledger, not Tune's experiment state.
    def save(self, checkpoint_path: str) -> None:
        return None

    def restore(self, checkpoint_path: str) -> None:
        return None

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        return None

    def restore_from_dir(self, checkpoint_dir: str) -> None:
        return None
