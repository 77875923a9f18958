"""What one Ray Tune trial runs: one configuration, once per seed of the study.

A trial receives plain data from the searcher (no objects): the runs still to do, each
an :class:`~stllr_engine.experiment.ExperimentConfig` as a dict with its ``trial_id``
(``<config_id>-s<seed>``), and the rows of runs of this configuration that already ended
(after a resume). Every run checkpoints each epoch to ``DIR/runs/<trial_id>/`` and
continues from there when the trial is retried after a crash or the study is resumed.

Each epoch is reported to Tune; when a run ends its results row is written to the run's
``row.json`` (so a result survives a driver killed before it hears of it) and travels in
the report (``run_row``) to the driver's ledger. The last report of a trial carries the
configuration's objective values — means over its seeds — and ``config_status``
(complete or failed). A run that fails with a user-level error (e.g. its loss turned NaN)
is recorded as failed with its reason; the other seeds still run. A checkpoint that
cannot be read (truncated, e.g. by a full disk) is set aside and the run starts again
from scratch, instead of failing the configuration for good.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import time
from typing import Any

__all__ = ["run_configuration", "node_name"]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def node_name() -> str:
    """``host:node-id`` of the Ray node running this code (host alone outside Ray)."""
    host = socket.gethostname()
    try:
        import ray

        if ray.is_initialized():
            return f"{host}:{ray.get_runtime_context().get_node_id()[:8]}"
    except Exception:
        pass
    return host


def _limit_threads(threads: int) -> None:
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    try:  # scikit-learn / numpy's OpenMP and BLAS pools as well: two runtimes must not oversubscribe
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:
        pass


def _load_curves(path: str, start_epoch: int) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    try:
        with open(path) as fh:
            curves = json.load(fh)
    except (OSError, ValueError):
        return []
    return [c for c in curves if int(c.get("epoch", 0)) <= start_epoch]


def _resume_curves(curves_path: str, ckpt_path: str) -> list[dict[str, Any]]:
    """A resumed run's curves up to its checkpoint's epoch.

    ``curves.json`` is written after the epoch's checkpoint, so a run stopped between the two
    (killed, or a full disk that failed another pack member's checkpoint of the same epoch)
    has a checkpoint one epoch ahead of its curves: that epoch's metrics are taken from the
    checkpoint, which holds them."""
    from stllr_engine.train import load_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    epoch = int(ckpt["epoch"])
    curves = _load_curves(curves_path, epoch)
    last = dict(ckpt.get("metrics") or {})
    have = {int(c.get("epoch", 0)) for c in curves}
    if epoch > 0 and epoch not in have and int(last.get("epoch", -1)) == epoch:
        curves.append(last)
    return curves


def _attempt(run_dir: str, what: str) -> None:
    """One line per start and end of a run in ``attempts.log`` (when, where, which process)."""
    with open(os.path.join(run_dir, "attempts.log"), "a") as fh:
        fh.write(f"{time.time():.3f} {node_name()} pid {os.getpid()} {what}\n")


def _read_json(path: str) -> Any:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _write_json(path: str, data: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh, default=str)
    os.replace(tmp, path)


def _usable_checkpoint(ckpt: str) -> bool:
    """Whether ``ckpt`` can be resumed from; an unreadable one is moved aside (kept for a post-mortem)."""
    from stllr_engine.errors import StllrError
    from stllr_engine.train import load_checkpoint

    if not os.path.exists(ckpt):
        return False
    try:
        load_checkpoint(ckpt)
    except StllrError as exc:
        aside = f"{ckpt}.unreadable-{int(time.time())}"
        os.replace(ckpt, aside)
        print(f"stllr: {exc}; moved to {os.path.basename(aside)}: the run starts again from scratch", flush=True)
        return False
    return True


#: The most members an automatic pack takes (``resources.pack: auto``).
AUTO_PACK = 16
#: On a CPU, an automatic pack takes only runs whose training step needs at most this many
#: multiply-accumulates (:func:`step_macs`): larger steps are bound by arithmetic, and packs of them
#: measured slower than the runs alone (:func:`auto_pack_size`).
CPU_PACK_MAX_MEMBER_MACS = 5_000_000_000
#: the share of a node's memory one automatic pack may take by the formulas (several trials share a node,
#: and the formulas are a lower bound: ``stllr_engine.shapes.memory_need_bytes``)
PACK_MEMORY_SHARE = 0.25


def node_memory_bytes() -> int | None:
    """This machine's physical memory (``None`` where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def auto_pack_size(exp: Any, node_bytes: int | None) -> int:
    """The automatic pack size for runs like ``exp``: :data:`AUTO_PACK`, fewer where that many
    members would need more than :data:`PACK_MEMORY_SHARE` of ``node_bytes`` (the run's
    :func:`~stllr_engine.shapes.memory_need_bytes` times the members), at least 1.

    On a CPU, runs train alone where a step is bound by arithmetic rather than by per-op
    overhead, as ``stllr bench packs`` measured packs slower than the same runs one after the
    other there: convolutional networks (``digits_vgg``, K = 16: S-TLLR 0.91x, BPTT 0.45x) and
    runs whose step needs more than :data:`CPU_PACK_MAX_MEMBER_MACS` multiply-accumulates by
    the formulas (forward and learning, the whole batch). Measured S-TLLR packs against the
    runs alone: the timing-task net (~0.14 G), K = 16: 4.3x; spoken-digits nets at 0.46, 1.35
    and 3.0 G, K = 8: 1.40x, 1.16x, 1.08x (one thread); the SHD net (~25 G), K = 4: 0.75x,
    K = 8: 0.59x. ``resources.pack: n`` still packs them; on CUDA they pack.

    >>> from stllr_engine.experiment import ExperimentConfig
    >>> e = ExperimentConfig.for_dataset("digits", {}, network={"kind": "mlp", "width": 64, "depth": 1})
    >>> auto_pack_size(e, 24 * 2**30), auto_pack_size(e, 2**20), auto_pack_size(e, None)
    (16, 1, 16)
    >>> vgg = ExperimentConfig.for_dataset("digits", {"image": True}, network={"kind": "vgg", "width": 4})
    >>> auto_pack_size(vgg, 24 * 2**30)
    1
    >>> big = ExperimentConfig.for_dataset("digits", {}, network={"kind": "mlp", "width": 8192, "depth": 2})
    >>> step_macs(big) > CPU_PACK_MAX_MEMBER_MACS, auto_pack_size(big, 24 * 2**30)
    (True, 1)
    """
    if exp.network.kind not in ("mlp", "rsnn", "vgg"):  # check_packable's kinds: the others train alone
        return 1
    on_cpu = not str(exp.training.device).startswith("cuda")
    if on_cpu and (exp.network.kind == "vgg" or step_macs(exp) > CPU_PACK_MAX_MEMBER_MACS):
        return 1
    if node_bytes is None:
        return AUTO_PACK
    from stllr_engine.shapes import memory_need_bytes

    train, data = exp.training, exp.data
    T = data.T or 1
    need = memory_need_bytes(exp.network, train.rule, T, train.stllr, batch_size=data.batch_size,
                             bytes_per_value=8 if exp.runtime.dtype == "float64" else 4,
                             optimizer=train.optimizer, momentum=train.momentum, loss=train.loss_kind)
    return max(1, min(AUTO_PACK, int(PACK_MEMORY_SHARE * node_bytes // max(1, need))))


def step_macs(exp: Any) -> int:
    """Multiply-accumulates of one training step of ``exp``'s run by the formulas: forward and
    learning per sample (:func:`~stllr_engine.shapes.spec_formula_costs`) times the batch."""
    from stllr_engine.shapes import spec_formula_costs

    train = exp.training
    f = spec_formula_costs(exp.network, train.rule, exp.data.T or 1, train.stllr, loss=train.loss_kind)
    return int((f["forward_macs_formula_per_sample"] + f["learning_macs_formula_per_sample"]) * exp.data.batch_size)


def pack_groups(exps: list[Any], pack: int, node_bytes: int | None = None) -> list[list[int]]:
    """Which pending runs train together: indices into ``exps``, in order.

    ``pack`` 1: each alone; 0 (automatic): all that may share a pack, at most
    :func:`auto_pack_size` (:data:`AUTO_PACK`, fewer for runs whose packs would not fit the
    node's memory, ``node_bytes``: this machine's, or a CUDA run's device's, by default); ``n``:
    at most ``n``. Runs share a pack only where the engine can hold them
    (:func:`stllr_engine.pack.check_packable`'s rules: every network kind, rule and mode) and
    where their splits have the same sizes (a validation split by speaker can differ by seed).
    """
    if pack == 0:
        if node_bytes is None:  # a GPU run's pack is bounded by the device's memory, a CPU run's by the host's
            node_bytes = (_device_memory(exps[0]) or node_memory_bytes()) if exps else None
        limit = auto_pack_size(exps[0], node_bytes) if exps else 1
    else:
        limit = pack
    if limit <= 1 or len(exps) <= 1 or not packable(exps[0]):
        return [[i] for i in range(len(exps))]
    # members must have splits of one size: a validation split by speaker can differ by seed
    keys: dict[Any, list[int]] = {}
    for i, e in enumerate(exps):
        key = _split_key(e)
        keys.setdefault(key, []).append(i)
    groups = []
    for idx in keys.values():
        groups += [idx[j:j + limit] for j in range(0, len(idx), limit)]
    return sorted(groups)


def _split_key(exp: Any) -> Any:
    """What decides a run's split sizes: nothing beyond the shared settings, except with a
    validation split by speaker (then the sizes themselves)."""
    if getattr(exp.data, "val_split", "random") != "speaker":
        return None
    from stllr_engine.experiment import split_sizes

    return split_sizes(exp)


def _device_memory(exp: Any) -> int | None:
    """A CUDA run's device memory (a pack on a GPU is bounded by it, not by the host's)."""
    device = str(exp.training.device)
    if not device.startswith("cuda"):
        return None
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        index = torch.device(device).index
        return int(torch.cuda.get_device_properties(index if index is not None else 0).total_memory)
    except Exception:  # noqa: BLE001 - no CUDA here: the host's memory is the bound
        return None


def packable(exp: Any) -> bool:
    """Whether the engine can train this experiment in a pack (:mod:`stllr_engine.pack`): every
    network kind, rule and mode can; kept as the one place to say otherwise."""
    return exp is not None


class _Trial:
    """The state of one trial's runs: rows, the iteration count, the study's settings."""

    def __init__(self, cfg: dict[str, Any], node: str):
        self.cfg = cfg
        self.node = node
        self.objectives: list[str] = list(cfg["objectives"])
        # the configurations this trial trains: its own and the other members of its pack
        self.configs: list[dict[str, Any]] = [cfg, *cfg.get("pack_members", [])]
        self.rows: list[dict[str, Any]] = [dict(r) for c in self.configs for r in c.get("done", [])]
        self.owner: dict[str, dict[str, Any]] = {r["trial_id"]: c for c in self.configs for r in c["runs"]}
        self.iteration = 0

    def run_dir(self, run: dict[str, Any]) -> str:
        d = os.path.join(self.cfg["folder"], "runs", run["trial_id"])
        os.makedirs(d, exist_ok=True)
        return d

    def meta(self, run: dict[str, Any], started: str) -> dict[str, Any]:
        cfg = self.owner.get(run["trial_id"], self.cfg)
        return dict(study=cfg["study"], trial_id=run["trial_id"], config_id=cfg["config_id"], arch_id=cfg["arch_id"],
                    role=cfg["role"], config=run["config"], node=self.node, started_at=started, params=cfg["params"])

    def start(self, run_dir: str) -> bool:
        """Mark the run started; whether it resumes from a usable checkpoint."""
        with open(os.path.join(run_dir, "worker.pid"), "w") as fh:
            fh.write(f"{os.getpid()}\n")
        _attempt(run_dir, "start")
        return _usable_checkpoint(os.path.join(run_dir, "checkpoint.pt"))

    def end(self, run_dir: str, row: dict[str, Any], t_run: float, pack_id: str | None = None,
            pack_size: int | None = None) -> None:
        row["run_time_s"] = time.perf_counter() - t_run  # the whole run: data, training, evaluation
        if pack_id is not None:
            row["pack_id"], row["pack_size"] = pack_id, pack_size
        _write_json(os.path.join(run_dir, "row.json"), row)
        _attempt(run_dir, f"end {row['status']}")
        self.rows.append(row)

    def report_row(self, row: dict[str, Any]) -> None:
        from ray import tune

        tune.report({"run_row": json.dumps(row, default=str), "config_done": False, "iteration": self.iteration,
                     **{o: row.get(o) for o in self.objectives if isinstance(row.get(o), (int, float))}})


def _plain_curves(curves: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in c.items() if not isinstance(v, (list, dict))} for c in curves]


def _run_alone(trial: _Trial, run: dict[str, Any], exp: Any, last: bool) -> None:
    """One run by itself (:func:`stllr_engine.experiment.run_experiment`)."""
    from ray import tune

    from stllr_engine.errors import StllrError
    from stllr_engine.experiment import run_experiment
    from study.schema import run_row

    run_dir = trial.run_dir(run)
    ckpt = os.path.join(run_dir, "checkpoint.pt")
    curves_path = os.path.join(run_dir, "curves.json")
    resume = trial.start(run_dir)
    started = _now()
    t_run = time.perf_counter()
    curves: list[dict[str, Any]] = []
    meta = trial.meta(run, started)
    try:
        if resume:
            curves = _resume_curves(curves_path, ckpt)
        for m in run_experiment(exp, checkpoint_dir=run_dir, resume=resume):
            if m.get("resumed_finished"):
                if not curves:
                    curves = [m]
                break
            curves.append(m)
            _write_json(curves_path, _plain_curves(curves))
            trial.iteration += 1
            last_epoch = bool(m.get("finished")) or m["epoch"] == exp.training.epochs  # early stopping ends sooner
            report: dict[str, Any] = {k2: v for k2, v in m.items() if isinstance(v, (int, float, str, bool))}
            report.update(run_trial_id=run["trial_id"], seed=run["seed"], config_done=False,
                          iteration=trial.iteration)
            if last_epoch and last:
                break  # the final report carries this epoch
            tune.report(report)
        row = run_row(status="complete", metrics=curves, ended_at=_now(), **meta)
    except StllrError as exc:
        if str(exc).startswith("cannot write checkpoint"):  # the disk, not the run: never an ended run
            raise RuntimeError(f"{exc} (the run stays unfinished; free space, then resume)") from None
        row = run_row(status="failed", reason=str(exc), metrics=curves, ended_at=_now(), **meta)
    trial.end(run_dir, row, t_run)
    if not last:
        trial.report_row(row)


def _run_packed(trial: _Trial, runs: list[dict[str, Any]], exps: list[Any], last: bool) -> None:
    """Runs of one configuration (its seeds) trained as one pack
    (:func:`stllr_engine.pack_fit.run_pack`): each keeps its own folder, checkpoint,
    curves and row; a member that ends (complete, or failed when its loss diverged) is
    reported at once while the others go on."""
    from ray import tune

    from stllr_engine.errors import StllrError
    from stllr_engine.pack_fit import run_pack
    from study.schema import run_row

    dirs = [trial.run_dir(r) for r in runs]
    owners = {trial.owner[r["trial_id"]]["config_id"] for r in runs}
    pack_id = (f"{trial.owner[runs[0]['trial_id']]['config_id']}-p" + "-".join(str(r["seed"]) for r in runs)
               if len(owners) == 1 else f"{runs[0]['trial_id']}-p{len(runs)}")
    started = _now()
    t_run = time.perf_counter()
    curves: list[list[dict[str, Any]]] = []
    for d in dirs:
        resume = trial.start(d)
        curves.append(_resume_curves(os.path.join(d, "curves.json"), os.path.join(d, "checkpoint.pt"))
                      if resume else [])
    metas = [trial.meta(r, started) for r in runs]
    ended = [False] * len(runs)
    pending_rows: list[dict[str, Any]] = []

    def finish(k: int, row: dict[str, Any]) -> None:
        ended[k] = True
        trial.end(dirs[k], row, t_run, pack_id, len(runs))
        pending_rows.append(row)

    try:
        for epoch in run_pack(exps, checkpoint_dirs=dirs, resume=True):
            lead: dict[str, Any] | None = None
            for k, m in enumerate(epoch):
                if m is None or ended[k]:
                    continue
                if m.get("resumed_finished"):
                    if not curves[k]:
                        curves[k] = [m]
                    finish(k, run_row(status="failed" if m.get("status") == "diverged" else "complete",
                                      reason=m.get("error", ""), metrics=curves[k], ended_at=_now(), **metas[k]))
                    continue
                curves[k].append(m)
                _write_json(os.path.join(dirs[k], "curves.json"), _plain_curves(curves[k]))
                if m.get("status") == "diverged":
                    finish(k, run_row(status="failed", reason=m["error"], metrics=curves[k], ended_at=_now(),
                                      **metas[k]))
                elif m.get("finished") or m["epoch"] == exps[k].training.epochs:
                    finish(k, run_row(status="complete", metrics=curves[k], ended_at=_now(), **metas[k]))
                if lead is None:
                    lead = {k2: v for k2, v in m.items() if isinstance(v, (int, float, str, bool))}
                    lead.update(run_trial_id=runs[k]["trial_id"], seed=runs[k]["seed"],
                                run_trial_ids=",".join(r["trial_id"] for r, e in zip(runs, ended) if not e))
            if lead is None:
                continue
            trial.iteration += 1
            all_done = all(ended)
            while pending_rows and not (all_done and last and len(pending_rows) == 1):
                trial.report_row(pending_rows.pop(0))
            if not (all_done and last):
                lead.update(config_done=False, iteration=trial.iteration)
                tune.report(lead)
    except StllrError as exc:
        if str(exc).startswith("cannot write checkpoint"):
            raise RuntimeError(f"{exc} (the runs stay unfinished; free space, then resume)") from None
        for k in range(len(runs)):  # one error of the pack (e.g. its data) ends every member still running
            if not ended[k]:
                finish(k, run_row(status="failed", reason=str(exc), metrics=curves[k], ended_at=_now(), **metas[k]))
        for row in pending_rows[:-1] if last else pending_rows:
            trial.report_row(row)
        pending_rows.clear()


def run_configuration(cfg: dict[str, Any]) -> None:
    """The Tune function trainable (see the module docstring)."""
    from ray import tune

    from stllr_engine.experiment import ExperimentConfig, RuntimeConfig
    from study.schema import ENDED

    threads = max(1, int(cfg.get("threads", 1)))
    _limit_threads(threads)
    trial = _Trial(cfg, node_name())
    todo: list[dict[str, Any]] = []
    for run in [r for c in trial.configs for r in c["runs"]]:
        ended = _read_json(os.path.join(cfg["folder"], "runs", run["trial_id"], "row.json"))
        if isinstance(ended, dict) and ended.get("status") in ENDED:  # ended in an earlier attempt: not run again
            trial.rows.append(ended)
        else:
            todo.append(run)
    exps = []
    for run in todo:
        exp = ExperimentConfig.from_dict(run["config"])
        exps.append(exp.replace(runtime=RuntimeConfig.from_dict({**exp.runtime.to_dict(), "threads": threads})))
    groups = pack_groups(exps, int(cfg.get("pack", 1)))
    for g, group in enumerate(groups):
        last = g == len(groups) - 1
        if len(group) == 1:
            _run_alone(trial, todo[group[0]], exps[group[0]], last)
        else:
            _run_packed(trial, [todo[i] for i in group], [exps[i] for i in group], last)
    pending = todo
    final: dict[str, Any] = {"config_done": True, "iteration": trial.iteration + 1,
                             "run_row": json.dumps(trial.rows[-1], default=str) if pending else "",
                             **_outcome([r for r in trial.rows if r.get("config_id") == cfg["config_id"]],
                                        trial.objectives)}
    if len(trial.configs) > 1:  # every other member of the pack: its own outcome, told to its own Optuna trial
        final["member_outcomes"] = json.dumps({
            c["config_id"]: _outcome([r for r in trial.rows if r.get("config_id") == c["config_id"]],
                                     list(c["objectives"])) for c in trial.configs[1:]})
    if pending:  # the last run's final epoch travels here (so schedulers and intermediate values see it)
        last = json.loads(final["run_row"])
        final.update(run_trial_id=last["trial_id"], seed=last["seed"], epoch=last.get("epochs_done"),
                     val_accuracy_run=last.get("val_accuracy"), val_aee_run=last.get("val_aee"))
    tune.report(final)


def _outcome(rows: list[dict[str, Any]], objectives: list[str]) -> dict[str, Any]:
    """A configuration's outcome from its runs' rows: status, objective means over complete seeds."""
    complete = [r for r in rows if r["status"] == "complete"]
    out: dict[str, Any] = {"config_status": "complete" if len(complete) == len(rows) and rows else "failed",
                           "seeds_done": len(complete)}
    for o in objectives:
        values = [float(r[o]) for r in complete if r.get(o) is not None]
        out[o] = sum(values) / len(values) if values else float("nan")
    for col in ("test_accuracy", "test_aee"):  # the test measure, for the dashboard (never optimised)
        tests = [float(r[col]) for r in complete if isinstance(r.get(col), (int, float)) and r[col] == r[col]]
        if tests or col == "test_accuracy":
            out[f"{col}_mean"] = sum(tests) / len(tests) if tests else float("nan")
    return out
