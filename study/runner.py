"""``stllr sweep``: a study on Ray Tune + Optuna, in one folder, resumable.

Read top to bottom: load and validate the study; join Ray and check that some node can run
a trial (before anything is written, so a refused sweep leaves no folder behind); open the
folder's :class:`~study.ledger.Ledger` (new, or ``--resume``: the one resume rule); plan the
remaining budget; run a fresh Tuner whose searcher asks Optuna; on SIGINT/SIGTERM stop
proposing, stop the trials (their checkpoints stay), record their runs as ``interrupted``
and raise :class:`SweepInterrupted`. The folder's layout is in :mod:`study.ledger`.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator

from stllr_engine.errors import StllrError
from study.ledger import Ledger, check_free_space, check_out_folder, disk_error, say

__all__ = ["sweep", "SweepInterrupted", "StopFlag"]

log = logging.getLogger(__name__)


class SweepInterrupted(KeyboardInterrupt):
    """The sweep was stopped by SIGINT/SIGTERM; ``str()`` is the line to show."""


@dataclass
class StopFlag:
    """Set by SIGINT/SIGTERM; Tune's stopper and the searcher read it."""

    signal: str | None = None
    handlers: dict[int, Any] = field(default_factory=dict)
    searcher: Any = None
    arm: Any = None  # installs the handlers again (ray.init puts its own C++ SIGTERM handler in their place)
    local_ray: bool = False  # the sweep started its own local Ray (a lost node is then a fault, not a wait)

    @property
    def requested(self) -> bool:
        return self.signal is not None


LOW_DISK = "a nearly full disk"
NO_NODES = "a Ray cluster without live nodes"
#: Seconds the cluster may show no CPU and no GPU at all before the sweep stops (a dead raylet:
#: killed, out of memory, or ``ray stop --force`` run elsewhere on the machine).
NO_NODES_AFTER_S = 30.0


class _LocalRayWatch:
    """Watches the processes of the local Ray a sweep started (GCS and raylet). When one dies
    (killed, out of memory, ``ray stop --force`` run elsewhere), Ray's driver calls block for
    good, so the sweep cannot stop through Tune: the watch records the runs in flight as
    ``interrupted`` (their checkpoints stay), prints one line and ends the process (exit 2, as
    every one-line error).
    ``--resume`` continues the study."""

    def __init__(self, flag: StopFlag):
        import threading

        import ray

        node = getattr(ray._private.worker, "_global_node", None)
        procs = getattr(node, "all_processes", {}) or {}
        self.processes = [p.process for key in ("gcs_server", "raylet") for p in procs.get(key, [])]
        self.flag = flag
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="stllr-ray-watch", daemon=True)

    def __enter__(self) -> "_LocalRayWatch":
        if self.processes:
            self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.done.set()

    def _loop(self) -> None:
        while not self.done.wait(2.0):
            dead = [p for p in self.processes if p.poll() is not None]
            if dead:
                self._lost(dead)
                return

    def _lost(self, dead: list[Any]) -> None:
        from study.callbacks import close_runs

        # a Ctrl-C / SIGTERM to the whole process group stops Ray's processes too: that stays an interrupt
        interrupt = self.flag.signal if self.flag.requested else None
        if interrupt is None:
            self.flag.signal = NO_NODES
        if self.done.wait(15.0):  # the sweep ended by itself meanwhile
            return
        searcher = self.flag.searcher
        cause = interrupt or NO_NODES
        folder = None
        try:
            ledger = searcher.live.ledger
            folder = ledger.folder
            for cfg in list(searcher.in_flight_configs()):
                close_runs(ledger, cfg, "interrupted", f"interrupted by {cause}; resume with stllr sweep --resume")
        except Exception as exc:  # never worse than the fault itself (e.g. stopped before the ledger opened)
            log.warning("runs in flight not recorded: %s", exc)
        resume = (f"resume with stllr sweep --resume {folder}" if folder is not None
                  else "nothing was stored, or resume the study folder with stllr sweep --resume")
        if interrupt is not None:
            line, code, prefix = f"interrupted by {interrupt}: {resume}", 130, "stllr: "
        else:
            names = "/".join(str(p.args[0]).rsplit("/", 1)[-1] for p in dead)
            line = (f"stopped by {NO_NODES}: the local Ray's {names} died (killed, out of memory, or 'ray stop' "
                    f"run elsewhere): what was recorded is intact; {resume}")
            code, prefix = 2, "stllr: error: "
        log.error(line)
        sys.stdout.flush()
        print(f"{prefix}{line}", file=sys.stderr, flush=True)
        os._exit(code)


def _cluster_has_nodes() -> bool:
    """Whether the cluster has any CPU or GPU left; a failed query counts as none."""
    import ray

    try:
        total = ray.cluster_resources()
    except Exception:  # the GCS itself is gone
        return False
    return total.get("CPU", 0) > 0 or total.get("GPU", 0) > 0


def _stopper(flag: StopFlag, searcher: Any, folder: str) -> Any:
    """Stops every trial once a signal came, or when the study's disk runs low (checked every 2 s)."""
    import time

    from ray.tune import Stopper

    from study.ledger import free_bytes, min_free_bytes

    need = min_free_bytes()
    last = [0.0]
    alive = [time.monotonic()]  # when the cluster last had a CPU or a GPU

    class _Stop(Stopper):
        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            return False

        def stop_all(self) -> bool:
            if not flag.requested and time.monotonic() - last[0] > 2:
                last[0] = time.monotonic()
                free = free_bytes(folder)
                if free < need:
                    flag.signal = LOW_DISK
                    say(f"{folder}: its disk has {free / 2**20:.0f} MB free (below {need / 2**20:.0f} MB): stopping "
                        "the running trials before a write fails")
                elif not flag.local_ray or _cluster_has_nodes():  # a cluster's nodes may come later
                    alive[0] = time.monotonic()
                elif time.monotonic() - alive[0] > NO_NODES_AFTER_S:
                    flag.signal = NO_NODES
                    say(f"the Ray cluster has had no live node for {NO_NODES_AFTER_S:.0f} s (a raylet died: killed, "
                        "out of memory, or 'ray stop' run elsewhere): stopping")
            if flag.requested:
                searcher.stopping = True
            return flag.requested

    return _Stop()


@contextlib.contextmanager
def _signals(flag: StopFlag) -> Iterator[StopFlag]:
    """SIGINT/SIGTERM set the flag (a second one quits at once)."""
    import time

    first = [0.0]

    def handler(signum: int, frame: Any) -> None:
        if flag.requested:
            # a second Ctrl-C quits at once; one within a second of the first is the same keypress
            # reaching us twice (through Ray's processes in our group), not a second request
            if time.monotonic() - first[0] > 1.0:
                raise KeyboardInterrupt
            return
        first[0] = time.monotonic()
        flag.signal = signal.Signals(signum).name
        if flag.searcher is not None:
            flag.searcher.stopping = True  # before any worker's error (a terminal's Ctrl-C reaches them too)
        say(f"{flag.signal}: stopping the running trials (their checkpoints stay); press Ctrl-C again to quit at once")

    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # Tune's own handler would end the sweep as if it were done
    for which in (signal.SIGINT, signal.SIGTERM):
        flag.handlers[which] = signal.signal(which, handler)
    flag.arm = lambda: [signal.signal(w, handler) for w in (signal.SIGINT, signal.SIGTERM)]
    try:
        yield flag
    finally:
        for number, old in flag.handlers.items():
            signal.signal(number, old)


# -- Ray ---------------------------------------------------------------------------------------


#: Modules a local Ray's workers import when they start (Ray's ``preload_python_modules``).
WORKER_PRELOAD = ",".join(["torch", "sklearn.datasets", "sklearn.model_selection", "stllr_engine.pack_fit",
                           "stllr_engine.experiment", "study.trial"])


def _shutdown_ray() -> None:
    """``ray.shutdown()`` without its graceful stop of a local Ray's processes: they run with
    SIGTERM blocked (:func:`_connect`), so Ray's SIGTERM and one-second wait per process type
    (five of them: 5 s of every sweep) always ended in its SIGKILL anyway; this sends that at
    once. Ray's private ``_global_node`` is used only where it exists, else a plain shutdown."""
    import ray

    node = getattr(getattr(ray, "_private", None), "worker", None)
    node = getattr(node, "_global_node", None)
    kill = getattr(node, "kill_all_processes", None)
    if callable(kill):
        def kill_at_once(check_alive: bool = True, allow_graceful: bool = False, wait: bool = False) -> None:
            kill(check_alive=check_alive, allow_graceful=False, wait=wait)

        node.kill_all_processes = kill_at_once  # type: ignore[union-attr]
    ray.shutdown()


def _connect(address: str | None) -> bool:
    """Start a local Ray (or join ``address``); returns whether this call started it."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if not address:
        # the local Ray's workers import what a trial runs as they start, while the driver
        # measures floors, not in the first trial's time (a worker that fails one just goes on)
        os.environ.setdefault("RAY_preload_python_modules", WORKER_PRELOAD)
    kwargs: dict[str, Any] = dict(log_to_driver=False, logging_level=logging.ERROR, include_dashboard=False,
                                  configure_logging=True)
    if not address:
        # Ray's own processes (GCS, raylet, workers) are started in this process group: a scheduler's
        # SIGTERM to the whole group (scancel, systemd) must reach this driver only, which then stops the
        # trials itself. They inherit a blocked SIGTERM (as Ray already blocks SIGINT for them);
        # ray.shutdown() ends them with SIGKILL after its grace period.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            ray.init(**kwargs)
        except Exception as exc:  # a node that timed out starting (an overloaded machine), no /tmp space, ...
            raise StllrError(f"cannot start a local Ray ({str(exc).splitlines()[0][:200]}): check free memory and "
                             "space in /tmp (or RAY_TMPDIR), then run the same command again") from None
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        return True
    if address != "auto":
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5):
                pass
        except (OSError, ValueError):
            raise StllrError(f"--address {address}: no Ray cluster answers there: start one with "
                             "'ray start --head' or give the head's address as HOST:PORT") from None
    try:  # like `ray start`: a cluster joined with a token on this machine uses token auth
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

        maybe_enable_token_auth_if_token_available()
    except (ImportError, AttributeError):
        pass
    try:
        ray.init(address=address, **kwargs)
    except Exception as exc:  # ConnectionError, an authentication error, ...
        raise StllrError(f"--address {address}: cannot join the Ray cluster ({str(exc).splitlines()[0]})") from None
    return True


def _need(spec: Any) -> dict[str, float]:
    return {"CPU": float(spec.resources.get("cpu", 1)), "GPU": float(spec.resources.get("gpu", 0))}


def _largest_node_bytes(spec: Any) -> int | None:
    """Memory of the largest node that can run a trial (``None`` if Ray does not say)."""
    import ray

    need = _need(spec)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    fits = [n for n in nodes if all(n["Resources"].get(k, 0.0) >= v for k, v in need.items() if v > 0)]
    if not fits:
        have = ", ".join(f"{n['NodeManagerAddress']}: {n['Resources'].get('CPU', 0):g} CPU, "
                         f"{n['Resources'].get('GPU', 0):g} GPU" for n in nodes)
        raise StllrError(f"each trial needs {need['CPU']:g} CPU and {need['GPU']:g} GPU but no node of the cluster "
                         f"has that ({have}): lower resources in the study file or add a node that has them")
    sizes = [int(n["Resources"].get("memory", 0)) for n in fits]
    return max(sizes) or None


# -- the sweep ---------------------------------------------------------------------------------


def _load(space: str, out: str | None, resume: bool, overrides: dict[str, Any] | None) -> tuple[Any, str]:
    from spaces import load_study

    if resume:
        folder = space if os.path.isdir(space) else (out or space)
        frozen = os.path.join(folder, "study.yaml")
        if not os.path.isfile(frozen):
            raise StllrError(f"--resume {folder}: not a study folder (no study.yaml there): give the folder a "
                             "sweep wrote (stllr sweep SPACE --out DIR)")
        return load_study(frozen, overrides), folder
    spec = load_study(space, overrides)
    if out is not None:
        check_out_folder(out)
    folder = out or os.path.join("runs", f"{spec.name}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    if os.path.exists(os.path.join(folder, "study.yaml")):
        raise StllrError(f"{folder} already holds a study: resume it with 'stllr sweep --resume {folder}' "
                         "or choose another --out")
    return spec, folder


@contextlib.contextmanager
def _log_to(folder: str) -> Iterator[None]:
    handler = logging.FileHandler(os.path.join(folder, "sweep.log"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    study_log = logging.getLogger("study")
    study_log.addHandler(handler)
    study_log.setLevel(logging.INFO)
    try:
        yield
    finally:
        study_log.removeHandler(handler)
        handler.close()


def sweep(space: str, out: str | None = None, trials: int | None = None, address: str | None = None,
          resume: bool = False, overrides: dict[str, Any] | None = None, quiet: bool = False,
          report: bool = True, report_when_interrupted: bool = False) -> str:
    """Run (or resume) a study; returns its folder.

    Raises:
        StllrError: a user mistake, one line (nothing stored is lost).
        SweepInterrupted: SIGINT/SIGTERM stopped it; ``--resume`` continues.
    """
    if trials is not None and trials < 1:
        raise StllrError(f"--trials {trials}: give at least 1 configuration")
    spec, folder = _load(space, out, resume, overrides)
    if resume and trials is None and "budget.trials" in (overrides or {}):
        trials = int(spec.trials)  # --set budget.trials=N on a resume means --trials N
    import ray

    ours = not ray.is_initialized()
    interrupted: str | None = None
    flag = StopFlag()
    with _signals(flag):  # from here a Ctrl-C sets the flag: never a KeyboardInterrupt inside ray.init
        try:
            _connect(address)
            flag.local_ray = ours and address is None
            flag.arm()
            node_bytes = _largest_node_bytes(spec)  # before any file is written: a refusal leaves nothing behind
            check_free_space(folder)
            if flag.requested:
                raise SweepInterrupted(f"interrupted by {flag.signal} before the sweep started: nothing was stored")
            ledger = (Ledger.open(folder, spec, trials) if resume
                      else Ledger.create(folder, spec, trials if trials is not None else int(spec.trials)))
            watch = _LocalRayWatch(flag) if flag.local_ray else contextlib.nullcontext()
            with ledger, _log_to(ledger.folder), watch:
                for line in ledger.notes:
                    log.warning(line)
                try:
                    interrupted = _run(spec, ledger, node_bytes, quiet, flag)
                except OSError as exc:  # the journal's or Tune's own write on a full disk
                    raise disk_error(ledger.folder, exc) from None
        finally:
            if ours and ray.is_initialized():
                _shutdown_ray()
    folder = os.path.abspath(folder)
    if interrupted is not None and interrupted.startswith((f"stopped by {LOW_DISK}", f"stopped by {NO_NODES}")):
        raise StllrError(interrupted)  # no report: a fault, not a user's interrupt
    if report and (interrupted is None or report_when_interrupted):
        from reports import build_report

        path = build_report([folder])
        if not quiet:
            print(f"report: {path}")
    if interrupted is not None:
        raise SweepInterrupted(interrupted)
    if not quiet:
        print(f"results: {os.path.join(folder, 'results.parquet')}")
    return folder


def _measure_floors(spec: Any, folder: str, quiet: bool) -> None:
    """Chance and a linear read-out of the input frames on the split of the study's first
    seed (DESIGN §8, floors), once per study folder: ``floors.json``, which reports draw.
    A failure costs the floors, never the sweep (the report then says they were not measured)."""
    from stllr_engine.floors import measure_floors, read_floors, write_floors

    if read_floors(folder) is not None or spec.measure != "accuracy":
        return  # a flow study's floor, the AEE of predicting no motion, is in every row (test_zero_aee)
    try:
        params, _ = spec.params_for_run({}, seed=0)  # any configuration: the floors use its data only
        floors = measure_floors(spec.experiment(params, "stllr", int(spec.seeds[0])))
        write_floors(folder, floors)
    except Exception as exc:  # noqa: BLE001 - the floors are an extra: any failure costs them only
        log.warning("floors not measured: %s: %s", type(exc).__name__, exc)
        return
    if not quiet:
        lr = floors["linear_readout"]
        print(f"floors on {spec.dataset}: chance {floors['chance']:.3f}, linear read-out of the input frames "
              f"{lr['test_accuracy']:.3f} test ({floors['time_s']:.1f} s)", flush=True)


def _run(spec: Any, ledger: Ledger, node_bytes: int | None, quiet: bool, flag: StopFlag) -> str | None:
    """The Tuner over the remaining budget; returns the interrupt line, or ``None`` when done."""
    import optuna
    from ray import tune
    from ray.tune import FailureConfig, RunConfig, TuneConfig

    from study.callbacks import Progress, ResultsWriter, close_runs
    from study.plan import Planner
    from study.searcher import StudySearcher
    from study.trial import run_configuration

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"  # baselines report other metrics than searches
    threads = max(1, int(round(float(spec.resources.get("cpu", 1)))))
    planner = Planner(spec, ledger.folder, threads)
    trained = len(planner.trained(ledger.rows))
    if ledger.budget_given:
        if ledger.budget < trained:
            raise StllrError(f"--trials {ledger.budget}: {trained} configurations are trained already; give at least "
                             f"{trained} (the budget counts them)")
        ledger.set_budget(ledger.budget)
    remaining = max(0, ledger.budget - trained)
    _measure_floors(spec, ledger.folder, quiet)
    searcher = StudySearcher(spec, ledger, planner, remaining, node_bytes)
    flag.searcher = searcher
    searcher.resume_searches()
    log.info("ledger: budget %d, %d configurations to train", ledger.budget, remaining)
    if not quiet:
        print(f"study {spec.name}: {remaining} S-TLLR configurations to train × {len(spec.seeds)} seeds "
              f"(+ equal tuning of S-TLLR and BPTT per architecture) in {ledger.folder}", flush=True)
    scheduler = None
    if spec.scheduler and len(spec.objectives) == 1:
        from ray.tune.schedulers import ASHAScheduler

        o = spec.objectives[0]
        scheduler = ASHAScheduler(metric=o.metric, mode="max" if o.direction == "maximize" else "min",
                                  time_attr="iteration", max_t=spec.epochs * len(spec.seeds),
                                  grace_period=int(spec.scheduler.get("grace_period", 1)),
                                  reduction_factor=float(spec.scheduler.get("reduction_factor", 2)))
    need = _need(spec)
    trainable = tune.with_resources(run_configuration, {"cpu": need["CPU"], "gpu": need["GPU"]})
    session = len(os.listdir(ledger.path("ray"))) if os.path.isdir(ledger.path("ray")) else 0
    tuner = tune.Tuner(
        trainable,
        tune_config=TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=-1,
                               max_concurrent_trials=spec.concurrency, reuse_actors=True,
                               trial_dirname_creator=_trial_name, trial_name_creator=_trial_name),
        run_config=RunConfig(name=f"session{session}", storage_path=ledger.path("ray"), verbose=0,
                             stop=_stopper(flag, searcher, ledger.folder),
                             callbacks=[ResultsWriter(ledger, searcher),
                                        Progress(ledger, searcher, planner, ledger.budget, need, every_s=5.0)]
                             if not quiet else [ResultsWriter(ledger, searcher)],
                             failure_config=FailureConfig(max_failures=2), log_to_file=True),
    )
    if not flag.requested:
        try:
            tuner.fit()
        except Exception as exc:  # Tune wraps what a callback raised (the ledger on a full disk) in a TuneError
            cause = _own_error(exc)
            if cause is None:
                raise
            raise cause from None
    if searcher.exhausted:
        ledger.mark_exhausted()
    if not flag.requested:
        return None
    try:
        for cfg in list(searcher.in_flight_configs()):
            close_runs(ledger, cfg, "interrupted", f"interrupted by {flag.signal}; resume with stllr sweep --resume")
    except StllrError as exc:  # the disk is full: the rows stay as they were (running: a resume interrupts them)
        log.warning("interrupted runs not recorded: %s", exc)
    done = len(planner.trained(ledger.rows))
    line = (f"interrupted: {done} of {ledger.budget} configurations done; resume with stllr sweep --resume "
            f"{ledger.folder}")
    if flag.signal == NO_NODES:
        line = (f"stopped by {NO_NODES}: {done} of {ledger.budget} configurations done, what was recorded is "
                f"intact; check the node (memory, ray status), then resume with stllr sweep --resume {ledger.folder}")
    if flag.signal == LOW_DISK:
        line = (f"stopped by {LOW_DISK}: {done} of {ledger.budget} configurations done, what was recorded is "
                f"intact; free space (or lower STLLR_MIN_FREE_MB), then resume with stllr sweep --resume "
                f"{ledger.folder}")
    log.warning(line)
    return line


def _own_error(exc: BaseException) -> BaseException | None:
    """The :class:`StllrError` (or the OSError of a write) behind an exception Tune raised, if any:
    a callback's one-line error (e.g. the results table on a full disk) reaches the user as that
    line, not as Tune's traceback.

    >>> try:
    ...     try:
    ...         raise StllrError("folder: cannot write the results (no space)")
    ...     except Exception:
    ...         raise RuntimeError("Traceback ...")
    ... except RuntimeError as wrapped:
    ...     str(_own_error(wrapped))
    'folder: cannot write the results (no space)'
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (StllrError, OSError)):
            return e
        e = e.__cause__ or e.__context__
    return None


def _trial_name(trial: Any) -> str:
    return f"t{trial.trial_id}"
