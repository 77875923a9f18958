"""``stllr sweep``: a study on Ray Tune + Optuna, in one folder, resumable.

Everything of a study lives in its folder::

    DIR/study.yaml        the frozen study file (what ran; --resume reads it)
    DIR/optuna.journal    the Optuna storage (``optuna-dashboard DIR/optuna.journal``)
    DIR/results.parquet   one row per run (configuration × seed), updated as runs end
    DIR/runs/<trial_id>/  each run's checkpoint (every epoch) and curves
    DIR/ray/              Ray Tune's trial folders and logs
    DIR/sweep.log         the driver's log

The journal and the results table are the ledger (DESIGN §6): on ``--resume`` — after
Ctrl-C or ``kill -9`` of the driver — Optuna trials left RUNNING are closed as FAIL and
their parameters enqueued again, completed runs are kept (a configuration re-proposed
runs only its missing seeds, each from its last checkpoint), and a fresh Tuner runs the
remaining budget only. A folder in use by another sweep is refused (a lock file).
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import socket
import sys
import time
from typing import Any, Iterator

from stllr_engine.errors import StllrError

__all__ = ["sweep", "study_lock", "open_storage", "close_running_trials", "status"]

log = logging.getLogger(__name__)


# -- the folder --------------------------------------------------------------------------


class study_lock:
    """An exclusive lock on a study folder (held by the driver for the whole sweep)."""

    def __init__(self, folder: str):
        self.path = os.path.join(folder, ".sweep.lock")
        self.fh: Any = None

    def __enter__(self) -> "study_lock":
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.seek(0)
            holder = self.fh.read().strip() or "another process"
            self.fh.close()
            raise StllrError(f"study folder {os.path.dirname(self.path)} is in use by a running sweep ({holder}): "
                             "wait for it to end, or stop it, then resume with --resume") from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        self.fh.flush()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fh is not None:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()


def open_storage(folder: str) -> Any:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(os.path.join(folder, "optuna.journal")))


def close_running_trials(storage: Any) -> list[dict[str, Any]]:
    """Close trials a killed driver left RUNNING (as FAIL) and enqueue their parameters again.

    Returns the parameters re-enqueued in the search study.
    """
    import optuna

    requeued: list[dict[str, Any]] = []
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            if summary.study_name == "search" and t.params:
                study.enqueue_trial(dict(t.params), user_attrs={"requeued_from": t.number})
                requeued.append(dict(t.params))
    return requeued


# -- progress ----------------------------------------------------------------------------


def _fmt_s(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _callbacks(store: Any, spec: Any, searcher: Any, total_configs: int, quiet: bool) -> list[Any]:
    from ray.tune import Callback

    from study.results import run_row

    objective = spec.objectives[0]

    class ResultsWriter(Callback):
        """Writes each run's row to results.parquet as the run ends (driver side)."""

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            if result.get("run_row"):
                store.upsert([json.loads(result["run_row"])])

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            result = trial.last_result or {}
            if result.get("run_row"):
                store.upsert([json.loads(result["run_row"])])
            if not result.get("config_done"):
                self._close(trial, "pruned", "stopped early by the scheduler")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._close(trial, "failed", _error_line(trial))

        def _close(self, trial: Any, status: str, reason: str) -> None:
            cfg = trial.config
            rows = []
            for run in cfg.get("runs", []):
                old = store.rows.get(run["trial_id"])
                if old is not None and old.get("status") in ("complete", "failed"):
                    continue
                rows.append(run_row(cfg["study"], run["trial_id"], cfg["config_id"], cfg["arch_id"], cfg["role"],
                                    run["config"], status, reason=reason, params=cfg.get("params")))
            if rows:
                store.upsert(rows)

    class Progress(Callback):
        """A few clean lines: done / running / failed, best so far, ETA."""

        def __init__(self) -> None:
            self.t0 = time.monotonic()
            self.last = 0.0
            # configurations done before this session (a resume): the ETA uses this session's pace
            self.start_done = len({r.get("config_id") for r in store.rows.values()
                                   if r.get("role") == "search" and r.get("status") in ("complete", "failed")})

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            now = time.monotonic()
            if quiet or now - self.last < 15:
                return
            self.last = now
            print(self.line(trials), flush=True)

        def on_experiment_end(self, trials: list, **info: Any) -> None:
            if not quiet:
                print(self.line(trials), flush=True)

        def line(self, trials: list) -> str:
            rows = list(store.rows.values())
            by_cfg: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for r in rows:
                by_cfg.setdefault((str(r.get("role")), str(r.get("config_id"))), []).append(r)
            ended = ("complete", "failed", "pruned")
            n_seeds = len(spec.seeds)

            def done(role: str) -> int:
                return sum(1 for (ro, _), rs in by_cfg.items() if ro == role
                           and sum(r.get("status") in ended for r in rs) >= n_seeds)

            searched, baselines = done("search"), done("baseline")
            running = sum(1 for t in trials if t.status == "RUNNING")
            failed = sum(1 for r in rows if r.get("status") == "failed")
            complete = [r for r in rows if r.get("status") == "complete" and r.get(objective.metric) is not None]
            best = ""
            if complete:
                pick = max if objective.direction == "maximize" else min
                b = pick(complete, key=lambda r: r[objective.metric])
                best = f" · best {objective.metric} {b[objective.metric]:.4g} ({b['rule']})"
            elapsed = time.monotonic() - self.t0
            eta = ""
            if 0 < searched - self.start_done < total_configs - self.start_done:
                rate = elapsed / (searched - self.start_done)
                eta = f" · ETA {_fmt_s(rate * (total_configs - searched))}"
            return (f"[{_fmt_s(elapsed)}] S-TLLR configurations {searched}/{total_configs} · BPTT baselines "
                    f"{baselines} · running {running} · failed runs {failed} · infeasible {searcher.infeasible}"
                    f"{best}{eta}")

    return [ResultsWriter(), Progress()]


def _error_line(trial: Any) -> str:
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


# -- Ray ---------------------------------------------------------------------------------


def _connect(address: str | None, folder: str) -> bool:
    """Start a local Ray (or join ``address``); returns whether this call started it."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    kwargs: dict[str, Any] = dict(log_to_driver=False, logging_level=logging.ERROR, include_dashboard=False,
                                  configure_logging=True)
    if address:
        if address != "auto":
            host, _, port = address.rpartition(":")
            try:
                with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5):
                    pass
            except (OSError, ValueError):
                raise StllrError(f"--address {address}: no Ray cluster answers there: start one with "
                                 "'ray start --head' or give the head's address as HOST:PORT") from None
        try:  # like `ray start`: a cluster joined with a token on this machine uses token auth
            from ray._private.authentication.authentication_token_setup import (
                maybe_enable_token_auth_if_token_available,
            )

            maybe_enable_token_auth_if_token_available()
        except (ImportError, AttributeError):
            pass
        try:
            ray.init(address=address, **kwargs)
        except Exception as exc:  # ConnectionError, an authentication error, ...
            raise StllrError(f"--address {address}: cannot join the Ray cluster ({str(exc).splitlines()[0]})") from None
    else:
        ray.init(**kwargs)
    return True


def _check_resources(spec: Any) -> None:
    import ray

    need = {"CPU": float(spec.resources.get("cpu", 1)), "GPU": float(spec.resources.get("gpu", 0))}
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    fits = [n for n in nodes if all(n["Resources"].get(k, 0.0) >= v for k, v in need.items() if v > 0)]
    if not fits:
        have = ", ".join(f"{n['NodeManagerAddress']}: {n['Resources'].get('CPU', 0):g} CPU, "
                         f"{n['Resources'].get('GPU', 0):g} GPU" for n in nodes)
        raise StllrError(f"each trial needs {need['CPU']:g} CPU and {need['GPU']:g} GPU but no node of the cluster "
                         f"has that ({have}): lower resources in the study file or add a node that has them")


# -- the sweep ---------------------------------------------------------------------------


def _default_folder(name: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{name}-{stamp}")


def sweep(space: str, out: str | None = None, trials: int | None = None, address: str | None = None,
          resume: bool = False, overrides: dict[str, Any] | None = None, quiet: bool = False,
          report: bool = True) -> str:
    """Run (or resume) a study; returns its folder. See the module docstring."""
    from spaces import load_study

    if resume:
        folder = space if os.path.isdir(space) else (out or "")
        frozen = os.path.join(folder, "study.yaml")
        if not os.path.exists(frozen):
            raise StllrError(f"--resume {space}: not a study folder (no study.yaml there): give the folder a "
                             "sweep wrote (stllr sweep SPACE --out DIR)")
        spec = load_study(frozen, overrides)
    else:
        spec = load_study(space, overrides)
        folder = out or _default_folder(spec.name)
        if os.path.exists(os.path.join(folder, "study.yaml")):
            raise StllrError(f"{folder} already holds a study: resume it with 'stllr sweep --resume {folder}' "
                             "or choose another --out")
    if trials is not None and trials < 1:
        raise StllrError(f"--trials {trials}: give at least 1 configuration")
    os.makedirs(folder, exist_ok=True)
    folder = os.path.abspath(folder)
    with study_lock(folder):
        handler = logging.FileHandler(os.path.join(folder, "sweep.log"))
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        study_log = logging.getLogger("study")
        study_log.addHandler(handler)
        study_log.setLevel(logging.INFO)
        try:
            budget_file = os.path.join(folder, "budget.json")
            if resume:
                with open(budget_file) as fh:
                    budget = int(json.load(fh)["trials"]) if trials is None else trials
            else:
                budget = trials if trials is not None else int(spec.trials)
                with open(os.path.join(folder, "study.yaml"), "w") as fh:
                    fh.write(spec.to_yaml())
            with open(budget_file, "w") as fh:
                json.dump({"trials": budget}, fh)
            study_log.info("sweep %s: budget %d configurations (resume=%s)", folder, budget, resume)
            _run(spec, folder, budget, address, resume, quiet)
        finally:
            study_log.removeHandler(handler)
            handler.close()
    if report:
        path = _build_report(folder, quiet)
        if path and not quiet:
            print(f"report: {path}")
    if not quiet:
        print(f"results: {os.path.join(folder, 'results.parquet')}")
    return folder


def _build_report(folder: str, quiet: bool) -> str | None:
    try:
        from reports import build_report  # type: ignore[attr-defined]
    except ImportError:
        return None
    return str(build_report([folder]))


def _run(spec: Any, folder: str, budget: int, address: str | None, resume: bool, quiet: bool) -> None:
    import optuna
    from ray import tune
    from ray.tune import FailureConfig, RunConfig, TuneConfig

    from study.results import ResultsStore
    from study.searcher import StudySearcher
    from study.trial import run_configuration

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # baseline trials report their own objective (val_accuracy), and intermediate reports
    # carry no aggregate: the searcher reads what it needs
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    store = ResultsStore(folder)
    storage = open_storage(folder)
    requeued: list[dict[str, Any]] = []
    if resume:
        requeued = close_running_trials(storage)
        # runs that were running when the driver died start again (from their checkpoints)
        stale = [dict(r, status="failed", reason="interrupted (driver stopped)") for r in store.by_status("running")]
        if stale:
            store.upsert(stale)
    searched = _searched_configs(store, list(spec.seeds))
    remaining = max(0, budget - len(searched))
    log.info("ledger read: %d configurations trained, %d to go", len(searched), remaining)
    started_ray = _connect(address, folder)
    log.info("ray ready")
    try:
        _check_resources(spec)
        threads = max(1, int(round(float(spec.resources.get("cpu", 1)))))
        searcher = StudySearcher(spec, folder, storage, store, remaining, threads)
        if resume:
            searcher.requeue_baselines([p for p in searched.values()])
        if not quiet:
            print(f"study {spec.name}: {remaining} S-TLLR configurations to train × {len(spec.seeds)} seeds "
                  f"(+ BPTT baselines) in {folder}", flush=True)
        scheduler = None
        if spec.scheduler and len(spec.objectives) == 1:
            from ray.tune.schedulers import ASHAScheduler

            o = spec.objectives[0]
            scheduler = ASHAScheduler(metric=o.metric, mode="max" if o.direction == "maximize" else "min",
                                      time_attr="iteration", max_t=spec.epochs * len(spec.seeds),
                                      grace_period=int(spec.scheduler.get("grace_period", 1)),
                                      reduction_factor=float(spec.scheduler.get("reduction_factor", 2)))
        n_session = len(os.listdir(os.path.join(folder, "ray"))) if os.path.isdir(os.path.join(folder, "ray")) else 0
        trainable = tune.with_resources(run_configuration, {"cpu": float(spec.resources.get("cpu", 1)),
                                                            "gpu": float(spec.resources.get("gpu", 0))})
        tuner = tune.Tuner(
            trainable,
            tune_config=TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=-1,
                                   max_concurrent_trials=spec.concurrency, reuse_actors=True,
                                   trial_dirname_creator=lambda t: f"t{t.trial_id}",
                                   trial_name_creator=lambda t: f"t{t.trial_id}"),
            run_config=RunConfig(name=f"session{n_session}", storage_path=os.path.join(folder, "ray"), verbose=0,
                                 callbacks=_callbacks(store, spec, searcher, budget, quiet),
                                 failure_config=FailureConfig(max_failures=2), log_to_file=True),
        )
        log.info("tuner starts")
        tuner.fit()
        log.info("tuner done")
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def _searched_configs(store: Any, seeds: list[int]) -> dict[str, dict[str, Any]]:
    """Search configurations already trained — a run ended for every seed — by config_id → params."""
    by_cfg: dict[str, list[dict[str, Any]]] = {}
    for r in store.rows.values():
        if r.get("role") == "search":
            by_cfg.setdefault(r["config_id"], []).append(r)
    out = {}
    for cid, rows in by_cfg.items():
        ended = {int(r["seed"]) for r in rows if r.get("status") in ("complete", "failed", "pruned")}
        if set(seeds) <= ended:
            out[cid] = json.loads(rows[0].get("params_json") or "{}")
    return out


def status(folder: str) -> dict[str, Any]:
    """Counts by status, best so far and the frontier size of a study folder."""
    from study.results import read_results

    if not os.path.exists(os.path.join(folder, "study.yaml")):
        raise StllrError(f"{folder} is not a study folder (no study.yaml): give the folder a sweep wrote")
    df = read_results(folder)
    counts = df["status"].value_counts().to_dict() if len(df) else {}
    return {"folder": folder, "runs": int(len(df)), "counts": {str(k): int(v) for k, v in counts.items()}, "df": df}


def iter_lines(d: dict[str, Any]) -> Iterator[str]:
    yield f"{d['folder']}: {d['runs']} runs"
    for k, v in sorted(d["counts"].items()):
        yield f"  {k}: {v}"
